"""Preflight: the user's code tried once, before any trial runs, so that a mistake costs seconds and
says how to fix it, instead of failing every trial of a study the same way.

`check(config)` runs at the start of the `prepare` workload (the first workload of every pipeline, so
on a cluster it runs in the pipeline's own image, with its code) and from `conveyor validate`. It
raises a `ConfigError` naming the field and the fix for:

- an entrypoint that does not import or cannot take Conveyor's arguments (`conveyor.trainer.usercode`:
  a missing module, a typo'd function with "did you mean", a wrong signature): `model.entrypoint`
  (options, info), `data.entrypoint` (split), `training.entrypoint` (config);
- a dataset (`data.entrypoint`) that is not a torch Dataset, whose first training sample is not a
  (features, target) pair, whose features do not have the shape `data.inputShape` gives, or whose
  target does not fit the task (an int class index below the number of classes, or a number);
- a model (`model.entrypoint`) that is not an nn.Module, whose forward pass on a batch of 2 fails, or
  whose output does not fit the task: [2, classes] logits, or [2] / [2, 1] values for a regression.

The model is checked against the data it will train on: the user's dataset's metadata, a built-in
set's (read here: they are small and local), or, for other sources, the prepared metadata (`meta`,
given by `prepare` once the data is prepared).
"""

from __future__ import annotations

from typing import Any

import torch

from conveyor.trainer import usercode
from conveyor.trainer.artifacts import DatasetMetadata
from conveyor.trainer.config import ConfigError, TrainerConfig

BATCH = 2


def check(config: TrainerConfig, meta: DatasetMetadata | None = None) -> None:
    """Raise a ConfigError (field + fix) if the user's code cannot run as configured; `meta` is the
    prepared dataset's metadata when there is one."""
    if config.training.entrypoint:
        usercode.entrypoint(config.training.entrypoint, "training.entrypoint", ("config",))
    if config.model.entrypoint:
        usercode.entrypoint(config.model.entrypoint, "model.entrypoint", ("options", "info"))
    sample: torch.Tensor | None = None
    if config.data.entrypoint:
        meta, sample = check_dataset(config)
    if config.model.entrypoint:
        meta = meta or builtin_metadata(config)
        if meta is not None:
            check_model(config, meta, sample)


def check_dataset(config: TrainerConfig) -> tuple[DatasetMetadata, torch.Tensor]:
    """The user's dataset's metadata and its first training sample's features, once that sample is
    known to fit `data.inputShape` and the task."""
    from conveyor.trainer.data import datasets

    train = datasets.load(config, "train")
    x, target = datasets.unpack(datasets.first_sample(train))
    expected = config.data.input_shape
    if expected is not None and list(x.shape) != list(expected):
        raise ConfigError(
            f"data.entrypoint: the first training sample's features have shape {list(x.shape)}, but "
            f"data.inputShape is {list(expected)}; yield features of that shape (no batch dimension) "
            "or correct data.inputShape"
        )
    value = datasets.target_value(target, config.task.type)
    known = config.data.classes or getattr(train, "classes", None)
    if config.task.type == "classification" and known is not None and int(value) >= len(known):
        raise ConfigError(
            f"data.entrypoint: the first training sample's target is {value}, but there are only "
            f"{len(known)} classes ({', '.join(map(str, list(known)[:10]))}); targets are class indices "
            "0..classes-1: fix the labels or list every class in data.classes"
        )
    return datasets.describe(config, train), x


def builtin_metadata(config: TrainerConfig) -> DatasetMetadata | None:
    """Shape and classes of a `builtin://` set, read without preparing it; None for other sources."""
    if not config.data.source.startswith("builtin://"):
        return None
    from conveyor.trainer.data.prepare import encode_labels
    from conveyor.trainer.data.sources import load_source

    raw = load_source(config.data, config.task.type)
    _, classes = encode_labels(raw, config.task.type)
    return DatasetMetadata(
        task=config.task.type,
        source=config.data.source,
        feature_shape=list(raw.x.shape[1:]),
        input_kind=raw.input_kind,
        classes=classes,
    )


def check_model(config: TrainerConfig, meta: DatasetMetadata, sample: torch.Tensor | None = None) -> None:
    """Build the model for `meta` and run a batch of 2 (the sample twice, else random inputs) through it."""
    from conveyor.trainer.models import build_model

    reference = config.model.entrypoint
    try:
        model = build_model(config.model, meta)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"model.entrypoint: {reference} raised while building the model:\n{usercode.last_lines(error)}"
        ) from error
    shape = [BATCH, *meta.feature_shape]
    if sample is not None and list(sample.shape) == list(meta.feature_shape):
        batch = sample.unsqueeze(0).expand(shape).contiguous()
    else:
        batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            output: Any = model.eval()(batch)
    except Exception as error:
        raise ConfigError(
            f"model.entrypoint: the model's forward pass on a batch shaped {shape} (float32) failed; "
            f"it must take [batch, *info.input_shape]:\n{usercode.last_lines(error)}"
        ) from error
    if not isinstance(output, torch.Tensor):
        raise ConfigError(
            f"model.entrypoint: the model returned {type(output).__name__} for a batch of {BATCH}; "
            "return one tensor (logits for classification, values for regression)"
        )
    got = list(output.shape)
    if meta.task == "classification":
        if got != [BATCH, meta.num_classes]:
            raise ConfigError(
                f"model.entrypoint: for {meta.num_classes} classes the model must return logits shaped "
                f"[{BATCH}, {meta.num_classes}] for a batch of {BATCH}, but returned {got}; size its last "
                "layer with info.num_outputs"
            )
    elif got not in ([BATCH], [BATCH, 1]):
        raise ConfigError(
            f"model.entrypoint: a regression model must return one value per sample, shaped [{BATCH}] "
            f"or [{BATCH}, 1] for a batch of {BATCH}, but returned {got}; end it with a layer of "
            "info.num_outputs (1) outputs"
        )
