"""conveyor.sdk: what user code sees of a pipeline — parameters, reports, stopping, the artifact, the data.

The reporting tests run the SDK in this process with the environment a pipeline sets; the import test,
the endpoint test (a real HTTP server on localhost) and the collective test (real torchrun, 2 gloo
processes) use real processes and sockets.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conveyor import sdk
from conveyor.sdk import env
from conveyor.trainer import progress
from conveyor.trainer.artifacts import read_card
from conveyor.trainer.config import ConfigError
from conveyor.trainer.data.prepare import load_split
from conveyor.trainer.predictor import load_predictor
from tests.trainer.training_helpers import REPO, child_env, config, prepared

PIPELINE_ENV = (
    env.PIPELINE,
    env.WORKLOAD,
    env.ATTEMPT,
    env.TRIAL,
    env.PARAMS,
    env.CONFIG,
    env.OUT,
    env.DATA,
    env.CODE,
    env.PROGRESS_URL,
    env.PROGRESS_TOKEN_FILE,
    env.PROGRESS_CA_FILE,
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PIPELINE_ENV:
        monkeypatch.delenv(name, raising=False)


def in_pipeline(
    monkeypatch: pytest.MonkeyPatch, out: Path, data_dir: Path | None = None, **sections: Any
) -> None:
    """The environment the trainer process sets before it calls user code."""
    monkeypatch.setenv(env.OUT, str(out))
    monkeypatch.setenv(env.CONFIG, json.dumps(config(**sections).to_wire()))
    if data_dir is not None:
        monkeypatch.setenv(env.DATA, str(data_dir))


def events(out: Path) -> list[dict[str, Any]]:
    return [e for e in progress.read_events(out) if e["event"] == "epoch"]


def test_importing_the_sdk_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, conveyor.sdk, conveyor.sdk.env, conveyor.sdk.info\n"
        "print(sorted(m for m in ('torch', 'kopf', 'pydantic', 'kubernetes', 'numpy') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert run.stdout.strip() == "[]"


def test_outside_a_pipeline_every_call_is_a_harmless_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sdk.config() == {} and sdk.params() == {}
    assert all(sdk.report(step, {"accuracy": 0.5}) for step in range(5))
    assert sdk.should_stop() is False
    sdk.flush()
    assert sdk.save_model(nn.Linear(2, 2), torch.zeros(2, 2)) is None
    checkpoints = sdk.checkpoint_dir()
    assert checkpoints.is_dir() and not checkpoints.is_relative_to(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written where the script ran
    run = sdk.info()
    assert (run.rank, run.world_size, run.local_rank, run.pipeline, run.trial, run.attempt) == (
        0,
        1,
        0,
        None,
        None,
        0,
    )
    assert run.out_dir is None and run.checkpoint_dir is None
    with pytest.raises(FileNotFoundError, match=env.DATA):
        sdk.dataset("train")


def test_params_config_and_info_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pipeline(monkeypatch, tmp_path / "model", tmp_path / "data", optimizer={"learningRate": 0.02})
    monkeypatch.setenv(env.PARAMS, json.dumps({"optimizer.learningRate": 0.02, "training.batchSize": 64}))
    for name, value in {
        env.PIPELINE: "digits",
        env.WORKLOAD: "trial-0003",
        env.TRIAL: "3",
        env.ATTEMPT: "2",
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    params = sdk.params()
    assert params == {"optimizer.learningRate": 0.02, "training.batchSize": 64}
    assert isinstance(params["training.batchSize"], int)
    assert sdk.config()["optimizer"]["learningRate"] == 0.02
    assert sdk.info() == sdk.RunInfo(
        rank=1,
        world_size=4,
        local_rank=1,
        pipeline="digits",
        workload="trial-0003",
        trial=3,
        attempt=2,
        out_dir=tmp_path / "model",
        data_dir=tmp_path / "data",
        checkpoint_dir=tmp_path / "model" / "checkpoints",
    )
    assert sdk.checkpoint_dir() == tmp_path / "model" / "checkpoints" and sdk.checkpoint_dir().is_dir()
    monkeypatch.setenv(env.PARAMS, "[1, 2]")
    with pytest.raises(ValueError, match=env.PARAMS):
        sdk.params()


def test_reports_are_written_on_the_step_grid_with_held_metrics_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pipeline(monkeypatch, tmp_path, training={"maxSteps": 1000})  # grid: every 10 steps
    for step in range(1, 101):
        assert sdk.report(step, {"trainLoss": 1.0 / step}) is True  # no objective: never written
        assert sdk.report(step, {"accuracy": step / 100, "loss": torch.tensor(2.0 / step)}) is True
    written = events(tmp_path)
    assert [e["step"] for e in written] == [1, *range(10, 101, 10)]
    assert [e["epoch"] for e in written] == list(range(1, 12))
    last = written[-1]
    assert set(last) == {
        "event",
        "epoch",
        "epochs",
        "step",
        "maxSteps",
        "metrics",
        "samplesPerSecond",
        "etaSeconds",
        "elapsedSeconds",
    }
    assert last["epochs"] == 100 and last["maxSteps"] == 1000 and last["samplesPerSecond"] == 0.0
    assert last["metrics"] == {"trainLoss": 0.01, "accuracy": 1.0, "loss": 0.02}  # tensors become floats
    assert last["etaSeconds"] >= 0 and last["elapsedSeconds"] > 0
    sdk.report(105, {"accuracy": 0.4})  # held: not yet on the grid
    assert len(events(tmp_path)) == 11
    sdk.flush()  # the runner's (or the exit's) flush writes what was held
    assert events(tmp_path)[-1]["step"] == 105 and events(tmp_path)[-1]["metrics"] == {"accuracy": 0.4}
    sdk.flush()
    assert len(events(tmp_path)) == 12  # nothing held twice


def test_without_max_steps_every_report_with_the_objective_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pipeline(monkeypatch, tmp_path, task={"type": "regression", "objective": {"metric": "rmse"}})
    sdk.report(1, {"loss": 3.0})
    sdk.report(2, {"rmse": 2.0})
    sdk.report(3, {"accuracy": 0.3, "note": "not a number", "shape": [1, 2]})  # no objective; text dropped
    sdk.report(4, {"rmse": 1.0})
    written = events(tmp_path)
    assert [(e["step"], e["metrics"]) for e in written] == [
        (2, {"loss": 3.0, "rmse": 2.0}),
        (4, {"accuracy": 0.3, "rmse": 1.0}),
    ]
    assert written[0]["epochs"] == 0 and written[0]["maxSteps"] is None


def test_other_ranks_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_pipeline(monkeypatch, tmp_path)
    monkeypatch.setenv("RANK", "1")
    assert sdk.report(1, {"accuracy": 0.9}) is True
    sdk.flush()
    assert not (tmp_path / "progress.jsonl").exists()
    assert sdk.save_model(nn.Linear(2, 2), torch.zeros(2, 2)) is None


def test_a_retry_continues_the_report_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = [{"event": "epoch", "epoch": n, "step": 10 * n, "metrics": {"accuracy": 0.1}} for n in (1, 2)]
    (tmp_path / "progress.jsonl").write_text(
        "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in earlier)
    )
    in_pipeline(monkeypatch, tmp_path)
    sdk.report(30, {"accuracy": 0.5})
    assert [e["epoch"] for e in events(tmp_path)] == [1, 2, 3]


class Clock:
    """A monotonic clock the test moves (`conveyor.sdk._clock`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sdk, "_clock", fake)
    return fake


