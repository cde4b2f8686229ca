"""Every architecture builds from metadata, runs forward and backward, and keeps its contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conveyor.trainer.artifacts import DatasetMetadata, NormalizationStats
from conveyor.trainer.config import ConfigError, ModelSpec
from conveyor.trainer.data.prepare import load_split
from conveyor.trainer.models import TargetScale, build_model

ARCHITECTURES = ("mlp", "cnn", "resnet", "lstm", "transformer")
SHAPES = ([1, 8, 8], [3, 12, 10], [13])


def metadata(shape: list[int], task: str = "classification") -> DatasetMetadata:
    return DatasetMetadata(
        task=task,  # type: ignore[arg-type]
        source="builtin://test",
        feature_shape=shape,
        input_kind="image" if len(shape) == 3 else "tabular",
        classes=["a", "b", "c"] if task == "classification" else [],
        target_normalization=NormalizationStats(method="standard", shift=[100.0], scale=[20.0])
        if task == "regression"
        else NormalizationStats(),
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward(architecture: str, shape: list[int]) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(architecture=architecture, hidden_size=16, layers=2, heads=2)  # type: ignore[arg-type]
    model = build_model(spec, metadata(shape))
    x = torch.randn(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 3) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # Samples are independent in eval mode: a row's output does not depend on its batch.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:2], model(x[:2]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_size_follows_hyperparameters(architecture: str) -> None:
    small = ModelSpec(architecture=architecture, hidden_size=16, layers=1, heads=2)  # type: ignore[arg-type]
    large = small.model_copy(update={"hidden_size": 32, "layers": 3})
    count = lambda spec: sum(p.numel() for p in build_model(spec, metadata([1, 8, 8])).parameters())  # noqa: E731
    assert count(large) > count(small)


def test_regression_outputs_are_in_target_units() -> None:
    model = build_model(ModelSpec(hidden_size=8), metadata([4], "regression"))
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    # A network whose raw output is 0 predicts the train-split mean of the target.
    assert model(torch.randn(3, 4)).squeeze(1).tolist() == [100.0, 100.0, 100.0]


def test_transformer_pooling_and_state_dict_round_trip() -> None:
    meta = metadata([13])
    cls = build_model(ModelSpec(architecture="transformer", hidden_size=8, heads=2), meta)
    mean = build_model(ModelSpec(architecture="transformer", hidden_size=8, heads=2, pooling="mean"), meta)
    mean.load_state_dict(cls.state_dict())  # same parameters, different pooling
    cls.eval(), mean.eval()
    x = torch.randn(4, 13)
    assert not torch.allclose(cls(x), mean(x))
    again = build_model(ModelSpec(architecture="transformer", hidden_size=8, heads=2), meta).eval()
    again.load_state_dict(cls.state_dict())
    torch.testing.assert_close(again(x), cls(x))


# --- model.entrypoint ---------------------------------------------------------------------------

USER_CODE = "tests.trainer.user_code"


def test_user_model_gets_its_options_and_the_data_info() -> None:
    spec = ModelSpec(entrypoint=f"{USER_CODE}:mlp", options={"width": 7})
    model = build_model(spec, metadata([1, 8, 8]))
    options, info = model.seen  # type: ignore[misc]
    assert options == {"width": 7}
    assert (info.task, info.input_shape, info.num_outputs, info.classes) == (
        "classification",
        (1, 8, 8),
        3,
        ("a", "b", "c"),
    )
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    regression = build_model(spec, metadata([4], "regression")).net  # type: ignore[union-attr]
    assert regression.seen[1].num_outputs == 1 and regression.seen[1].classes is None


def test_user_model_must_be_a_module() -> None:
    with pytest.raises(ConfigError, match=r"^model.entrypoint: .*returned str, not a torch.nn.Module"):
        build_model(ModelSpec(entrypoint=f"{USER_CODE}:not_a_module"), metadata([4]))


def test_user_regression_model_learns_the_standardised_target_like_the_zoo() -> None:
    model = build_model(ModelSpec(entrypoint=f"{USER_CODE}:mlp"), metadata([4], "regression"))
    assert isinstance(model, TargetScale)
    for p in model.net.parameters():
        torch.nn.init.zeros_(p)
    assert model(torch.randn(3, 4)).squeeze(1).tolist() == [100.0, 100.0, 100.0]


def test_int8_serving_of_a_user_model(tmp_path: Path) -> None:
    from conveyor.trainer.predictor import load_predictor
    from conveyor.trainer.train import train
    from tests.trainer.training_helpers import config, model_accuracy, prepared

    sections = {
        "data": {"source": "builtin://digits"},
        "model": {"entrypoint": f"{USER_CODE}:mlp", "options": {"width": 64}},
        "training": {"epochs": 4, "batchSize": 64},
    }
    data_dir = prepared(tmp_path, **sections)
    train(config(**sections), data_dir, tmp_path / "model")
    assert model_accuracy(tmp_path / "model", data_dir) > 0.85
    x, y = load_split(data_dir, "test")
    full = load_predictor(tmp_path / "model").predict(x)
    int8 = load_predictor(tmp_path / "model", quantization="int8")
    assert "DynamicQuantizedLinear" in repr(int8.module)  # type: ignore[attr-defined]
    quantized = int8.predict(x)
    assert float(np.mean(quantized.argmax(1) == full.argmax(1))) > 0.97
    assert float(np.mean(quantized.argmax(1) == y)) > 0.85
