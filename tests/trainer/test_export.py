"""export: every built-in network exports with a dynamic batch and reproduces its eager outputs; models
that cannot export are reported, not raised; and a model directory holding only `model.pt2` and
`model.json` (a user model whose code is not here) evaluates, ensembles and serves unchanged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conveyor.trainer import artifacts, metrics
from conveyor.trainer.artifacts import EXPORT_FILE, WEIGHTS_FILE, ModelCard
from conveyor.trainer.config import ModelSpec, TrainerConfig
from conveyor.trainer.ensemble import build
from conveyor.trainer.evaluate import evaluate
from conveyor.trainer.export import ExportedGraph, export_model, load_exported
from conveyor.trainer.models import TargetScale, build_model
from conveyor.trainer.predictor import ModelPredictor, load_predictor
from conveyor.trainer.train import train
from tests.trainer.test_models import ARCHITECTURES, SHAPES, metadata
from tests.trainer.test_serve import Server, start, stop, wait_ready
from tests.trainer.tiny_models import load_split, make_data_dir, make_model_dir
from tests.trainer.training_helpers import config, prepared


def randomise_norm_statistics(model: nn.Module) -> None:
    """Batch norm in eval mode with fresh statistics is the identity; make it count in the comparison."""
    generator = torch.Generator().manual_seed(1)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator))
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)


def exported_matches_eager(model: nn.Module, shape: list[int], example_rows: int, tmp_path: Path) -> None:
    example = torch.randn(example_rows, *shape)
    path = export_model(model, example, tmp_path)
    assert path == tmp_path / EXPORT_FILE and path.is_file()
    exported, graph = load_exported(tmp_path), load_exported(tmp_path, check_inputs=False)
    assert isinstance(graph, ExportedGraph)  # what the predictor runs: the graph called directly
    model.eval()
    with torch.no_grad():
        for rows in (5, 1):  # neither is the size it was traced with (example_rows, or 2 for one row)
            x = torch.randn(rows, *shape)
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_architecture_exports_from_a_one_row_example(
    architecture: str, shape: list[int], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(architecture=architecture, hidden_size=16, layers=2, heads=2)  # type: ignore[arg-type]
    model = build_model(spec, metadata(shape))
    randomise_norm_statistics(model)
    exported_matches_eager(model, shape, 1, tmp_path)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_regression_target_scale_exports(architecture: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(architecture=architecture, hidden_size=16, layers=2, heads=2)  # type: ignore[arg-type]
    model = build_model(spec, metadata([13], "regression"))
    assert isinstance(model, TargetScale)
    exported_matches_eager(model, [13], 4, tmp_path)
    # The shift and scale are in the program: zeroed weights predict the train-split mean (100).
    for parameter in model.parameters():
        nn.init.zeros_(parameter)
    export_model(model, torch.zeros(3, 13), tmp_path)
    assert load_exported(tmp_path)(torch.randn(2, 13)).squeeze(1).tolist() == [100.0, 100.0]


def test_export_restores_training_mode_and_holds_the_weights_it_was_given(tmp_path: Path) -> None:
    model = build_model(ModelSpec(hidden_size=8, dropout=0.5), metadata([4])).train()
    export_model(model, torch.randn(3, 4), tmp_path)
    assert model.training  # the caller may keep training
    x = torch.randn(6, 4)
    with torch.no_grad():  # exported in eval mode: no dropout, deterministic
        torch.testing.assert_close(load_exported(tmp_path)(x), model.eval()(x))


def test_wrappers_are_looked_through(tmp_path: Path) -> None:
    """What a user loop may hand to save_model: its model under DDP, or compiled."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = build_model(ModelSpec(hidden_size=8), metadata([4])).eval()
    x = torch.randn(5, 4)
    export_model(torch.compile(model), torch.randn(2, 4), tmp_path / "compiled")
    torch.testing.assert_close(load_exported(tmp_path / "compiled")(x), model(x))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        export_model(DistributedDataParallel(model), torch.randn(2, 4), tmp_path / "ddp")
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(load_exported(tmp_path / "ddp")(x), model(x))


def test_input_checks_can_be_dropped(tmp_path: Path) -> None:
    model = build_model(ModelSpec(architecture="cnn", hidden_size=8), metadata([1, 8, 8]))
    export_model(model, torch.randn(2, 1, 8, 8), tmp_path)
    checked, unchecked = load_exported(tmp_path), load_exported(tmp_path, check_inputs=False)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(checked(x), unchecked(x))
    with pytest.raises(Exception, match=r"size|shape|dim"):
        checked(torch.randn(3, 1, 8, 9))


class DataDependent(nn.Module):
    """Branches on tensor values: torch.export cannot capture that without torch.cond."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


class FixedBatch(nn.Module):
    """Hard-codes a batch size of 4 in a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).reshape(4, 2)


