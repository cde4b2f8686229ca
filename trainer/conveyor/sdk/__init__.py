"""`conveyor.sdk`: what user code calls to take part in a pipeline — parameters in, reports and a model out.

A training loop of your own (`spec.training.entrypoint`) or a whole program (`spec.training.command`)
talks to Conveyor only through these calls; they read the environment the pipeline sets
(`conveyor.sdk.env`) and write files into the workload's model directory, so tuning, pruning,
evaluation, the gate, ensembles and serving work on your model as on Conveyor's own::

    from conveyor import sdk

    def train(config):                      # spec.training.entrypoint: "mypkg.loop:train"
        lr = config["optimizer"]["learningRate"]            # the trial's value, already applied
        for step in range(config["training"]["maxSteps"]):
            ...
            sdk.report(step, {"accuracy": acc, "loss": val_loss})
            if sdk.should_stop():           # pruned: every rank gets the same answer and leaves
                break                       # (call it on every rank: it is a collective under DDP)
        sdk.save_model(model, example_batch)

Standard library only at import, so importing it costs nothing and loads neither torch nor pydantic;
torch (and the trainer's modules) are imported inside the calls that need them (`save_model`,
`dataset`, `should_stop` under a process group).

Outside a pipeline (no `$CONVEYOR_OUT`: the same script run by hand) every call is a harmless no-op:
`config()` and `params()` are `{}`, `report()` returns True and writes nothing, `should_stop()` is
False, `save_model()` writes nothing and returns None, `checkpoint_dir()` is a fresh temporary
directory (nothing is left in your working directory; nothing resumes), and `dataset()` works when
`$CONVEYOR_DATA` names a prepared dataset (`python -m conveyor.trainer prepare`) and says so otherwise.

Reports: `report(step, metrics)` is cheap enough to call every step. Rank 0 writes a report (one
"epoch" event in `$CONVEYOR_OUT/progress.jsonl`, the same shape as Conveyor's own loop writes, and on
Kubernetes a POST to the progress endpoint) only when `metrics` hold the objective metric
(`task.objective.metric`) and, with `training.maxSteps` set, `step` reached the next multiple of
max(1, maxSteps // 100) since the last written report: so every trial reports on the same step grid
and at most ~100 points. Other calls are remembered and merged into the next written report; the last
held-back report with the objective is written when the loop ends (`flush()`, also run at exit).
Other ranks' calls do nothing and cost nothing.

Stopping: when the tuner prunes the trial it asks it to stop (locally the file `$CONVEYOR_OUT/stop`, on
Kubernetes the endpoint's reply `{"stop": true}`); from then on `report()` returns False on rank 0 and
`should_stop()` returns True on every rank, through a collective at the same call index, so a DDP
loop never hangs on a one-sided stop. Rank 0 looks for the stop file at most every STOP_POLL_SECONDS
(0.1 s), so calling `should_stop()` every step costs no file system call per step; the collective's
schedule does not depend on the clock. Workers that do not stop within
`tuning.stopGracePeriodSeconds` are stopped for them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.sdk import env
from conveyor.sdk.info import ModelInfo

__all__ = [
    "ModelInfo",
    "RunInfo",
    "checkpoint_dir",
    "config",
    "dataset",
    "flush",
    "info",
    "params",
    "report",
    "save_model",
    "should_stop",
]

PROGRESS_FILE = "progress.jsonl"  # conveyor.trainer.artifacts.PROGRESS_FILE (that module needs pydantic)
REPORT_POINTS = 100  # with training.maxSteps: at most about this many written reports
POST_TIMEOUT_SECONDS = 1.0
# Rank 0 looks for the stop file at most this often: a loop may call `should_stop()` every step, and a
# stat per step adds up (more so on a network volume), while a stop noticed this much later costs
# nothing next to the grace period the executor gives.
STOP_POLL_SECONDS = 0.1
_clock = time.monotonic  # the clock of STOP_POLL_SECONDS (tests replace it)
_STARTED = time.monotonic()  # elapsedSeconds counts from here: the user program's start, near enough


@dataclass(frozen=True)
class RunInfo:
    """Who and where this process is. Ranks come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK; 0, 1, 0
    without it); the rest from the pipeline (None, or attempt 0, outside one)."""

    rank: int
    world_size: int
    local_rank: int
    pipeline: str | None
    workload: str | None
    trial: int | None
    attempt: int
    out_dir: Path | None
    data_dir: Path | None
    checkpoint_dir: Path | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _json_env(name: str) -> dict[str, Any]:
    value = os.environ.get(name)
    if not value:
        return {}
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"${name} must hold a JSON object, not {type(parsed).__name__}")
    return parsed


def config() -> dict[str, Any]:
    """The resolved training configuration in manifest form (camelCase sections task, data, model,
    optimizer, training, evaluation) with the trial's values applied; {} outside a pipeline."""
    return _json_env(env.CONFIG)


