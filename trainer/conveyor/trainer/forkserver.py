"""The fork server of `conveyor run`'s warm workers: the data-plane half (the client that talks to it is
`conveyor.operator.executors.forkserver`, in the control plane, which never imports torch).

Started as `python -m conveyor.trainer.forkserver PARENT_PID RUN_ROOT` with OMP_NUM_THREADS=1, it imports
torch and the trainer's stages once, then forks one child per request, like multiprocessing's
forkserver. A child is what the process would have been: its own session (stopping a workload kills its
process group), its own environment, working directory, argv and log, and then `python -m <module>` run
by `runpy`; its exit status is the process's. The server runs no torch operation, so no thread pool
exists when it forks (the child sizes its own from OMP_NUM_THREADS); a child that crashes takes only
itself down.

Nobody outlives `conveyor run`, even killed with SIGKILL: the server dies with its parent
(`PR_SET_PDEATHSIG`, and end of file on its request pipe), and every child dies with the server. What
a child starts in turn (a shell's command, DataLoader workers) shares its process group, and a
guardian forked from the server kills every child's group once the server is gone.

The protocol is JSON lines. Requests on the server's stdin: `{"id", "module", "args", "env", "cwd",
"log"}`; replies on its stdout: `{"ready": pid}` once, `{"id", "pid"}` (or `{"id", "error"}`) and,
whenever a child exits, `{"exit": pid, "code": code}` (a negative code is the signal that killed it,
as in `subprocess`). The RUN_ROOT argument only names the run in process listings.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.trainer.process_exit import exit_status, exit_without_teardown

# What training and preparing import, including what they pull in lazily (torch.distributed for the
# process group, torch._dynamo for the optimizers, torch.export for the saved program). Not evaluation
# and ensembles (once per pipeline): their imports (pandas, pyarrow) start threads, and a process that
# forks must have none.
PRELOAD = (
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "torch.export",
    "conveyor.trainer.__main__",
    "conveyor.trainer.train",
    "conveyor.trainer.data.prepare",
)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


def child_main(request: Mapping[str, Any], closing: Sequence[int]) -> int:
    """In the forked child: become the requested process, run its module, return its exit status."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    # As a fresh interpreter has them (Python itself ignores SIGPIPE; the server's own are undone).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in closing:
        with contextlib.suppress(OSError):
            os.close(fd)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    # The server loaded OpenMP with one thread (so that it has no pool to fork); a fresh interpreter
    # would size its pool from OMP_NUM_THREADS, or take every core it may use.
    threads = os.environ.get("OMP_NUM_THREADS", "")
    import torch

    torch.set_num_threads(
        int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0))
    )
    sys.argv = [request["module"], *request["args"]]
    return exit_status(lambda: runpy.run_module(request["module"], run_name="__main__", alter_sys=True))


def fork_child(request: Mapping[str, Any], server: int, closing: Sequence[int]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            die_with_parent(server)
            code = child_main(request, closing)
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        exit_without_teardown(code)
    return pid


def guard(groups: int) -> None:
    """The guardian: learn each child's process group from `groups`; when the server is gone (end of
    file: it held the only writer), kill every one of them, and exit."""
    known, buffer = [], b""
    while chunk := os.read(groups, 4096):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        known += [int(line) for line in lines]
    for pid in known:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    os._exit(0)


def serve(parent: int) -> None:
    """The server's loop: fork a child per request, report every child's exit, stop at end of input."""
    die_with_parent(parent)
    # The protocol keeps its own descriptors; stray output (imports, warnings) goes to stderr, the log.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is `conveyor run`'s to handle
    for module in PRELOAD:
        importlib.import_module(module)
    if (threads := len(os.listdir("/proc/self/task"))) > 1:
        print(
            f"warning: the fork server runs {threads} threads; a child may inherit a held lock",
            file=sys.stderr,
        )
    groups_r, groups_w = os.pipe()
    if os.fork() == 0:
        os.close(groups_w)
        requests.close()
        replies.close()
        guard(groups_r)
    os.close(groups_r)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    closing = (requests.fileno(), replies.fileno(), wake_r, wake_w, groups_w)
    children: set[int] = set()
    buffer = b""
    me = os.getpid()

    def reap() -> None:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            replies.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")

    replies.write(json.dumps({"ready": me}) + "\n")
    open_input = True
    while open_input:
        readable, _, _ = select.select([requests.fileno(), wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        if requests.fileno() in readable:
            chunk = requests.read(65536)
            if not chunk:
                open_input = False
            buffer += chunk or b""
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = fork_child(request, me, closing)
                    children.add(pid)
                    with contextlib.suppress(OSError):  # the guardian is best effort
                        os.write(groups_w, f"{pid}\n".encode())
                    replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
                except OSError as error:
                    replies.write(json.dumps({"id": request["id"], "error": str(error)}) + "\n")
        reap()
    # `conveyor run` is gone or done: nothing it started may stay.
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