@pytest.mark.parametrize(
    ("model", "example", "reason"),
    [
        (DataDependent(), torch.ones(3, 2), r"data.dependent|Could not guard"),
        (FixedBatch(), torch.ones(4, 3), r"batch"),
        (FixedBatch(), [torch.ones(4, 3)], r"one tensor with a batch dimension"),
        (FixedBatch(), torch.ones(0, 3), r"empty batch"),
    ],
    ids=["data-dependent branch", "fixed batch size", "not a tensor", "empty batch"],
)
def test_an_unexportable_model_is_reported_not_raised(
    model: nn.Module, example: torch.Tensor, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = build_model(ModelSpec(hidden_size=8), metadata([3]))
    export_model(stale, torch.ones(2, 3), tmp_path)
    assert (tmp_path / EXPORT_FILE).is_file()
    capsys.readouterr()
    assert export_model(model.train(), example, tmp_path) is None
    assert not (tmp_path / EXPORT_FILE).exists()  # an earlier program would not match the new weights
    assert model.training
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: model not exported (")
    assert "rebuild it from its code" in lines[0]
    assert re.search(reason, lines[0], re.IGNORECASE), lines[0]


def test_training_exports_the_best_epoch(tmp_path: Path) -> None:
    """write_artifacts exports the best epoch's weights, not the last epoch's: the same as weights.pt."""
    data = prepared(tmp_path, data={"source": "builtin://iris"})
    cfg = config(
        data={"source": "builtin://iris"},
        model={"architecture": "cnn", "hiddenSize": 16},
        training={"epochs": 20, "earlyStopping": {"patience": 2, "minDelta": 0.9}},
    )
    result = train(cfg, data, tmp_path / "model")
    assert result["bestEpoch"] == 1 and result["epochsRun"] == 3
    card = artifacts.read_card(tmp_path / "model")
    rebuilt = build_model(card.config.model, card.dataset).eval()
    rebuilt.load_state_dict(torch.load(tmp_path / "model" / WEIGHTS_FILE, weights_only=True))
    x, _ = load_split(data, "test")
    with torch.no_grad():
        expected = rebuilt(torch.from_numpy(x))
    torch.testing.assert_close(load_exported(tmp_path / "model")(torch.from_numpy(x)), expected)


# --- a model directory with only model.pt2 and model.json ---------------------------------------


class UserNet(nn.Module):
    """Not in the zoo (what a user's entrypoint returns), so nothing could rebuild it from the card."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


def make_exported_only_dir(model_dir: Path, data_dir: Path, width: int, seed: int) -> nn.Module:
    meta = artifacts.read_metadata(data_dir)
    torch.manual_seed(seed)
    model = UserNet(width)
    x, y = (torch.from_numpy(a) for a in load_split(data_dir, "train"))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert export_model(model, torch.zeros(1, 64), model_dir) is not None
    config = TrainerConfig.model_validate({"task": {"type": "classification"}})  # the card's zoo default
    artifacts.write_card(model_dir, ModelCard(name=model_dir.name, config=config, dataset=meta))
    return model.eval()


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[nn.Module]]:
    root = tmp_path_factory.mktemp("exported")
    data = make_data_dir(root)
    models = [make_exported_only_dir(root / "trials" / f"u{i}", data, 24 + 8 * i, i) for i in range(2)]
    for index in range(2):
        files = sorted(p.name for p in (root / "trials" / f"u{index}").iterdir())
        assert files == ["model.json", EXPORT_FILE]
    return root, models


def eager_probabilities(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        probabilities: np.ndarray = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    return probabilities


def test_exported_only_directory_predicts_like_the_model(exported_run: tuple[Path, list[nn.Module]]) -> None:
    root, models = exported_run
    predictor = load_predictor(root / "trials" / "u0")
    assert isinstance(predictor, ModelPredictor) and isinstance(predictor.module, ExportedGraph)
    x, y = load_split(root / "data", "test")
    np.testing.assert_allclose(predictor.predict(x), eager_probabilities(models[0], x), atol=1e-5)
    assert predictor.predict(x[:1]).shape == (1, 10)
    assert metrics.compute_metrics("classification", y, predictor.predict(x))["accuracy"] > 0.9
    with pytest.raises(ValueError, match=r"only from its exported program.*--quantization none"):
        load_predictor(root / "trials" / "u0", quantization="int8")


def test_evaluate_an_exported_only_directory(
    exported_run: tuple[Path, list[nn.Module]], tmp_path: Path
) -> None:
    root, models = exported_run
    report = evaluate(root / "trials" / "u1", root / "data", tmp_path)
    x, y = load_split(root / "data", "test")
    expected = metrics.compute_metrics("classification", y, eager_probabilities(models[1], x))
    assert report["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert sum(map(sum, report["confusionMatrix"])) == len(y)
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "roc.png").is_file()


@pytest.fixture(scope="module")
def exported_ensemble(exported_run: tuple[Path, list[nn.Module]]) -> Path:
    root, _ = exported_run
    members = [root / "trials" / "u0", root / "trials" / "u1"]
    card = build(members, "weightedAverage", root / "data", root / "ensemble")  # scores each member first
    assert len(card.weights) == 2 and card.metrics["accuracy"] > 0.9
    return root / "ensemble"


def test_ensemble_of_exported_only_directories(
    exported_run: tuple[Path, list[nn.Module]], exported_ensemble: Path
) -> None:
    root, models = exported_run
    weights = artifacts.read_card(exported_ensemble).weights
    x, _ = load_split(root / "data", "test")
    expected = sum(w * eager_probabilities(m, x) for w, m in zip(weights, models, strict=True))
    np.testing.assert_allclose(load_predictor(exported_ensemble).predict(x), expected, atol=1e-5)


@pytest.fixture(scope="module")
def ensemble_server(exported_ensemble: Path) -> Iterator[Server]:
    server = start(
        exported_ensemble,
        exported_ensemble.parent / "serve.log",
        "--max-batch-size",
        "8",
        "--max-latency-ms",
        "20",
    )
    try:
        yield wait_ready(server)
    finally:
        stop(server)


def test_serve_an_ensemble_of_exported_only_directories(
    exported_run: tuple[Path, list[nn.Module]], exported_ensemble: Path, ensemble_server: Server
) -> None:
    import tritonclient.http as triton

    root, _ = exported_run
    predictor = load_predictor(exported_ensemble)
    stats = predictor.metadata.normalization
    x, _ = load_split(root / "data", "test")
    scale, shift = np.asarray(stats.scale, np.float32), np.asarray(stats.shift, np.float32)
    raw = (x[:12] * scale + shift).astype(np.float32)
    expected = predictor.predict_raw(raw)
    client = ensemble_server.client(concurrency=12)
    pending = []
    for row in raw:  # one row per request, sent at once: the server batches them
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(row[None], binary_data=True)
        pending.append(client.async_infer("ensemble", [tensor]))
    answers = np.concatenate([p.get_result(timeout=60).as_numpy("probabilities") for p in pending])
    np.testing.assert_allclose(answers, expected, atol=1e-5)
    assert client.get_model_metadata("ensemble")["outputs"][0]["name"] == "probabilities"


# --- the predictor's choice ----------------------------------------------------------------------


def test_predictor_rebuilds_when_it_can_and_runs_the_program_otherwise(tmp_path: Path) -> None:
    """The eager module is faster per call (benchmarks/RESULTS.md) and int8 needs it; the program serves
    what no code here can rebuild."""
    data = make_data_dir(tmp_path)
    model_dir = make_model_dir(tmp_path / "model", data, steps=30)
    card = artifacts.read_card(model_dir)
    module = build_model(card.config.model, card.dataset)
    module.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, weights_only=True))
    export_model(module, torch.zeros(2, 64), model_dir)
    rebuilt = load_predictor(model_dir)
    assert not isinstance(rebuilt.module, ExportedGraph)  # type: ignore[attr-defined]
    quantized = load_predictor(model_dir, quantization="int8")
    assert "DynamicQuantizedLinear" in repr(quantized.module)  # type: ignore[attr-defined]
    (model_dir / WEIGHTS_FILE).unlink()
    exported = load_predictor(model_dir)
    assert isinstance(exported.module, ExportedGraph)  # type: ignore[attr-defined]
    x, _ = load_split(data, "test")
    np.testing.assert_allclose(exported.predict(x), rebuilt.predict(x), atol=1e-6)


def test_a_user_loops_own_network_is_served_from_its_program(tmp_path: Path) -> None:
    """A card of a user loop without model.entrypoint describes no network Conveyor could build."""
    data = make_data_dir(tmp_path)
    model_dir = make_model_dir(tmp_path / "model", data, steps=5)
    card = artifacts.read_card(model_dir)
    module = build_model(card.config.model, card.dataset)
    module.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, weights_only=True))
    wire = card.config.to_wire()
    wire["training"]["entrypoint"] = "mypkg.loop:train"
    user_card = card.model_copy(update={"config": TrainerConfig.model_validate(wire)})
    artifacts.write_card(model_dir, user_card)
    with pytest.raises(ValueError, match=r"cannot be rebuilt here"):
        load_predictor(model_dir)
    export_model(module, torch.zeros(2, 64), model_dir)
    assert isinstance(load_predictor(model_dir).module, ExportedGraph)  # type: ignore[attr-defined]


def test_a_directory_without_weights_or_program_says_so(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    model_dir = make_model_dir(tmp_path / "model", data, steps=5)
    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"neither model\.pt2 nor weights\.pt"):
        load_predictor(model_dir)
