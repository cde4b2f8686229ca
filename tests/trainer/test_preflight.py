"""Preflight: each way user code can be wrong is a ConfigError naming the field and the fix, before any
data is prepared; code that is right passes, and `prepare` runs the check first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conveyor.trainer import preflight
from conveyor.trainer.config import ConfigError
from conveyor.trainer.data.prepare import prepare
from tests.trainer.training_helpers import cli, config

CODE = "tests.trainer.user_code"


def failure(**sections: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        preflight.check(config(**sections))
    return str(raised.value)


def test_good_l1_code_passes() -> None:
    preflight.check(config(data={"entrypoint": f"{CODE}:table"}, model={"entrypoint": f"{CODE}:mlp"}))
    preflight.check(config(data={"entrypoint": f"{CODE}:stream", "inputShape": [5]}))
    preflight.check(config(model={"entrypoint": f"{CODE}:mlp"}))  # builtin://digits: [64], 10 classes
    preflight.check(
        config(
            task={"type": "regression"},
            data={"entrypoint": f"{CODE}:regression"},
            model={"entrypoint": f"{CODE}:mlp"},
        )
    )


def test_missing_module_names_the_field_and_where_code_goes() -> None:
    message = failure(model={"entrypoint": "nosuchpackage.models:build"})
    assert message.startswith("model.entrypoint:") and "nosuchpackage" in message
    assert "spec.code.path" in message


def test_typo_in_the_function_says_did_you_mean() -> None:
    message = failure(data={"entrypoint": f"{CODE}:tabel"})
    assert message.startswith("data.entrypoint:") and f"did you mean {CODE}:table?" in message


def test_wrong_signatures_are_refused() -> None:
    assert "give it exactly these parameters" in failure(model={"entrypoint": f"{CODE}:too_many_parameters"})
    message = failure(training={"entrypoint": f"{CODE}:mlp"})  # mlp(options, info) cannot take (config)
    assert message.startswith("training.entrypoint:") and "(config)" in message


def test_dataset_of_the_wrong_shape() -> None:
    message = failure(data={"entrypoint": f"{CODE}:wrong_shape", "inputShape": [6]})
    assert "data.entrypoint" in message and "[3, 2]" in message and "data.inputShape is [6]" in message


def test_dataset_that_is_not_a_dataset_or_not_pairs() -> None:
    assert "not a torch Dataset" in failure(data={"entrypoint": f"{CODE}:a_list"})
    assert "not a (features, target) pair" in failure(data={"entrypoint": f"{CODE}:not_pairs"})


def test_targets_must_fit_the_task() -> None:
    message = failure(data={"entrypoint": f"{CODE}:float_labels"})
    assert "task.type is classification" in message and "int class index" in message
    message = failure(data={"entrypoint": f"{CODE}:big_label", "classes": ["a", "b", "c"]})
    assert "target is 7" in message and "3 classes" in message
    # No classes given: the labels seen (only 7) are not 0..k-1.
    assert "data.classes" in failure(data={"entrypoint": f"{CODE}:big_label"})


def test_model_that_is_not_a_module_or_does_not_fit() -> None:
    message = failure(model={"entrypoint": f"{CODE}:not_a_module"})
    assert message.startswith("model.entrypoint:") and "not a torch.nn.Module" in message
    message = failure(data={"entrypoint": f"{CODE}:table"}, model={"entrypoint": f"{CODE}:wrong_outputs"})
    assert (
        "logits shaped [2, 3]" in message and "returned [2, 10]" in message and "info.num_outputs" in message
    )
    message = failure(data={"entrypoint": f"{CODE}:table"}, model={"entrypoint": f"{CODE}:wrong_input"})
    assert "forward pass on a batch shaped [2, 5]" in message and "mat1 and mat2" in message
    message = failure(
        task={"type": "regression"},
        data={"entrypoint": f"{CODE}:regression"},
        model={"entrypoint": f"{CODE}:wrong_outputs"},
    )
    assert "one value per sample" in message and "returned [2, 10]" in message


def test_prepare_runs_the_check_first_and_records_it(tmp_path: Path) -> None:
    cfg = config(data={"entrypoint": f"{CODE}:table"}, model={"entrypoint": f"{CODE}:wrong_outputs"})
    out = tmp_path / "data"
    done = cli("prepare", "--config", json.dumps(cfg.to_wire()), "--out", out)
    assert done.returncode == 2, done.stderr
    assert "logits shaped [2, 3]" in done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == "InvalidConfig"
    assert not (out / "metadata.json").exists()  # nothing prepared


def test_prepare_of_a_user_dataset_writes_metadata_only(tmp_path: Path) -> None:
    meta = prepare(config(data={"entrypoint": f"{CODE}:named_table"}), tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["metadata.json"]
    assert meta.classes == ["low", "mid", "high"] and meta.feature_shape == [5]
    assert meta.normalization.method == "none" and meta.sizes == {"train": 203, "validation": 61, "test": 59}


def test_a_user_model_on_a_file_source_is_checked_once_the_data_is_prepared(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    rows = [f"{i % 3},{i},{i * 2 % 7},{i % 5},{i % 2},{i % 3}" for i in range(60)]
    table.write_text("a,b,c,d,e,label\n" + "\n".join(rows) + "\n")
    cfg = config(data={"source": str(table)}, model={"entrypoint": f"{CODE}:wrong_outputs"})
    preflight.check(cfg)  # the shape of a file's features is not known before it is read
    out = tmp_path / "data"
    done = cli("prepare", "--config", json.dumps(cfg.to_wire()), "--out", out)
    assert done.returncode == 2 and "logits shaped [2, 3]" in done.stderr, done.stderr
    assert json.loads((out / "result.json").read_text())["reason"] == "InvalidConfig"
