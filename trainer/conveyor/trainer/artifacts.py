"""Where each stage puts its output: the artifact layout every later stage (and serving) reads.

A run's artifacts live under one root (`./runs/<name>/` locally, the `storage.uri` volume on
Kubernetes). The layout is a contract between stages that may run in different pods, so it is
written down here once and nowhere else::

    <root>/
      data/                      prepare: the fixed split, written once
        train.npz  validation.npz  test.npz     arrays `x` (float32) and `y` (int64 classes | float32)
        (or, for sources larger than memory: train.parquet validation.parquet test.parquet, rows as
        read plus the statistics to normalise them; see conveyor.trainer.data.streaming)
        metadata.json            DatasetMetadata: task, feature shape, classes, sizes, normalisation stats
      trials/<trial-id>/         one model directory per tuning trial
      model/                     the final training run
      ensemble/                  the ensemble, itself a servable model directory
      evaluation/<model>/        report.json + PNG plots for `model` or `ensemble`

    a model directory:
      model.json                 ModelCard: kind (single | ensemble), the TrainerConfig, DatasetMetadata,
                                 validation metrics, member list and weights for an ensemble
      weights.pt                 state_dict of the model (single models)
      model.pt2                  the network as a torch.export program, dynamic batch (when exportable)
      progress.jsonl             one JSON event per epoch (see conveyor.trainer.progress)
      result.json                the final result (see conveyor.trainer.progress)
      checkpoints/               latest.pt (atomic; resume point), written every epoch

This module is pure path arithmetic and JSON shapes; it imports neither torch nor numpy.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor.trainer.config import TaskType, TrainerConfig

DATA_DIR = "data"
MODEL_DIR = "model"
TRIALS_DIR = "trials"
ENSEMBLE_DIR = "ensemble"
EVALUATION_DIR = "evaluation"

METADATA_FILE = "metadata.json"
SPLITS = ("train", "validation", "test")
CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
EXPORT_FILE = "model.pt2"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"
REPORT_FILE = "report.json"

TRIAL_PREFIX = "trial-"  # tuning trials are the workloads trial-0000, trial-0001, ...
# Where each of the other workloads writes (the control plane's workload names).
WORKLOAD_DIRS = {
    "prepare": DATA_DIR,
    "train": MODEL_DIR,
    "evaluate-model": f"{EVALUATION_DIR}/{MODEL_DIR}",
    "ensemble": ENSEMBLE_DIR,
    "evaluate-ensemble": f"{EVALUATION_DIR}/{ENSEMBLE_DIR}",
}


class NormalizationStats(BaseModel):
    """Statistics from the train split, applied again at serving time to raw inputs.

    One value per feature for tabular data, one per channel for images: x' = (x - shift) / scale.
    """

    method: Literal["standard", "minmax", "none"] = "none"
    shift: list[float] = Field(default_factory=list, description="subtracted (mean or min)")
    scale: list[float] = Field(default_factory=list, description="divided by (std or max-min)")


class DatasetMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskType
    source: str
    feature_shape: list[int] = Field(description="shape of one input: [features] or [channels, h, w]")
    input_kind: Literal["tabular", "image"] = "tabular"
    classes: list[str] = Field(default_factory=list, description="class names; index = encoded label")
    feature_names: list[str] = Field(default_factory=list)
    sizes: dict[str, int] = Field(default_factory=dict, description="rows per split")
    normalization: NormalizationStats = Field(default_factory=NormalizationStats)
    target_normalization: NormalizationStats = Field(
        default_factory=NormalizationStats,
        description="regression: train-split mean/std of the target. Models learn the standardised target "
        "and undo it in their output layer, so predictions are in target units.",
    )
    storage: Literal["npz", "parquet"] = Field(
        default="npz",
        description="npz: normalised arrays, loaded whole; parquet: a source larger than memory, streamed "
        "and normalised a batch at a time (conveyor.trainer.data.streaming)",
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def output_size(self) -> int:
        return len(self.classes) if self.task == "classification" else 1


class ModelCard(BaseModel):
    """Everything needed to rebuild, evaluate and serve a model directory without the manifest."""

    kind: Literal["single", "ensemble"] = "single"
    name: str = "model"
    config: TrainerConfig
    dataset: DatasetMetadata
    metrics: dict[str, float] = Field(
        default_factory=dict, description="validation metrics of the best epoch"
    )
    members: list[str] = Field(default_factory=list, description="ensemble: member model directories")
    weights: list[float] = Field(default_factory=list, description="ensemble: member weights")
    method: str | None = Field(
        default=None, description="ensemble: softVoting | hardVoting | weightedAverage"
    )


def workload_dir(name: str) -> str:
    """The output directory of workload `name` relative to the root, from its name alone: an executor
    finds what a workload wrote even if it did not start it (an interrupted `conveyor run`)."""
    if name.startswith(TRIAL_PREFIX):
        return f"{TRIALS_DIR}/{name}"
    return WORKLOAD_DIRS[name]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(data_dir: Path) -> DatasetMetadata:
    return DatasetMetadata.model_validate_json((data_dir / METADATA_FILE).read_text())


def read_card(model_dir: Path) -> ModelCard:
    return ModelCard.model_validate_json((model_dir / CARD_FILE).read_text())


def write_card(model_dir: Path, card: ModelCard) -> None:
    write_json_atomic(model_dir / CARD_FILE, card.model_dump(mode="json", by_alias=True))
