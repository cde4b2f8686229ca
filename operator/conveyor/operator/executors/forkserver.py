"""Warm workers: a fork server that starts workload processes without a fresh interpreter each.

Starting a trial cold costs a torchrun agent per worker plus a new interpreter per process, each
importing torch and the trainer (seconds of CPU each, three trials at a time on a small machine). The
local executor instead starts one server per `conveyor run` (`python -m
conveyor.operator.executors.forkserver`) that imports torch and the trainer's stages once and then
forks one child per process asked for, like multiprocessing's forkserver. A child is what the process
would have been: its own session (stopping a workload kills its process group), its own environment,
working directory, argv and log, and then `python -m <module>` run by `runpy`; its exit status is the
process's. The server runs no torch operation, so no thread pool exists when it forks (the child sizes
its own from OMP_NUM_THREADS); a child that crashes takes only itself down.

Nobody outlives `conveyor run`, even killed with SIGKILL: the server dies with its parent
(`PR_SET_PDEATHSIG`, and end of file on its request pipe), and every child dies with the server. What
a child starts in turn (a shell's command, DataLoader workers) shares its process group, and a
guardian forked from the server kills every child's group once the server is gone.

The protocol is JSON lines. Requests on the server's stdin: `{"id", "module", "args", "env", "cwd",
"log"}`; replies on its stdout: `{"id", "pid"}` (or `{"id", "error"}`) and, whenever a child exits,
`{"exit": pid, "code": code}` (a negative code is the signal that killed it, as in `subprocess`).
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
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_MODULE = "conveyor.operator.executors.forkserver"
# What training and preparing import, including what they pull in lazily (torch.distributed for the
# process group, torch._dynamo for the optimizers). Not evaluation and ensembles (once per pipeline):
# their imports (pandas, pyarrow) start threads, and a process that forks must have none.
PRELOAD = (
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "conveyor.trainer.__main__",
    "conveyor.trainer.train",
    "conveyor.trainer.data.prepare",
)
START_TIMEOUT_SECONDS = 120.0
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


# --- the server ----------------------------------------------------------------------------------


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
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code: Any = 0
    except SystemExit as done:
        code = done.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    return code


def finish(code: int) -> None:
    """Leave the child as an interpreter would: exit handlers, flushed streams, then the status."""
    import atexit

    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


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
        finish(code)
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


# --- the client (in `conveyor run`) -------------------------------------------------------------


class ForkServerError(RuntimeError):
    """The fork server could not start a process (it is gone, or never became ready)."""


@dataclass
class ForkServer:
    """The client side: starts the server lazily and hands out `WarmProcess` handles."""

    python: str
    root: Path  # the run directory: on the server's command line (and so its children's), logs below
    process: subprocess.Popen[bytes] | None = None
    exits: dict[int, int] = field(default_factory=dict)
    next_id: int = 0
    buffer: bytes = b""
    replies: list[dict[str, Any]] = field(default_factory=list)

    def ensure_started(self) -> subprocess.Popen[bytes]:
        if self.process is not None:
            if self.process.poll() is not None:
                raise ForkServerError(f"the fork server exited with {self.process.returncode}")
            return self.process
        log = self.root / "logs" / "forkserver.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [self.python, "-m", SERVER_MODULE, str(os.getpid()), str(self.root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
                env={**os.environ, "OMP_NUM_THREADS": "1"},  # no OpenMP or BLAS thread pool to fork
                start_new_session=True,
            )
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.wait_for(lambda reply: "ready" in reply, START_TIMEOUT_SECONDS)
        return self.process

    def spawn(self, module: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> WarmProcess:
        """Start `python -m module *args` with exactly `env`, output appended to `log`."""
        process = self.ensure_started()
        assert process.stdin is not None
        self.next_id += 1
        request = {
            "id": self.next_id,
            "module": module,
            "args": list(args),
            "env": dict(env),
            "cwd": os.getcwd(),
            "log": str(log),
        }
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
        except OSError as error:
            raise ForkServerError(f"the fork server is gone: {error}") from error
        wanted = self.next_id
        reply = self.wait_for(lambda reply: reply.get("id") == wanted, START_TIMEOUT_SECONDS)
        if "error" in reply:
            raise ForkServerError(reply["error"])
        return WarmProcess(self, int(reply["pid"]))

    def pump(self, timeout: float = 0.0) -> None:
        """Read what the server said (waiting up to `timeout` for something); record exits."""
        process = self.process
        if process is None or process.stdout is None:
            return
        if timeout > 0:
            select.select([process.stdout], [], [], timeout)
        try:
            chunk = process.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = json.loads(line)
            if "exit" in reply:
                self.exits[int(reply["exit"])] = int(reply["code"])
            else:
                self.replies.append(reply)

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first reply that `matches`, reading until it comes; ForkServerError if none does."""
        deadline = time.monotonic() + timeout
        while True:
            for reply in self.replies:
                if matches(reply):
                    self.replies.remove(reply)
                    return reply
            if self.process is not None and self.process.poll() is not None:
                raise ForkServerError(f"the fork server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise ForkServerError(f"no answer from the fork server within {timeout:.0f}s")
            self.pump(timeout=min(0.5, max(0.0, deadline - time.monotonic())))

    def exit_code(self, pid: int) -> int | None:
        self.pump()
        if pid in self.exits:
            return self.exits[pid]
        if self.process is not None and self.process.poll() is not None:
            self.pump()  # its last words
            return self.exits.get(pid, -signal.SIGKILL)  # the server died: so did its children
        return None

    def close(self) -> None:
        """End of input: the server kills whatever it still runs and exits."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class WarmProcess:
    """A fork server's child, with the part of `subprocess.Popen` the executor uses."""

    server: ForkServer
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = 0.5 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self.server.pump(timeout=min(0.5, left))
        return code


if __name__ == "__main__":
    serve(int(sys.argv[1]))