def params() -> dict[str, Any]:
    """The trial's parameters by dotted manifest name, typed as the tuner chose them (e.g.
    {"optimizer.learningRate": 0.003, "training.batchSize": 64}); {} when not tuning."""
    return _json_env(env.PARAMS)


def info() -> RunInfo:
    out = _path_env(env.OUT)
    trial = os.environ.get(env.TRIAL, "")
    return RunInfo(
        rank=_int_env("RANK", 0),
        world_size=_int_env("WORLD_SIZE", 1),
        local_rank=_int_env("LOCAL_RANK", 0),
        pipeline=os.environ.get(env.PIPELINE) or None,
        workload=os.environ.get(env.WORKLOAD) or None,
        trial=int(trial) if trial.strip() else None,
        attempt=_int_env(env.ATTEMPT, 0),
        out_dir=out,
        data_dir=_path_env(env.DATA),
        checkpoint_dir=out / env.CHECKPOINT_DIR if out else None,
    )


_local_checkpoints: Path | None = None


def checkpoint_dir() -> Path:
    """Where to save checkpoints (created): `$CONVEYOR_OUT/checkpoints`, which a retry of the workload
    (the same OUT) finds again, so a loop that loads its latest checkpoint at the start resumes.
    Outside a pipeline: a temporary directory of this process."""
    global _local_checkpoints
    out = _path_env(env.OUT)
    if out is None:
        if _local_checkpoints is None:
            _local_checkpoints = Path(tempfile.mkdtemp(prefix="conveyor-checkpoints-"))
        return _local_checkpoints
    path = out / env.CHECKPOINT_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- reports and stopping ----------------------------------------------------------------------


