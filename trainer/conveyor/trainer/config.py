"""The workload's configuration: what a stage of the pipeline is asked to do.

These pydantic models carry exactly the field names and meanings of the `TrainingPipeline` manifest
(`spec.task`, `spec.data`, `spec.model`, ...), camelCase on the wire. The control plane composes them
into the full resource; the data plane receives the subset it needs as JSON. They import without torch
so that the operator (which has no torch) validates with the very same code the workload runs.

Defaults are chosen so that a minimal spec trains well: an MLP (256 wide, 2 layers, dropout 0.2) with
AdamW at 2e-3 on standardised features reaches ~98% test accuracy on builtin://digits in ~15 epochs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

TaskType = Literal["classification", "regression"]
Goal = Literal["maximize", "minimize"]
Architecture = Literal["mlp", "cnn", "resnet", "lstm", "transformer"]
OptimizerName = Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"]
ScheduleName = Literal["constant", "step", "cosine", "onecycle"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Normalization = Literal["standard", "minmax", "none"]
EnsembleMethod = Literal["softVoting", "hardVoting", "weightedAverage"]
Quantization = Literal["none", "int8"]

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "rocAuc", "logLoss")
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
# Metrics where smaller is better; everything else is maximised.
LOWER_IS_BETTER = frozenset({"loss", "logLoss", "mse", "rmse", "mae"})
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast-cancer", "diabetes", "synthetic")

# The exit status of a stage whose config or data is invalid (ConfigError, DataError; argparse's usage
# errors exit with it too): retrying cannot help, so executors fail the workload at once.
EXIT_INVALID_INPUT = 2

# `pvc://CLAIM[/PATH]`: a PersistentVolumeClaim, as a data source (mounted read-only at
# $CONVEYOR_PVC_ROOT/CLAIM in the pod that reads it) or as the artifact root (spec.storage.uri).
PVC_SCHEME = "pvc://"
PVC_URI_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?$"
PVC_ROOT_ENV = "CONVEYOR_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
# A Secret's name (DNS-1123 subdomain).
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# User code is named "package.module:function" (importable from spec.code or the image).
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def entrypoint_field(what: str) -> Any:
    return Field(default=None, max_length=256, pattern=ENTRYPOINT_PATTERN, description=what)


def split_pvc(uri: str) -> tuple[str, str]:
    """`pvc://CLAIM/PATH` -> (CLAIM, PATH); PATH has no leading or trailing slash."""
    claim, _, path = uri.removeprefix(PVC_SCHEME).partition("/")
    return claim, path.strip("/")


def metrics_for(task: TaskType) -> tuple[str, ...]:
    """Every metric the evaluation computes for a task; `loss` (validation loss) is always there too."""
    return ("loss", *(CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS))


def goal_for(metric: str) -> Goal:
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


class Spec(BaseModel):
    """Base of every manifest section: camelCase on the wire, unknown fields rejected (typos fail loudly)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, JSON-compatible values."""
        return self.model_dump(mode="json", by_alias=True)


PositiveFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


# --- task -------------------------------------------------------------------------------------


class ObjectiveSpec(Spec):
    """What tuning optimises and how the best trial and the ensemble members are chosen."""

    metric: str | None = Field(
        default=None,
        description="A metric computed on the validation split (accuracy, f1, rmse, loss, ...). "
        "Defaults to accuracy for classification and rmse for regression.",
    )
    goal: Goal | None = Field(default=None, description="maximize or minimize; defaults from the metric.")


class TaskSpec(Spec):
    type: TaskType = Field(default="classification", description="classification or regression.")
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)

    @model_validator(mode="after")
    def _resolve_objective(self) -> TaskSpec:
        allowed = metrics_for(self.type)
        metric = self.objective.metric or ("accuracy" if self.type == "classification" else "rmse")
        if metric not in allowed:
            raise ValueError(
                f"objective.metric {metric!r} is not computed for a {self.type} task; "
                f"use one of: {', '.join(allowed)}"
            )
        self.objective.metric = metric
        self.objective.goal = self.objective.goal or goal_for(metric)
        return self

    @property
    def metric(self) -> str:
        assert self.objective.metric is not None
        return self.objective.metric

    @property
    def maximize(self) -> bool:
        return self.objective.goal == "maximize"


# --- data -------------------------------------------------------------------------------------


class SplitSpec(Spec):
    validation: PositiveFraction = Field(default=0.15, description="Fraction held out for validation.")
    test: PositiveFraction = Field(default=0.15, description="Fraction held out for the final evaluation.")
    seed: int = Field(default=42, description="Seed of the split; every stage sees the same split.")
    stratify: bool = Field(default=True, description="Keep class proportions in every split.")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError(
                f"validation ({self.validation}) + test ({self.test}) leave almost nothing to train on; "
                "keep their sum below 0.9"
            )
        return self


class PreprocessingSpec(Spec):
    normalize: Normalization = Field(
        default="standard", description="standard, minmax or none; statistics come from the train split only."
    )


class AugmentationSpec(Spec):
    random_shift: int = Field(default=0, ge=0, le=8, description="Max pixels an image is shifted (images).")
    gaussian_noise: float = Field(default=0.0, ge=0.0, description="Std of noise added to training inputs.")


class SyntheticSpec(Spec):
    """Shape of `builtin://synthetic`, generated deterministically for tests and benchmarks."""

    kind: Literal["classification", "regression", "image"] = "classification"
    samples: int = Field(default=2000, ge=20)
    features: int = Field(default=20, ge=1)
    classes: int = Field(default=3, ge=2)
    image_size: int = Field(default=8, ge=4, le=256)
    noise: float = Field(default=0.1, ge=0.0)


class DataSpec(Spec):
    source: str = Field(
        default="builtin://digits",
        description="builtin://{digits,iris,wine,breast-cancer,diabetes,synthetic}, a path, file://, "
        "pvc://NAME/PATH, s3://, gs:// or http(s):// to a CSV or Parquet file "
        "or a class-per-folder image tree. pvc://: on Kubernetes the prepare pod mounts claim NAME "
        "read-only; `conveyor run` reads $CONVEYOR_PVC_ROOT/NAME/PATH (default /mnt/pvc). s3://, gs:// "
        "and other fsspec protocols need their package (s3fs, gcsfs, ...) in the trainer image.",
    )
    target: str = Field(
        default="label", description="Label column of tabular files (ignored for builtin sets)."
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    image_size: int | None = Field(
        default=None, ge=4, le=512, description="Side that folder images are resized to (default: 32)."
    )
    entrypoint: str | None = entrypoint_field(
        'Your dataset: "package.module:function", called as function(split) for split train, validation '
        "and test, returning a torch Dataset or IterableDataset of (features, target) pairs; replaces "
        "source, target, split and preprocessing."
    )
    input_shape: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="data.entrypoint: the shape of one sample's features (no batch dimension); "
        "default: read from the first training sample.",
    )
    classes: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=100000,
        description="data.entrypoint, classification: the class names, index = label; default: the "
        "dataset's `classes` attribute, else the labels seen in the training split.",
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="Kubernetes only: a Secret of the pipeline's namespace whose keys become the "
        "environment of the prepare pod, the one pod that reads data.source (e.g. AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY for s3://). `conveyor run` uses its own environment instead.",
    )

    @model_validator(mode="after")
    def _known_builtin(self) -> DataSpec:
        if self.source.startswith("builtin://"):
            name = self.source.removeprefix("builtin://")
            if name not in BUILTIN_DATASETS:
                raise ValueError(
                    f"source {self.source!r} is not a builtin dataset; "
                    f"use one of: {', '.join('builtin://' + n for n in BUILTIN_DATASETS)}"
                )
        elif not self.source.strip():
            raise ValueError("source is empty; give builtin://digits, a path or a URI")
        elif self.source.startswith(PVC_SCHEME) and not re.match(PVC_URI_PATTERN, self.source):
            raise ValueError(
                f"source {self.source!r} names no valid claim; write pvc://CLAIM-NAME/path/in/volume "
                "(a claim name is lower case letters, digits, '-' and '.')"
            )
        return self


# --- model and optimisation -------------------------------------------------------------------


class ModelSpec(Spec):
    entrypoint: str | None = entrypoint_field(
        'Your model: "package.module:function", called as function(options, info) and returning a '
        "torch.nn.Module trained by Conveyor's loop; info has task, input_shape, num_outputs and classes. "
        "Replaces architecture and its sizes."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form options passed to model.entrypoint (tunable as model.options.<key>).",
    )
    architecture: Architecture = Field(default="mlp", description="mlp, cnn, resnet, lstm or transformer.")
    hidden_size: int = Field(default=256, ge=1, le=8192, description="Width of hidden layers / channels.")
    layers: int = Field(default=2, ge=1, le=64, description="Depth: hidden layers, blocks or encoder layers.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    heads: int = Field(default=4, ge=1, le=64, description="Attention heads (transformer).")
    pooling: Literal["cls", "mean"] = Field(
        default="cls", description="Transformer pooling: the CLS token or the mean over tokens."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSpec:
        if self.options and self.entrypoint is None:
            raise ValueError("options are passed only to model.entrypoint; set entrypoint or drop options")
        if self.entrypoint is None and self.architecture == "transformer" and self.hidden_size % self.heads:
            raise ValueError(
                f"hiddenSize ({self.hidden_size}) must be divisible by heads ({self.heads}) for a transformer"
            )
        return self


class ScheduleSpec(Spec):
    name: ScheduleName = Field(default="constant", description="constant, step, cosine or onecycle.")
    warmup_epochs: int = Field(default=0, ge=0, description="Linear warm-up before the schedule.")
    step_size: int = Field(default=10, ge=1, description="Epochs between decays (step).")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="Decay factor (step).")


class OptimizerSpec(Spec):
    name: OptimizerName = Field(default="adamw", description="sgd, adam, adamw, adagrad or rmsprop.")
    learning_rate: float = Field(default=2e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd and rmsprop.")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class EarlyStoppingSpec(Spec):
    patience: int = Field(default=5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as improvement.")


class TrainingSpec(Spec):
    epochs: int = Field(default=20, ge=1, le=100000)
    batch_size: int = Field(default=64, ge=1, le=65536, description="Per-process batch size.")
    early_stopping: EarlyStoppingSpec | None = Field(default_factory=EarlyStoppingSpec)
    precision: Precision = Field(
        default="auto", description="auto (bf16 on capable GPUs, fp32 on CPU), fp32, bf16 or fp16."
    )
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    gradient_clipping: float | None = Field(default=None, gt=0.0, description="Max gradient norm.")
    compile: bool = Field(default=False, description="torch.compile the model.")
    seed: int = Field(default=0)
    entrypoint: str | None = entrypoint_field(
        'Your training loop: "package.module:function", run on every rank under torchrun (process group '
        "initialised when distributed) and called as function(config) with the trial's configuration in "
        "manifest form; it reports through conveyor.sdk."
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Your program, run under torchrun as a whole on every worker (e.g. [python, train.py, "
        '--lr, "{{params.optimizer.learningRate}}"]): {{params.<dotted name>}} is replaced, shell-quoted, '
        "by the trial's value; it reports through conveyor.sdk.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="training.entrypoint or command: the steps a run trains at most, as its reports count "
        "them; the pruners' maximum resource and the progress bar's end.",
    )

    @model_validator(mode="after")
    def _one_loop(self) -> TrainingSpec:
        if self.entrypoint is not None and self.command is not None:
            raise ValueError(
                "give training.entrypoint (a function) or training.command (a program), not both"
            )
        if self.command is not None and not all(part.strip() for part in self.command):
            raise ValueError("training.command has an empty argument; remove it")
        return self

    @property
    def user_loop(self) -> bool:
        """The training loop is the user's (entrypoint or command), not Conveyor's."""
        return self.entrypoint is not None or self.command is not None


# --- evaluation, ensemble, serving ------------------------------------------------------------


class GateSpec(Spec):
    """The promotion gate: the model is served only if the test metric clears these bounds."""

    metric: str = Field(default="accuracy", description="A metric the evaluation computes.")
    min: float | None = Field(default=None, description="Serve only if metric >= min.")
    max: float | None = Field(default=None, description="Serve only if metric <= max.")

    @model_validator(mode="after")
    def _has_bound(self) -> GateSpec:
        if self.min is None and self.max is None:
            raise ValueError("gate needs min or max (e.g. {metric: accuracy, min: 0.95})")
        return self

    def passes(self, value: float) -> bool:
        return gate_passes(self, value)


class GateBounds(Protocol):
    """A gate as the spec (`GateSpec`) and the pipeline's status (`GateStatus`) both carry it."""

    metric: str
    min: float | None
    max: float | None


