"""Starting, probing and stopping the control-plane processes.

Every process runs in its own session (process group), writes to a log file, and is recorded by pid
together with a marker from its command line, so teardown only ever signals processes this harness
started (a recycled pid whose command line no longer matches is left alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of ``pid``, or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[0], fields[19]


@dataclass
class Proc:
    """A started process: name, pid, log file, a string its command line contains, and its start time
    (pid + start time identify it, so a recycled pid is never mistaken for it)."""

    name: str
    pid: int
    log: str
    marker: str
    started: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "log": self.log,
            "marker": self.marker,
            "started": self.started,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Proc:
        return cls(
            str(d["name"]), int(str(d["pid"])), str(d["log"]), str(d["marker"]), str(d.get("started", ""))
        )

    def alive(self) -> bool:
        """Running (not a zombie) and still the process we started."""
        stat = _stat(self.pid)
        if stat is None or stat[0] == "Z":
            return False
        if self.started:
            return stat[1] == self.started
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return False
        return self.marker in cmdline

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    marker: str,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """Start ``argv`` detached (new session, stdin closed), logging to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        p = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            close_fds=True,
        )
    stat = _stat(p.pid)
    return Proc(name, p.pid, str(log), marker, stat[1] if stat else "")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc: Proc, timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL after ``timeout``; only if it is ours."""
    if not proc.alive():
        _reap(proc.pid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(100):
        _reap(proc.pid)
        if not proc.alive():
            return
        time.sleep(0.05)


class StartError(RuntimeError):
    """A component did not become ready; the message carries the tail of its log."""


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    proc: Proc | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it returns True; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if proc is not None and not proc.alive():
            raise StartError(
                f"{proc.name} exited while waiting for {what}; log {proc.log}:\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; log {proc.log}:\n{proc.log_tail()}" if proc else ""
            raise StartError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)


def http_get(
    url: str,
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    timeout: float = 2.0,
) -> tuple[int, str]:
    """GET ``url``; returns (status, body). TLS is verified against ``ca`` when given."""
    ctx: ssl.SSLContext | None = None
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
