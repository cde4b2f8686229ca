"""`python -m conveyor.trainer.python_program script.py ARGS` (or `-m module ARGS`): a user's Python
program, run as `python script.py ARGS` would run it, that leaves without the interpreter's teardown.

The `command` stage starts `training.command` under torchrun; when that command is `python script.py`
or `python -m module`, each rank runs through here instead. A rank of a user's program aborts now and
then while the interpreter finalises, after its work (gloo; see `process_exit`), and torchrun then
fails a run that finished: on one node it stops rank 0 before rank 0 has saved, across nodes the
failed node's agent never reaches torchrun's exit barrier and the other nodes wait 300 s for it.
Other forms (interpreter flags, `-c`, a shell script) run as they are.
"""

from __future__ import annotations

import os
import runpy
import sys

from conveyor.trainer.process_exit import exit_status, exit_without_teardown

PYTHONS = ("python", "python3")  # what training.command names; both become this interpreter


def wrapped(argv: list[str]) -> list[str] | None:
    """`argv` through this runner, or None when it is not a plain `python script` / `python -m module`."""
    if len(argv) < 2 or argv[0] not in PYTHONS:
        return None
    if (argv[1] == "-m" and len(argv) > 2) or not argv[1].startswith("-"):
        return [sys.executable, "-m", __name__, *argv[1:]]
    return None


def run(argv: list[str]) -> None:
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    exit_without_teardown(exit_status(lambda: run(sys.argv[1:])))