def gate_passes(gate: GateBounds, value: float) -> bool:
    return (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)


def gate_message(gate: GateBounds, value: float | None, subject: str) -> str:
    """The gate's verdict in words, e.g. `model test accuracy 0.9731 passes the gate (accuracy >= 0.95)`;
    `subject` says whose value it is. Torch-free and typed on `GateBounds`, so the trainer's report and
    the operator's status, events and summaries can all say it the same way."""
    bounds = " and ".join(
        f"{op} {bound}" for op, bound in ((">=", gate.min), ("<=", gate.max)) if bound is not None
    )
    rule = f"the gate ({gate.metric} {bounds})"
    if value is None:
        return f"{subject} {gate.metric} was not computed, so it fails {rule}"
    verdict = "passes" if gate_passes(gate, value) else "fails"
    return f"{subject} {gate.metric} {value:.4f} {verdict} {rule}"


class EvaluationSpec(Spec):
    metrics: list[str] | None = Field(
        default=None, description="Metrics to report; default: all for the task."
    )
    gate: GateSpec | None = None


class EnsembleSpec(Spec):
    top_k: int = Field(default=3, ge=1, le=50, description="How many of the best trials to combine.")
    method: EnsembleMethod = Field(
        default="softVoting", description="softVoting, hardVoting or weightedAverage."
    )


