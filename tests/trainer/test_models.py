"""Every architecture builds from metadata, runs forward and backward, and keeps its contract."""

from __future__ import annotations

import pytest
import torch

from conveyor.trainer.artifacts import DatasetMetadata, NormalizationStats
from conveyor.trainer.config import ModelSpec
from conveyor.trainer.models import build_model

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
