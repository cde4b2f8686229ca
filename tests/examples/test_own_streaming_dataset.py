"""examples/own-streaming-dataset: a user's IterableDataset (data.entrypoint) streamed from CSV shards
into Conveyor's loop on two processes, tuned, ensembled, evaluated on its own test split and gated, run with
`conveyor run` exactly as the example says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.trainer import preflight
from tests.examples.conveyor_run import EXAMPLES, report, run_example, trainer_config

NAME = "own-streaming-dataset"
CODE = EXAMPLES / NAME / "src"


def test_the_example_passes_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(CODE))
    monkeypatch.setenv("MYSTREAM_DIR", str(tmp_path / "shards"))
    config = trainer_config(NAME)
    assert config.data.entrypoint == "mystream.shards:load"
    preflight.check(config)
    assert len(list((tmp_path / "shards").glob("train-*.csv"))) == 8  # generated at first use


@pytest.mark.slow
def test_conveyor_run_trains_and_evaluates_on_the_stream(tmp_path: Path) -> None:
    root = tmp_path / "run"
    status = run_example(NAME, root, MYSTREAM_DIR=str(tmp_path / "shards"))
    assert status["phase"] == "Succeeded"
    assert [t["state"] for t in status["trials"]] == ["Succeeded"] * 3
    assert status["bestTrial"]["value"] > 0.8
    # prepare wrote the metadata only: the data stays the user's stream.
    assert sorted(p.name for p in (root / "data").iterdir()) == ["metadata.json", "result.json"]
    meta = json.loads((root / "data" / "metadata.json").read_text())
    assert meta["classes"] == ["idle", "walking", "running"] and meta["feature_shape"] == [12]
    evaluation = report(root, "model")
    assert evaluation["samples"] == 500  # the whole test split, streamed in batches
    assert evaluation["objective"]["metric"] == "accuracy" and evaluation["metrics"]["accuracy"] > 0.8
    assert len(status["ensemble"]["members"]) == 2
    ensemble = report(root, "ensemble")
    assert ensemble["samples"] == 500 and ensemble["metrics"]["accuracy"] > 0.8
    assert status["gate"]["passed"] is True and ensemble["gate"]["passed"] is True
