"""examples/own-model: a user's residual MLP (model.entrypoint) tuned, pruned, ensembled, gated and
served int8 by Conveyor, run with `conveyor run` exactly as the example says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.trainer import preflight
from conveyor.trainer.data.prepare import load_split
from tests.examples.conveyor_run import EXAMPLES, report, run_example, trainer_config

NAME = "own-model"
CODE = EXAMPLES / NAME / "src"


def test_the_example_passes_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(CODE))
    config = trainer_config(NAME)
    assert config.model.entrypoint == "mymodels.residual:build"
    preflight.check(config)


@pytest.mark.slow
def test_conveyor_run_tunes_ensembles_gates_and_serves_the_user_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    status = run_example(NAME, root)
    assert status["phase"] == "Succeeded"
    trials = status["trials"]
    assert {t["state"] for t in trials} <= {"Succeeded", "Pruned"} and len(trials) == 5
    assert all(
        "model.options.width" in t["params"] and "optimizer.learningRate" in t["params"] for t in trials
    )
    best = max(t["value"] for t in trials if t["state"] == "Succeeded")
    assert status["bestTrial"]["value"] == best > 0.9
    members = status["ensemble"]["members"]
    assert 2 <= len(members) <= 3
    model_report, ensemble_report = report(root, "model"), report(root, "ensemble")
    assert model_report["metrics"]["accuracy"] > 0.9 and ensemble_report["metrics"]["accuracy"] > 0.9
    assert ensemble_report["objective"]["metric"] == "accuracy"
    assert status["gate"]["passed"] is True and ensemble_report["gate"]["passed"] is True

    # Serving as configured (int8): the ensemble's members rebuilt from the user's code, quantized.
    from conveyor.trainer.predictor import load_predictor

    monkeypatch.syspath_prepend(str(CODE))
    served = load_predictor(root / "ensemble", quantization="int8")
    x, y = load_split(root / "data", "test")
    assert "DynamicQuantizedLinear" in repr(served.members[0].module)  # type: ignore[attr-defined]
    assert float(np.mean(served.predict(x).argmax(1) == y)) > 0.9
