"""The local executor: the engine's actions carried out as processes on this machine.

Each workload runs exactly as it would in pods: the same trainer command line and the same
environment contract (`conveyor.operator.workloads`), with the rendezvous host being 127.0.0.1 instead
of rank 0's DNS name. A distributed job is `workers` torchrun agents (one per would-be pod) with
`processesPerWorker` processes each. Every process gets its own session, so stopping a workload (a
pruned trial, Ctrl-C) takes its whole process tree down.

What the executor observes it reads from the artifacts the workloads write (`progress.jsonl`,
`result.json`) and from exit codes: nothing is parsed from logs. Logs go to `<root>/logs/` for people.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.operator.engine.actions import (
    Action,
    Emit,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
)
from conveyor.operator.engine.observations import (
    Observations,
    ObservedState,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.workloads import EXIT_INVALID_INPUT, Workload, command_argv, serve_argv
from conveyor.trainer import progress
from conveyor.trainer.artifacts import RESULT_FILE

STOP_GRACE_SECONDS = 5.0
LOG_TAIL_BYTES = 2000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each process group, then SIGKILL whatever is still alive after `grace` seconds."""
    alive = [p for p in processes if p.poll() is None]
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode(errors="replace").strip()


@dataclass
class LocalJob:
    """The processes of one workload attempt (one per worker)."""

    workload: Workload
    processes: list[subprocess.Popen[bytes]]
    log: Path
    started_at: datetime
    stopped: bool = False
    finished_at: datetime | None = None

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def state(self) -> ObservedState:
        codes = self.exit_codes()
        if any(code not in (None, 0) for code in codes):
            return "failed"
        if all(code == 0 for code in codes):
            return "succeeded"
        return "running"


def failure_of(job: LocalJob, result: dict[str, Any] | None) -> tuple[str, str]:
    """Why a job failed: the trainer's own verdict when it wrote one, else what its exit codes say."""
    if result is not None and result.get("reason"):
        return str(result["reason"]), str(result.get("message") or "")
    codes = job.exit_codes()
    tail = log_tail(job.log)
    if EXIT_INVALID_INPUT in codes:
        last = [line for line in tail.splitlines() if line.strip()]
        return "InvalidInput", last[-1] if last else "invalid config or data"
    return "ProcessFailed", f"exit codes {codes}; last log lines:\n{tail}"


@dataclass
class LocalServer:
    model: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    ready: bool = False


@dataclass
class LocalExecutor:
    """Carries out engine actions with subprocesses rooted at `root` (./runs/<name>)."""

    root: Path
    python: str = sys.executable
    serving_host: str = "127.0.0.1"
    serving_port: int | None = None
    model_name: str | None = None  # the name clients use in /v2/models/<name> (the pipeline's name)
    jobs: dict[str, LocalJob] = field(default_factory=dict)
    server: LocalServer | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    # --- actions ---------------------------------------------------------------------------------

    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, StartWorkload):
                self.start(action.workload)
            elif isinstance(action, StopWorkload):
                self.stop(action.name, action.attempt)
            elif isinstance(action, StartServing):
                self.start_serving(action)
            elif isinstance(action, StopServing):
                self.stop_serving()
            elif isinstance(action, Emit):
                self.messages.append(f"{action.reason}: {action.message}")

    def start(self, workload: Workload) -> None:
        current = self.jobs.get(workload.name)
        if current is not None and current.workload.attempt == workload.attempt:
            return  # idempotent: this attempt is already running (or finished)
        if current is not None:
            stop_processes(current.processes)
        # A result left by an earlier attempt must not be read as this attempt's.
        (self.root / workload.out / RESULT_FILE).unlink(missing_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{workload.key}.log"
        port = free_port()
        workers = workload.workers if workload.distributed else 1
        processes = []
        with log.open("ab") as sink:
            for rank in range(workers):
                argv, env = command_argv(
                    workload, str(self.root), "127.0.0.1", port, rank, python=self.python
                )
                processes.append(
                    subprocess.Popen(
                        argv,
                        env={**os.environ, **env},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        self.jobs[workload.name] = LocalJob(workload, processes, log, datetime.now(UTC))

    def stop(self, name: str, attempt: int) -> None:
        job = self.jobs.get(name)
        if job is None or job.workload.attempt != attempt:
            return
        stop_processes(job.processes)
        job.stopped = True

    def start_serving(self, action: StartServing) -> None:
        if self.server is not None and self.server.model == action.model:
            return
        self.stop_serving()
        port = self.serving_port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "serve.log"
        argv = [
            self.python,
            "-m",
            "conveyor.trainer",
            *serve_argv(action.model, action.serving, str(self.root), port, self.model_name),
        ]
        argv += ["--host", self.serving_host]
        with log.open("ab") as sink:
            process = subprocess.Popen(
                argv,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.server = LocalServer(action.model, process, f"http://{self.serving_host}:{port}", log)

    def stop_serving(self) -> None:
        if self.server is not None:
            stop_processes([self.server.process])
            self.server = None

    def shutdown(self) -> None:
        """Stop every child process (Ctrl-C, or the end of a run)."""
        stop_processes([p for job in self.jobs.values() for p in job.processes])
        self.stop_serving()

    # --- observations ----------------------------------------------------------------------------

    def observe(self, workloads: Iterable[Workload]) -> Observations:
        """What happened to each workload the engine considers started, plus serving."""
        seen = {w.name: self.observe_workload(w) for w in workloads}
        return Observations(workloads=seen, serving=self.observe_serving())

    def observe_workload(self, workload: Workload) -> WorkloadObservation:
        out = self.root / workload.out
        events = progress.read_events(out)
        result = progress.read_result(out)
        job = self.jobs.get(workload.name)
        if job is None or job.workload.attempt != workload.attempt:
            # Not started by this process (a previous `conveyor run` was interrupted): a result on
            # disk means it finished; otherwise it is lost and the engine starts it again.
            if result is not None and result.get("attempt", workload.attempt) == workload.attempt:
                finished: ObservedState = "succeeded" if result.get("status") == "succeeded" else "failed"
                return WorkloadObservation.from_events(
                    finished,
                    events,
                    attempt=workload.attempt,
                    result=result,
                    reason=result.get("reason"),
                    message=result.get("message"),
                )
            return WorkloadObservation(state="lost", attempt=workload.attempt)
        state = job.state()
        if state != "running" and job.finished_at is None:
            job.finished_at = datetime.now(UTC)
        reason = message = None
        if state == "failed":
            reason, message = failure_of(job, result)
        return WorkloadObservation.from_events(
            state,
            events,
            attempt=workload.attempt,
            result=result if state != "running" else None,
            reason=reason,
            message=message,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    def observe_serving(self) -> ServingObservation | None:
        server = self.server
        if server is None:
            # Nothing served by this process (e.g. a resumed run): the engine starts serving again.
            return ServingObservation(ready=False)
        if server.process.poll() is not None:
            return ServingObservation(
                ready=False,
                model=server.model,
                url=server.url,
                reason="ServerExited",
                message=log_tail(server.log),
            )
        if not server.ready:
            try:
                with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=0.5) as reply:
                    server.ready = reply.status == 200
            except OSError:
                server.ready = False
        return ServingObservation(
            ready=server.ready,
            model=server.model,
            url=server.url,
            replicas=1,
            ready_replicas=int(server.ready),
        )
