"""Warm workers: start workload processes without a fresh interpreter each (the client half).

Starting a trial cold costs a torchrun agent per worker plus a new interpreter per process, each
importing torch and the trainer (seconds of CPU each, three trials at a time on a small machine). The
local executor instead starts one fork server per `conveyor run` (`conveyor.trainer.forkserver`, a
data-plane process: it imports torch and the trainer once and forks a child per process asked for) and
talks to it through `ForkServer`; `WarmProcess` is a child with the part of `subprocess.Popen` the
executor uses. This module imports no torch, as nothing in the control plane does; the server's own
docstring gives the protocol and why nothing outlives `conveyor run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_MODULE = "conveyor.trainer.forkserver"
START_TIMEOUT_SECONDS = 120.0


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
