"""Tiny real models for the evaluation, ensemble, predictor and serving tests.

Writes a prepared data directory and trained model directories exactly per the artifact layout
(`conveyor.trainer.artifacts`), training small networks directly with torch (full-batch Adam, a second
or so each) so these tests do not depend on the training loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits

from conveyor.trainer import artifacts, metrics, progress
from conveyor.trainer.artifacts import DatasetMetadata, ModelCard, NormalizationStats
from conveyor.trainer.config import ModelSpec, TrainerConfig
from conveyor.trainer.models import build_model

# Tiny full-batch steps: one thread is many times faster than two on a busy 2-core machine.
torch.set_num_threads(1)


def make_data_dir(root: Path, dataset: str = "digits") -> Path:
    """A prepared split of digits (classification, 64 features) or diabetes (regression, 10 features)."""
    loader = load_digits if dataset == "digits" else load_diabetes
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    cut1, cut2 = int(0.7 * len(x)), int(0.85 * len(x))
    parts = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}
    shift = x[parts["train"]].mean(axis=0)
    scale = x[parts["train"]].std(axis=0)
    scale[scale == 0] = 1.0
    data_dir = root / artifacts.DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    classification = dataset == "digits"
    for split, index in parts.items():
        labels = y[index].astype(np.int64 if classification else np.float32)
        np.savez(data_dir / f"{split}.npz", x=((x[index] - shift) / scale).astype(np.float32), y=labels)
    meta = DatasetMetadata(
        task="classification" if classification else "regression",
        source=f"builtin://{dataset}",
        feature_shape=[x.shape[1]],
        classes=[str(c) for c in range(10)] if classification else [],
        sizes={split: len(index) for split, index in parts.items()},
        normalization=NormalizationStats(method="standard", shift=shift.tolist(), scale=scale.tolist()),
    )
    artifacts.write_json_atomic(data_dir / artifacts.METADATA_FILE, meta.model_dump(mode="json"))
    return data_dir


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir / f"{split}.npz") as arrays:
        return arrays["x"], arrays["y"]


def make_model_dir(
    model_dir: Path, data_dir: Path, hidden: int = 32, steps: int = 60, seed: int = 0, lr: float = 0.01
) -> Path:
    """Train an MLP for `steps` full-batch steps and write weights, card and per-epoch progress."""
    meta = artifacts.read_metadata(data_dir)
    config = TrainerConfig.model_validate(
        {
            "task": {"type": meta.task},
            "model": {"architecture": "mlp", "hiddenSize": hidden, "layers": 1, "dropout": 0.0},
        }
    )
    torch.manual_seed(seed)
    model = build_model(ModelSpec.model_validate(config.model.to_wire()), meta)
    x, y = (torch.from_numpy(a) for a in load_split(data_dir, "train"))
    xv, yv = load_split(data_dir, "validation")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    classification = meta.task == "classification"
    loss_fn = torch.nn.CrossEntropyLoss() if classification else torch.nn.MSELoss()
    target = y if classification else (y - y.mean()) / y.std()
    epochs = 5
    val_metrics: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        for _ in range(steps // epochs):
            optimizer.zero_grad()
            out = model(x)
            loss = loss_fn(out, target) if classification else loss_fn(out.squeeze(1), target)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = model(torch.from_numpy(xv))
        output = torch.softmax(out, 1).numpy() if classification else out.squeeze(1).numpy()
        if not classification:
            output = output * float(y.std()) + float(y.mean())
        val_metrics = metrics.compute_metrics(meta.task, yv, output)
        logged = {**val_metrics, "loss": 1.0 / epoch, "trainLoss": loss.item()}
        event = progress.epoch_event(epoch, epochs, logged, 1000.0, float(epoch))
        model_dir.mkdir(parents=True, exist_ok=True)
        with (model_dir / artifacts.PROGRESS_FILE).open("a") as handle:
            handle.write(json.dumps(event) + "\n")
    if not classification:
        # Fold the target standardisation into the last layer so the model predicts raw targets.
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(float(y.std()))
            last.bias.mul_(float(y.std())).add_(float(y.mean()))
    torch.save(model.state_dict(), model_dir / artifacts.WEIGHTS_FILE)
    card = ModelCard(name=model_dir.name, config=config, dataset=meta, metrics=val_metrics)
    artifacts.write_card(model_dir, card)
    return model_dir