def test_the_stop_file_stops_report_and_should_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    in_pipeline(monkeypatch, tmp_path)
    assert sdk.report(1, {"accuracy": 0.5}) is True and sdk.should_stop() is False
    (tmp_path / env.STOP_FILE).touch()  # what the local executor writes when the tuner prunes the trial
    clock.now += sdk.STOP_POLL_SECONDS
    assert sdk.should_stop() is True
    assert sdk.report(2, {"accuracy": 0.6}) is False
    assert [e["step"] for e in events(tmp_path)] == [1, 2]  # the report is still written


def test_should_stop_looks_for_the_stop_file_at_most_once_per_poll_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    """A hot loop calling should_stop() every step stats the stop file once per STOP_POLL_SECONDS, not
    once per call, and still sees a stop request by its first call that long after the request."""
    in_pipeline(monkeypatch, tmp_path)
    stop_file = tmp_path / env.STOP_FILE
    looks: list[Path] = []
    real_exists = Path.exists

    def counting_exists(path: Path, *args: Any, **kwargs: Any) -> bool:
        if path == stop_file:
            looks.append(path)
        return real_exists(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", counting_exists)
    assert [sdk.should_stop() for _ in range(1000)] == [False] * 1000
    assert len(looks) == 1  # the first call looks; the clock has not moved since
    first_look = clock.now
    clock.now = first_look + sdk.STOP_POLL_SECONDS / 2
    stop_file.touch()
    assert [sdk.should_stop() for _ in range(1000)] == [False] * 1000  # within the interval: not seen
    assert len(looks) == 1
    clock.now = first_look + sdk.STOP_POLL_SECONDS  # one interval after the first look
    assert sdk.should_stop() is True
    assert len(looks) == 2
    assert [sdk.should_stop() for _ in range(100)] == [True] * 100  # stopped for good: no more looks
    assert len(looks) == 2


class ProgressEndpoint(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict[str, Any]]] = []
    reply: dict[str, Any] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, self.headers["Authorization"], body))
        payload = json.dumps(type(self).reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    ProgressEndpoint.received, ProgressEndpoint.reply = [], {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProgressEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reports_are_posted_with_the_token_and_a_stop_reply_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    out = tmp_path / "model"
    in_pipeline(monkeypatch, out)
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    monkeypatch.setenv(env.PROGRESS_URL, endpoint)
    monkeypatch.setenv(env.PROGRESS_TOKEN_FILE, str(token))
    assert sdk.report(1, {"accuracy": 0.5}) is True
    path, authorization, body = ProgressEndpoint.received[-1]
    assert (path, authorization) == ("/v1/progress", "Bearer secret-token")
    assert body == events(out)[-1]
    ProgressEndpoint.reply = {"stop": True}  # the tuner pruned this trial
    assert sdk.report(2, {"accuracy": 0.6}) is False
    assert sdk.should_stop() is True
    assert (out / env.STOP_FILE).exists()  # recorded for the runner's stoppedEarly
    # With a CA configured, never send the token over plain http.
    count = len(ProgressEndpoint.received)
    monkeypatch.setenv(env.PROGRESS_CA_FILE, str(tmp_path / "ca.pem"))
    sdk.report(3, {"accuracy": 0.7})
    assert len(ProgressEndpoint.received) == count


def test_the_endpoint_names_are_the_trainers() -> None:
    assert (env.PROGRESS_URL, env.PROGRESS_TOKEN_FILE, env.PROGRESS_CA_FILE) == (
        progress.PROGRESS_URL_ENV,
        progress.PROGRESS_TOKEN_FILE_ENV,
        progress.PROGRESS_CA_FILE_ENV,
    )


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("cancer"), data={"source": "builtin://breast-cancer"})


class Wrapped(nn.Module):
    """Stands for DistributedDataParallel: the network is `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_save_model_writes_the_artifact_every_stage_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Path
) -> None:
    in_pipeline(monkeypatch, tmp_path, cancer, data={"source": "builtin://breast-cancer"})
    train_set = sdk.dataset("train")
    x, y = train_set.tensors
    assert (
        x.dtype == torch.float32
        and y.dtype == torch.int64
        and len(train_set) == len(load_split(cancer, "train")[1])
    )
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    reported = {50: 0.7, 100: 0.9, 150: 0.8, 200: 0.85}  # stands for validation accuracy
    for step in range(1, 201):
        loss = nn.functional.cross_entropy(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in reported:
            sdk.report(step, {"accuracy": reported[step], "step": step})
    assert sdk.save_model(Wrapped(network), x[:4]) == tmp_path
    assert {"weights.pt", "model.pt2", "model.json"} <= {p.name for p in tmp_path.iterdir()}
    card = read_card(tmp_path)
    assert card.metrics == {"accuracy": 0.9, "step": 100}  # the best report's metrics
    assert card.dataset.feature_shape == [x.shape[1]]
    test_x, test_y = load_split(cancer, "test")
    predicted = load_predictor(tmp_path).predict(test_x).argmax(1)
    assert float(np.mean(predicted == test_y)) > 0.85


def test_dataset_calls_the_data_entrypoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "code" / "sdk_test_data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def load(split):\n    n = {'train': 6, 'validation': 3, 'test': 2}[split]\n"
        "    return TensorDataset(torch.ones(n, 4), torch.zeros(n, dtype=torch.int64))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    in_pipeline(monkeypatch, tmp_path / "model", data={"entrypoint": "sdk_test_data:load"})
    assert [len(sdk.dataset(split)) for split in ("train", "validation", "test")] == [6, 3, 2]
    with pytest.raises(ValueError, match="train, validation or test"):
        sdk.dataset("dev")
    in_pipeline(monkeypatch, tmp_path / "model", data={"entrypoint": "sdk_test_data:lod"})
    with pytest.raises(ConfigError, match="did you mean sdk_test_data:load"):
        sdk.dataset("train")


STOP_SCRIPT = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from conveyor import sdk

dist.init_process_group("gloo")
rank = dist.get_rank()
answers = []
call = 0
sdk._clock = lambda: float(call)  # a second per call: rank 0 looks for the stop file at every call
for call in range(1, 9):
    if rank == 0 and call == 3:
        (Path(os.environ["CONVEYOR_OUT"]) / "stop").touch()  # asked to stop between calls 2 and 3
    answers.append(sdk.should_stop(every=2))
    dist.barrier()
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(answers))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_should_stop_gives_every_rank_rank_0s_answer_at_the_same_call(tmp_path: Path) -> None:
    script = tmp_path / "stop_script.py"
    script.write_text(textwrap.dedent(STOP_SCRIPT))
    out = tmp_path / "model"
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
        str(tmp_path),
    ]
    cfg = json.dumps(config().to_wire())
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=child_env(CONVEYOR_OUT=str(out), CONVEYOR_CONFIG=cfg),
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Agreed on calls 2, 4, 6, 8: call 3 still returns call 2's answer on every rank, call 4 the stop.
    assert answers[0] == answers[1] == [False, False, False, True, True, True, True, True]
