"""Leaving a process without the interpreter's teardown.

torch's gloo backend now and then aborts a process while the interpreter finalises, after all its work
and after `destroy_process_group` ("terminate called without an active exception": gloo's threads
still hold objects whose release needs an interpreter that is going away). torchrun then counts the
rank as failed and stops the others, so a rank that finished first can take down rank 0 before it has
written the result. Running the exit handlers, flushing, then `os._exit` leaves as the interpreter
would, minus the finalisation that aborts. The fork server's children leave the same way (a forked
child must not run the server's teardown).
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Callable


def exit_without_teardown(code: int) -> None:
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def exit_status(main: Callable[[], object]) -> int:
    """Run `main` and return the status the interpreter would exit with: 0, a SystemExit's code (a
    message is printed and means 1), or 1 after printing an uncaught exception's traceback."""
    try:
        main()
        return 0
    except SystemExit as done:
        code = done.code
    except BaseException:
        traceback.print_exc()
        return 1
    if code is None:
        return 0
    if not isinstance(code, int):
        print(code, file=sys.stderr)
        return 1
    return code
