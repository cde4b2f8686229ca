"""The user's dataset in Conveyor's loop: sharding across ranks and loader workers (disjoint, the same
number of batches everywhere), metadata, batched validation, and real 2-process torchrun runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conveyor.trainer import progress
from conveyor.trainer.config import ConfigError
from conveyor.trainer.data import datasets
from conveyor.trainer.data.prepare import prepare
from conveyor.trainer.distributed import Context
from conveyor.trainer.train import load_data, make_loss
from conveyor.trainer.validation import validate
from tests.trainer import user_code
from tests.trainer.training_helpers import REPO, as_json, child_env, config, torchrun_command

CODE = "tests.trainer.user_code"
CPU = torch.device("cpu")


def context(rank: int, world_size: int) -> Context:
    return Context(rank=rank, world_size=world_size, local_rank=rank, device=CPU, backend="gloo")


def epoch_ids(batches: datasets.DatasetBatches, epoch: int) -> list[list[int]]:
    return [[int(i) for i in xb[:, -1].tolist()] for xb, _ in batches.epoch(epoch)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_shard_stream_gives_every_consumer_the_same_count() -> None:
    shards = [list(datasets.shard_stream(range(11), consumer, 4)) for consumer in range(4)]
    assert shards == [[0, 4], [1, 5], [2, 6], [3, 7]]  # 8, 9, 10: the uneven tail, dropped
    with pytest.raises(ValueError):
        list(datasets.shard_stream(range(3), 2, 2))


@pytest.mark.parametrize("workers", [0, 2])
def test_map_style_ranks_get_disjoint_equal_shards_each_epoch(workers: int) -> None:
    cfg = config(data={"entrypoint": f"{CODE}:table"}, training={"batchSize": 16})
    ranks = [
        datasets.DatasetBatches(user_code.table("train"), cfg, context(r, 2), None, workers) for r in (0, 1)
    ]
    first = [epoch_ids(b, 1) for b in ranks]
    assert [len(b) for b in first] == [ranks[0].steps] * 2 == [7, 7]  # 203 // 2 = 101 rows: 7 batches
    seen = [flat(b) for b in first]
    assert len(seen[0]) == len(seen[1]) == ranks[0].samples_per_epoch == 101
    assert not set(seen[0]) & set(seen[1])
    again = [flat(epoch_ids(b, 1)) for b in ranks]
    assert again == seen  # seeded by data.split.seed and the epoch
    second = [flat(epoch_ids(b, 2)) for b in ranks]
    assert second[0] != seen[0] and not set(second[0]) & set(second[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_is_sharded_by_rank_then_worker(workers: int) -> None:
    cfg = config(data={"entrypoint": f"{CODE}:stream"}, training={"batchSize": 8})
    ranks = [
        datasets.DatasetBatches(user_code.stream("train"), cfg, context(r, 2), None, workers) for r in (0, 1)
    ]
    consumers = 2 * max(1, workers)
    each = 203 // consumers
    counts = [epoch_ids(b, 1) for b in ranks]
    assert [len(b) for b in counts] == [ranks[0].steps] * 2
    seen = [flat(b) for b in counts]
    assert len(seen[0]) == len(seen[1]) == each * max(1, workers) == ranks[0].samples_per_epoch
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(each * consumers))  # only the tail is dropped


def test_iterable_is_told_the_epoch() -> None:
    cfg = config(data={"entrypoint": f"{CODE}:stream"}, training={"batchSize": 8})
    stream = user_code.stream("train")
    batches = datasets.DatasetBatches(stream, cfg, context(0, 1), None, 0)
    epoch_ids(batches, 3)
    assert stream.epochs_seen[-1] == 3


def test_a_trailing_batch_of_one_is_dropped() -> None:
    cfg = config(data={"entrypoint": f"{CODE}:table"}, training={"batchSize": 10})
    batches = datasets.DatasetBatches(user_code.Table(0, 21), cfg, context(0, 1), None, 0)
    assert [len(ids) for ids in epoch_ids(batches, 1)] == [10, 10] and batches.steps == 2


def test_metadata_classes_from_config_attribute_or_labels() -> None:
    assert datasets.describe(config(data={"entrypoint": f"{CODE}:table"})).classes == ["0", "1", "2"]
    named = datasets.describe(config(data={"entrypoint": f"{CODE}:named_table"}))
    assert named.classes == ["low", "mid", "high"] and named.input_kind == "tabular"
    given = config(data={"entrypoint": f"{CODE}:stream", "classes": ["x", "y", "z"]})
    described = datasets.describe(given)
    assert described.classes == ["x", "y", "z"] and described.sizes == {}  # an iterable has no length
    regression = datasets.describe(
        config(task={"type": "regression"}, data={"entrypoint": f"{CODE}:regression"})
    )
    assert regression.classes == [] and regression.target_normalization.method == "none"
    with pytest.raises(ConfigError, match=r"data.inputShape is \[2, 2\]"):
        datasets.describe(config(data={"entrypoint": f"{CODE}:table", "inputShape": [2, 2]}))


def test_validation_in_batches_matches_the_whole_split(tmp_path: Path) -> None:
    cfg = config(data={"entrypoint": f"{CODE}:stream"}, training={"batchSize": 16})
    meta = prepare(cfg, tmp_path / "data")
    torch.manual_seed(0)
    model = user_code.mlp({}, user_code.ModelInfo("classification", (5,), 3, ("0", "1", "2")))
    _, validation = load_data(cfg, meta, tmp_path / "data", context(0, 1))
    loss_fn = make_loss(meta, 0.0)
    batched = validation(model, loss_fn, torch.no_grad)
    x, y = zip(*user_code.stream("validation"), strict=True)
    whole = validate(model, meta, torch.stack(x), torch.tensor(y), loss_fn, torch.no_grad, 1024)
    assert batched.keys() == whole.keys()
    for name, value in whole.items():
        assert batched[name] == pytest.approx(value, abs=1e-6), name


def run_torchrun(tmp_path: Path, dataset: str) -> dict[str, object]:
    cfg = config(
        data={"entrypoint": f"{CODE}:{dataset}"},
        model={"entrypoint": f"{CODE}:recording_model"},
        training={"epochs": 2, "batchSize": 16, "earlyStopping": None},
    )
    data_dir, out, record = tmp_path / "data", tmp_path / "model", tmp_path / "record"
    record.mkdir()
    prepare(cfg, data_dir)
    done = subprocess.run(
        torchrun_command(2, "train", "--config", as_json(cfg), "--data", data_dir, "--out", out),
        capture_output=True,
        text=True,
        env=child_env(USER_CODE_RECORD=str(record), CONVEYOR_LOADER_WORKERS="1"),
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    batches = {rank: (record / f"rank{rank}").read_text().splitlines() for rank in (0, 1)}
    assert len(batches[0]) == len(batches[1]) > 0  # the same number of steps: DDP cannot hang
    per_epoch = len(batches[0]) // 2
    for epoch in range(2):
        ids = [
            {int(i) for line in batches[r][epoch * per_epoch : (epoch + 1) * per_epoch] for i in line.split()}
            for r in (0, 1)
        ]
        assert ids[0] and ids[1] and not ids[0] & ids[1]  # disjoint shards within every epoch
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded" and result["epochsRun"] == 2
    assert [e["epoch"] for e in progress.read_events(out) if e.get("event") == "epoch"] == [1, 2]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["table", "stream"])
def test_two_processes_train_on_a_user_dataset(tmp_path: Path, dataset: str) -> None:
    result = run_torchrun(tmp_path, dataset)
    assert 0.0 <= result["objective"]["value"] <= 1.0  # type: ignore[index]