class AutoscalingSpec(Spec):
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=4, ge=1)
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)


class ServingSpec(Spec):
    replicas: int = Field(default=1, ge=0, le=1000)
    quantization: Quantization = Field(default="none", description="none or int8 (dynamic, CPU).")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Dynamic batching: largest batch.")
    max_latency_ms: float = Field(default=2.0, ge=0.0, le=10000.0, description="Dynamic batching: max wait.")
    port: int = Field(default=8080, ge=1, le=65535)
    autoscaling: AutoscalingSpec | None = None


# --- what a training workload receives ---------------------------------------------------------


class TrainerConfig(Spec):
    """The whole input of `conveyor.trainer train` (and what a trial overrides, by dotted name)."""

    task: TaskSpec = Field(default_factory=TaskSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> TrainerConfig:
        allowed = metrics_for(self.task.type)
        for name in self.evaluation.metrics or ():
            if name not in allowed:
                raise ValueError(
                    f"evaluation.metrics: {name!r} is not computed for a {self.task.type} task; "
                    f"use any of: {', '.join(allowed)}"
                )
        gate = self.evaluation.gate
        if gate is not None and gate.metric not in allowed:
            raise ValueError(
                f"evaluation.gate.metric {gate.metric!r} is not computed for a {self.task.type} task; "
                f"use one of: {', '.join(allowed)}"
            )
        return self


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree["a"]["b"]` for "a.b", creating sections; the manifest's camelCase names are used."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted!r}: {key!r} is not a section")
    node[leaf] = value


def with_overrides(config: TrainerConfig, overrides: dict[str, Any]) -> TrainerConfig:
    """A copy of `config` with trial parameters (dotted manifest names) applied and re-validated."""
    tree = config.to_wire()
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    return TrainerConfig.model_validate(tree)


# --- reading a config from the command line ---------------------------------------------------


class ConfigError(ValueError):
    """The config could not be read or is invalid; the message names the field and the fix."""


def explain(error: Any) -> str:
    """A pydantic ValidationError as one line: `field.path: message; ...` (camelCase field names)."""
    parts = []
    for item in error.errors():
        path = ".".join(str(p) for p in item.get("loc", ())) or "config"
        parts.append(f"{path}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def load_config(value: str) -> TrainerConfig:
    """A TrainerConfig from inline JSON (starting with `{`) or a JSON/YAML file path."""
    import json

    from pydantic import ValidationError

    text = value
    if not value.lstrip().startswith("{"):
        from pathlib import Path

        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--config {value!r} is neither inline JSON nor an existing file")
        text = path.read_text()
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as json_error:
        import yaml

        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"config is not valid JSON: {json_error}") from json_error
    if not isinstance(tree, dict):
        raise ConfigError("config must be a JSON object with task, data, model, optimizer, training sections")
    try:
        return TrainerConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"invalid config: {explain(error)}") from error
