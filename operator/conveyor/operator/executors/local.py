"""The local executor: the engine's actions carried out as processes on this machine.

Each workload runs exactly as it would in pods: the same trainer command line and the same
environment contract (`conveyor.operator.workloads`), with the rendezvous host being 127.0.0.1 instead
of rank 0's DNS name. Cold (`warm=False`), a distributed job is `workers` torchrun agents (one per
would-be pod) with `processesPerWorker` processes each. Warm (`conveyor run`'s default), every process
is forked from one fork server that imported torch and the trainer once (`conveyor.trainer.forkserver`,
driven through `executors.forkserver`), with the environment torchrun would have given it and rank 0
hosting the rendezvous store as `env://` does: what a trial pays to start is a fork, not an agent and
interpreters importing torch. Workloads with their own `spec.env` start cold, since a forked process
cannot honour variables read at import.
Every process gets its own session, so stopping a workload (a pruned trial, Ctrl-C) takes its whole
process tree down; warm processes, the fork server and the model server die with `conveyor run` even
when it is killed with SIGKILL. Asking a workload to stop (`request_stop`: a pruned user loop) writes
the file `conveyor.sdk.env.STOP_FILE` into its output directory, where `conveyor.sdk.report` looks:
the local twin of the progress endpoint's `{"stop": true}` (a new attempt starts without it).
A trial under ASHA is told its rungs (`Workload.verdict_epochs`) and waits after each for the verdict
(`conveyor.trainer.progress.await_verdict`); once the engine has decided on what was observed,
`deliver_verdicts` writes the last epoch judged into the running trials' directories, so a pruned trial
is stopped at its rung and trains nothing past it.

It implements `protocol.Executor` and reports facts only (`conveyor.operator.engine.observations`):
the processes' state from their exit codes (failed as soon as one exits non-zero; exit code 2 is
InvalidInput), and the epochs and the result the workload wrote (`progress.jsonl`, `result.json` in
`artifacts.workload_dir(name)`), the result whenever it exists. A workload this process did not start
(a previous `conveyor run` was interrupted) is `lost`, with its result if this attempt left one.
Nothing is parsed from logs except a failure's last lines for its message; logs go to `<root>/logs/`.
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
from typing import Any, Literal, Protocol

from conveyor.operator.engine.observations import (
    INVALID_INPUT,
    Observations,
    ObservedState,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.executors.forkserver import ForkServer, ForkServerError
from conveyor.operator.workloads import (
    EXIT_INVALID_INPUT,
    TRAINER_MODULE,
    Workload,
    command_argv,
    serve_argv,
    trainer_argv,
)
from conveyor.sdk.env import STOP_FILE
from conveyor.trainer import progress
from conveyor.trainer.artifacts import RESULT_FILE, workload_dir, write_json_atomic
from conveyor.trainer.config import ServingSpec

STOP_GRACE_SECONDS = 5.0
LOG_TAIL_BYTES = 2000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process(Protocol):
    """What the executor needs of a process: a `subprocess.Popen`, or a fork server's child."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def torchrun_process_env(workload: Workload, node_rank: int, local_rank: int) -> dict[str, str]:
    """What torchrun's agent on worker `node_rank` sets for its process `local_rank` (beyond the
    worker's environment), when the processes are started without an agent: static ranks, no
    restarts, and no agent store (rank 0 hosts it, `conveyor.trainer.distributed.attempt_store`)."""
    nproc = workload.processes_per_worker
    return {
        "RANK": str(node_rank * nproc + local_rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": str(node_rank),
        "ROLE_RANK": str(node_rank * nproc + local_rank),
        "ROLE_NAME": "default",
        "GROUP_WORLD_SIZE": str(workload.workers),
        "ROLE_WORLD_SIZE": str(workload.world_size),
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_RUN_ID": workload.key,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
    }


def verdict_env(workload: Workload) -> dict[str, str]:
    """The epochs after which a trial waits for the pruner's verdict, as the trainer reads them."""
    if not workload.verdict_epochs:
        return {}
    return {progress.VERDICT_EPOCHS_ENV: ",".join(str(epoch) for epoch in workload.verdict_epochs)}


def stop_processes(processes: Iterable[Process], grace: float = STOP_GRACE_SECONDS) -> None:
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
    """The processes of one workload attempt (cold: one per worker; warm: one per process)."""

    workload: Workload
    processes: list[Process]
    log: Path
    started_at: datetime
    stopped: bool = False
    finished_at: datetime | None = None
    judged: int = 0  # the last epoch the trial was told was judged (`deliver_verdicts`)

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def state(self) -> ObservedState:
        codes = self.exit_codes()
        if any(code not in (None, 0) for code in codes):
            return "failed"
        if all(code == 0 for code in codes):
            return "succeeded"
        return "running"


def exit_failure(job: LocalJob) -> tuple[str, str]:
    """(reason, message) of a job whose processes failed, from their exit codes and log."""
    codes = job.exit_codes()
    tail = log_tail(job.log)
    if EXIT_INVALID_INPUT in codes:
        last = [line for line in tail.splitlines() if line.strip()]
        return INVALID_INPUT, last[-1] if last else "invalid config or data"
    return "ProcessFailed", f"exit codes {codes}; last log lines:\n{tail}"


def attempt_result(out: Path, attempt: int) -> dict[str, Any] | None:
    """The result in `out` if attempt `attempt` wrote it (results record their attempt)."""
    result = progress.read_result(out)
    if result is None or result.get("attempt", attempt) != attempt:
        return None
    return result


@dataclass
class LocalServer:
    model: str
    process: Process
    url: str
    log: Path
    ready: bool = False


@dataclass
class LocalExecutor:
    """Runs one pipeline's workloads and serving as subprocesses rooted at `root` (./runs/<name>)."""

    root: Path
    python: str = sys.executable
    warm: bool = False  # start processes from a fork server (`conveyor run` does) instead of cold
    trainer_module: str = TRAINER_MODULE  # what warm processes run (tests substitute a stand-in)
    serving_host: str = "127.0.0.1"
    serving_port: int | None = None
    model_name: str | None = None  # the name clients use in /v2/models/<name> (the pipeline's name)
    jobs: dict[str, LocalJob] = field(default_factory=dict)
    server: LocalServer | None = None
    messages: list[str] = field(default_factory=list)
    forkserver: ForkServer | None = None  # one given here is shared: the executor does not close it
    owns_forkserver: bool = False

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    # --- actions (protocol.Executor) --------------------------------------------------------------

    def start(self, workload: Workload) -> None:
        current = self.jobs.get(workload.name)
        if current is not None and current.workload.attempt == workload.attempt:
            return  # idempotent: this attempt is already running (or finished)
        if current is not None:
            stop_processes(current.processes)
        # A result left by an earlier attempt must not be read as this attempt's, nor a stop meant for
        # it obeyed by this one.
        (self.root / workload.out / RESULT_FILE).unlink(missing_ok=True)
        (self.root / workload.out / STOP_FILE).unlink(missing_ok=True)
        (self.root / workload.out / progress.VERDICT_FILE).unlink(missing_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{workload.key}.log"
        port = free_port()
        processes: list[Process] = []
        # The user's own program starts torchrun itself (one `command` stage per worker), so it cannot
        # be forked process by process from the fork server.
        if self.warm and not workload.env and workload.user_command is None:
            try:
                processes = self.start_warm(workload, log, port)
            except ForkServerError as error:
                self.emit("Warning", "ColdStart", f"{workload.key} starts cold: {error}")
        if not processes:
            processes = self.start_cold(workload, log, port)
        self.jobs[workload.name] = LocalJob(workload, processes, log, datetime.now(UTC))

    def start_cold(self, workload: Workload, log: Path, port: int) -> list[Process]:
        """One torchrun agent (or plain python) per worker, each a fresh interpreter."""
        workers = workload.workers if workload.distributed else 1
        processes: list[Process] = []
        with log.open("ab") as sink:
            for rank in range(workers):
                argv, env = command_argv(
                    workload, str(self.root), "127.0.0.1", port, rank, python=self.python
                )
                processes.append(
                    subprocess.Popen(
                        argv,
                        env={**os.environ, **env, **verdict_env(workload)},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        return processes

    def start_warm(self, workload: Workload, log: Path, port: int) -> list[Process]:
        """Every process of every worker forked from the fork server, as torchrun would start it."""
        server = self.fork_server()
        args = trainer_argv(workload, str(self.root))
        workers = workload.workers if workload.distributed else 1
        processes: list[Process] = []
        try:
            for node_rank in range(workers):
                _, env = command_argv(workload, str(self.root), "127.0.0.1", port, node_rank)
                env.update(verdict_env(workload))
                for local_rank in range(workload.processes_per_worker if workload.distributed else 1):
                    ranked = (
                        torchrun_process_env(workload, node_rank, local_rank) if workload.distributed else {}
                    )
                    processes.append(
                        server.spawn(self.trainer_module, args, {**os.environ, **env, **ranked}, log)
                    )
        except ForkServerError:
            stop_processes(processes)
            raise
        return processes

    def fork_server(self) -> ForkServer:
        if self.forkserver is None:
            self.forkserver, self.owns_forkserver = ForkServer(self.python, self.root), True
        return self.forkserver

    def stop(self, name: str, attempt: int) -> None:
        job = self.jobs.get(name)
        if job is None or job.workload.attempt != attempt:
            return
        stop_processes(job.processes)
        job.stopped = True

    def request_stop(self, name: str, attempt: int) -> None:
        job = self.jobs.get(name)
        if job is None or job.workload.attempt != attempt or job.stopped:
            return
        out = self.root / job.workload.out
        out.mkdir(parents=True, exist_ok=True)
        (out / STOP_FILE).touch()

    def deliver_verdicts(self, observations: Observations) -> None:
        """Tells each running trial that waits for verdicts the last epoch observed in `observations`,
        once the engine has decided on them and its actions are carried out (a trial it pruned is
        stopped by then, so whoever is told goes on)."""
        for name, seen in observations.workloads.items():
            job = self.jobs.get(name)
            if job is None or job.stopped or not job.workload.verdict_epochs or not seen.epochs:
                continue
            epoch = seen.epochs[-1].epoch
            if seen.attempt == job.workload.attempt and seen.state == "running" and epoch > job.judged:
                write_json_atomic(self.root / job.workload.out / progress.VERDICT_FILE, {"epoch": epoch})
                job.judged = epoch

    def start_serving(self, model: str, serving: ServingSpec) -> None:
        if self.server is not None and self.server.model == model:
            return
        self.stop_serving()
        port = self.serving_port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "serve.log"
        args = [
            *serve_argv(model, serving, str(self.root), port, self.model_name),
            "--host",
            self.serving_host,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process: Process | None = None
        if self.warm:
            try:
                process = self.fork_server().spawn(TRAINER_MODULE, args, env, log)
            except ForkServerError as error:
                self.emit("Warning", "ColdStart", f"the model server starts cold: {error}")
        if process is None:
            with log.open("ab") as sink:
                process = subprocess.Popen(
                    [self.python, "-m", TRAINER_MODULE, *args],
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        self.server = LocalServer(model, process, f"http://{self.serving_host}:{port}", log)

    def stop_serving(self) -> None:
        if self.server is not None:
            stop_processes([self.server.process])
            self.server = None

    def emit(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.messages.append(f"{reason}: {message}")

    def delete_pipeline(self) -> None:
        """Nothing to delete: the run directory stays for people to read."""

    def shutdown(self) -> None:
        """Stop every child process (Ctrl-C, or the end of a run)."""
        stop_processes([p for job in self.jobs.values() for p in job.processes])
        self.stop_serving()
        if self.forkserver is not None and self.owns_forkserver:
            self.forkserver.close()

    # --- observations ----------------------------------------------------------------------------

    def observe(self, workloads: Iterable[tuple[str, int]], serving: bool) -> Observations:
        """What became of each workload (name, attempt), plus serving if asked."""
        seen = {name: self.observe_workload(name, attempt) for name, attempt in workloads}
        return Observations(workloads=seen, serving=self.observe_serving() if serving else None)

    def observe_workload(self, name: str, attempt: int) -> WorkloadObservation:
        out = self.root / workload_dir(name)
        events = progress.read_events(out)
        result = attempt_result(out, attempt)
        job = self.jobs.get(name)
        if job is None or job.workload.attempt != attempt:
            # Not started by this process (a previous `conveyor run` was interrupted).
            return WorkloadObservation.from_events("lost", events, attempt=attempt, result=result)
        state = job.state()
        if state != "running" and job.finished_at is None:
            job.finished_at = datetime.now(UTC)
        reason, message = exit_failure(job) if state == "failed" else (None, None)
        return WorkloadObservation.from_events(
            state,
            events,
            attempt=attempt,
            result=result,
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