class _Reporter:
    """The report state of one process for one model directory."""

    def __init__(self, raw_out: str | None) -> None:
        self.raw_out = raw_out
        self.out = Path(raw_out) if raw_out else None
        self.rank = _int_env("RANK", 0)
        cfg = config() if self.out is not None else {}
        objective = cfg.get("task", {}).get("objective", {})
        self.metric: str | None = objective.get("metric")
        self.max_steps: int | None = cfg.get("training", {}).get("maxSteps")
        self.grid = max(1, self.max_steps // REPORT_POINTS) if self.max_steps else 1
        self.writes = self.out is not None and self.rank == 0 and self.metric is not None
        self.pending: dict[str, Any] = {}  # metrics since the last written report
        self.held: int | None = None  # step of the last call with the objective that was not written
        self.last_written: int | None = None
        self.written: list[dict[str, Any]] = []  # this process's written events
        self.count = self._earlier_reports()  # a retry continues the count of the attempt before
        self.stop = False  # asked to stop (rank 0: what it saw; every rank: after should_stop)
        self.agreed = False  # the last answer every rank agreed on (should_stop)
        self.calls = 0  # should_stop calls, the same sequence on every rank
        self.next_look = float("-inf")  # rank 0: when should_stop may stat the stop file again
        self.lock = threading.Lock()
        if self.writes:
            atexit.register(self._at_exit)

    def _earlier_reports(self) -> int:
        if not self.writes or self.out is None:
            return 0
        try:
            lines = (self.out / PROGRESS_FILE).read_text().splitlines()
        except OSError:
            return 0
        return sum(1 for line in lines if '"event":"epoch"' in line and '"step":' in line)

    def report(self, step: int, metrics: Mapping[str, Any]) -> bool:
        if not self.writes:
            return not self.stop
        self.pending.update(metrics)  # the common case, held back: no lock, no I/O
        if self.metric in metrics:
            with self.lock:
                if self.last_written is None or step // self.grid > self.last_written // self.grid:
                    self._write(step)
                else:
                    self.held = step
        return not self.stop

    def _at_exit(self) -> None:
        if self.out is not None and self.out.is_dir():  # not a directory someone removed since
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if self.writes and self.held is not None and self.metric in self.pending:
                self._write(self.held)

    def _write(self, step: int) -> None:
        assert self.out is not None
        self.count += 1
        elapsed = time.monotonic() - _STARTED
        eta = elapsed / step * (self.max_steps - step) if self.max_steps and step > 0 else 0.0
        event = {
            "event": "epoch",
            "epoch": self.count,
            "epochs": self.max_steps // self.grid if self.max_steps else 0,
            "step": int(step),
            "maxSteps": self.max_steps,
            "metrics": {
                name: round(float(value), 6) for name, value in self.pending.items() if _is_number(value)
            },
            "samplesPerSecond": 0.0,
            "etaSeconds": round(max(eta, 0.0), 1),
            "elapsedSeconds": round(elapsed, 2),
        }
        self.pending.clear()
        self.held, self.last_written = None, step
        self.written.append(event)
        line = json.dumps(event, separators=(",", ":"))
        print(line, flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / PROGRESS_FILE).open("a") as handle:
            handle.write(line + "\n")
        if _post(line) or (self.out / env.STOP_FILE).exists():
            self.asked_to_stop()

    def asked_to_stop(self) -> None:
        """Remember the request, also in OUT/stop: the `command` stage reads it for stoppedEarly."""
        if not self.stop and self.out is not None:
            self.stop = True
            with contextlib.suppress(OSError):
                (self.out / env.STOP_FILE).touch()

    def should_stop(self, every: int) -> bool:
        self.calls += 1
        looks = self.rank == 0 and self.out is not None and not self.stop and self._time_to_look()
        if looks and self.out is not None and (self.out / env.STOP_FILE).exists():
            self.asked_to_stop()
        group = _process_group()
        if group is None:
            self.agreed = self.stop
        elif self.calls % every == 0:
            self.agreed = _broadcast_flag(self.stop)
            self.stop = self.stop or self.agreed
        return self.agreed

    def _time_to_look(self) -> bool:
        """Whether STOP_POLL_SECONDS have passed since the last look (the first call always looks).
        Only when rank 0 looks depends on time; the collective runs at the same calls regardless."""
        now = _clock()
        if now < self.next_look:
            return False
        self.next_look = now + STOP_POLL_SECONDS
        return True


def _post(line: str) -> bool:
    """POST one report to the progress endpoint (Kubernetes); True when the reply asks to stop.

    The same rules as `conveyor.trainer.progress.push`: the projected token re-read each time (the
    kubelet rotates it), https verified against `$CONVEYOR_PROGRESS_CA_FILE` alone when that is set
    (a plain http URL then sends nothing), a short timeout and every error ignored, so a loop never
    waits on or fails because of the operator (the reports are in progress.jsonl either way)."""
    url = os.environ.get(env.PROGRESS_URL)
    token_file = os.environ.get(env.PROGRESS_TOKEN_FILE)
    ca_file = os.environ.get(env.PROGRESS_CA_FILE)
    if not url or not token_file:
        return False
    if ca_file and not url.startswith("https://"):
        return False
    import ssl
    import urllib.request

    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        token = Path(token_file).read_text().strip()
        request = urllib.request.Request(
            url.rstrip("/") + "/v1/progress",
            data=line.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS, context=context) as reply:
            body = reply.read(4096)
        answer = json.loads(body) if body.strip() else {}
        return isinstance(answer, dict) and answer.get("stop") is True
    except Exception:  # best effort by design
        return False


def _process_group() -> Any:
    """torch.distributed when a process group of more than one rank is up (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist


def _broadcast_flag(flag: bool) -> bool:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(box, src=0)
    return bool(box.item())


_reporter_lock = threading.Lock()
_current: _Reporter | None = None


def _reporter() -> _Reporter:
    """The reporter for the current `$CONVEYOR_OUT` (a new one when the environment changed: a runner
    in the same process sets it before calling user code). Compares the raw string: this runs on
    every `report()` call."""
    global _current
    raw = os.environ.get(env.OUT) or None
    current = _current
    if current is None or current.raw_out != raw:
        with _reporter_lock:
            if _current is None or _current.raw_out != raw:
                _current = _Reporter(raw)
            current = _current
    return current


def report(step: int, metrics: Mapping[str, Any]) -> bool:
    """Report `metrics` (name -> number; floats, ints or one-element tensors) at `step`; returns False
    once the pipeline asked this run to stop (rank 0: leave the loop; other ranks use `should_stop`).
    Every rank may call it; rank 0's values count. See the module docstring for when a report is
    written; calling it every step is cheap (tensors are converted only when a report is written)."""
    return _reporter().report(step, metrics)


def should_stop(every: int = 1) -> bool:
    """Whether to leave the loop: rank 0's answer, the same on every rank. Under a process group the
    answer is agreed by a collective on every `every`-th call (pass the same `every` on every rank and
    call it at the same points of the loop, e.g. once per step with every=20); between those calls
    it returns the last agreed answer, so all ranks always return the same. Rank 0 looks for the stop
    file at most every STOP_POLL_SECONDS, so it sees a request by its first call that much after it."""
    if every < 1:
        raise ValueError(f"should_stop(every={every}): every must be at least 1")
    return _reporter().should_stop(every)


def flush() -> None:
    """Write the last held-back report that had the objective (rank 0); run for you at exit and by
    Conveyor's runner when your function returns, so the final metrics always count."""
    _reporter().flush()


# --- the model and the data --------------------------------------------------------------------


def save_model(model: Any, example_input: Any) -> Path | None:
    """Save `model` as the workload's artifact (rank 0; other ranks and runs outside a pipeline return
    None): `weights.pt` (the state dict, DDP/compile wrappers removed), `model.pt2` (the network
    exported with a dynamic batch, when torch.export can capture it) and `model.json` (the model card:
    this run's configuration, the prepared dataset's metadata and the best reported metrics), the
    files evaluation, ensembles and serving load. `example_input` is one batch `[n, *input_shape]`
    on the model's device. Returns the model directory."""
    out, data = _path_env(env.OUT), _path_env(env.DATA)
    if out is None or _int_env("RANK", 0) != 0:
        return None
    if data is None:
        raise RuntimeError(f"save_model: ${env.DATA} is not set; the model card needs the prepared data")
    import torch

    from conveyor.trainer.artifacts import WEIGHTS_FILE, ModelCard, read_metadata, write_card
    from conveyor.trainer.config import TrainerConfig
    from conveyor.trainer.export import export_model

    network = _unwrap(model)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    torch.save(weights, out / WEIGHTS_FILE)
    export_model(network, example_input, out)
    cfg = TrainerConfig.model_validate(config())
    card = ModelCard(name=out.name, config=cfg, dataset=read_metadata(data), metrics=_best_metrics(cfg))
    write_card(out, card)
    return out


def _unwrap(model: Any) -> Any:
    """The network inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def _best_metrics(cfg: Any) -> dict[str, float]:
    reporter = _reporter()
    metric = cfg.task.metric
    scored = [event for event in reporter.written if metric in event["metrics"]]
    if not scored:
        return {name: float(value) for name, value in reporter.pending.items() if _is_number(value)}
    pick = max if cfg.task.maximize else min
    best: dict[str, float] = pick(scored, key=lambda event: event["metrics"][metric])["metrics"]
    return best


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def dataset(split: str) -> Any:
    """The prepared `split` ("train", "validation" or "test") as a torch Dataset of (features, target):
    with `data.entrypoint` set, what that function returns; for Conveyor's sources a TensorDataset over
    `$CONVEYOR_DATA/<split>.npz` (float32 features, normalised as evaluation and serving expect; int64
    class indices or float32 targets)."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"dataset({split!r}): split must be train, validation or test")
    reference = config().get("data", {}).get("entrypoint")
    if reference:
        from conveyor.trainer.usercode import entrypoint

        return entrypoint(reference, "data.entrypoint", ("split",))(split)
    data = _path_env(env.DATA)
    if data is None or not (data / f"{split}.npz").is_file():
        where = f"{data} holds no prepared {split} split" if data else f"${env.DATA} is not set"
        raise FileNotFoundError(
            f"dataset({split!r}): {where}; inside a pipeline Conveyor sets it, by hand run "
            f"`python -m conveyor.trainer prepare --config CONFIG --out DIR` and set {env.DATA}=DIR"
        )
    import torch

    from conveyor.trainer.data.prepare import load_split

    x, y = load_split(data, split)
    return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
