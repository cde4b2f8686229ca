"""`TrainingPipeline.spec`: what the user asks for, in the manifest's own names.

The training sections (task, data, model, optimizer, training, evaluation, ensemble, serving) are the
trainer's own config models, reused as they are, so the operator validates with exactly the code the
workload runs. This module adds what only the control plane needs: resources and the distributed shape,
the tuning study, storage, scheduling pass-through (Kueue, priority, placement) and lifecycle knobs
(suspend, deadline, TTL, retries). Cross-field rules live in `rules` and are enforced here and, through
the generated CRD, by the API server, with the same messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from conveyor.operator.api import MAX_TRIALS, rules
from conveyor.trainer.config import (
    SECRET_NAME_PATTERN,
    DataSpec,
    EnsembleSpec,
    EvaluationSpec,
    ModelSpec,
    OptimizerSpec,
    ServingSpec,
    Spec,
    TaskSpec,
    TrainerConfig,
    TrainingSpec,
    with_overrides,
)

Algorithm = Literal["random", "grid", "tpe", "cmaes"]
Pruner = Literal["none", "median", "asha", "hyperband"]
ParameterType = Literal["float", "int", "categorical"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]

MAX_PARAMETERS = 32
MAX_VALUES = 64
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


class ResourcesSpec(Spec):
    """The shape of every distributed job (trials and the final training) and what each worker gets."""

    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.RESOURCES_RULES))

    workers: int = Field(
        default=1, ge=1, le=256, description="Workers (pods) of one distributed job: torchrun --nnodes."
    )
    processes_per_worker: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Training processes per worker: torchrun --nproc-per-node; equals gpu when gpu > 0.",
    )
    gpu: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per worker.")
    cpu: str = Field(
        default="1", pattern=QUANTITY, max_length=32, description="CPU per worker (a Kubernetes quantity)."
    )
    memory: str = Field(
        default="2Gi", pattern=QUANTITY, max_length=32, description="Memory per worker (a quantity)."
    )

    @model_validator(mode="after")
    def _rules(self) -> ResourcesSpec:
        return rules.enforce(self, rules.RESOURCES_RULES)

    @property
    def world_size(self) -> int:
        return self.workers * self.processes_per_worker


class TuningParameter(Spec):
    """One dimension of the search space. `name` is the dotted manifest name the trial overrides."""

    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.PARAMETER_RULES))

    name: str = Field(
        max_length=128,
        description="Dotted manifest name of the value a trial sets, e.g. optimizer.learningRate.",
    )
    type: ParameterType = Field(description="float, int or categorical.")
    min: float | None = Field(default=None, description="Lower bound (float, int).")
    max: float | None = Field(default=None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(default=False, description="Sample on a log scale (float, int; needs min > 0).")
    step: float | None = Field(
        default=None, gt=0.0, description="Grid step (float, int); no step for log scales."
    )
    values: list[str | int | float | bool] | None = Field(
        default=None,
        max_length=MAX_VALUES,
        # The API server refuses an empty list by the schema; Python by the rule (one message).
        json_schema_extra={"minItems": 1},
        description="The choices (categorical).",
    )

    @model_validator(mode="after")
    def _rules(self) -> TuningParameter:
        return rules.enforce(self, rules.PARAMETER_RULES)

    def candidates(self) -> list[Any]:
        """Values whose validity is checked against the training config: the bounds or the choices."""
        if self.type == "categorical":
            return list(self.values or [])
        cast = int if self.type == "int" else float
        return [cast(v) for v in (self.min, self.max) if v is not None]


class TuningSpec(Spec):
    """The hyperparameter study: each trial is a full distributed training job with its own parameters."""

    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.TUNING_RULES))

    algorithm: Algorithm = Field(
        default="tpe", description="Sampler: random, grid (categorical parameters only), tpe or cmaes."
    )
    trials: int = Field(
        default=10, ge=1, le=MAX_TRIALS, description="How many trials the study runs in total."
    )
    parallelism: int = Field(
        default=1, ge=1, le=MAX_TRIALS, description="How many trials run at once (<= trials)."
    )
    pruner: Pruner = Field(
        default="none",
        description="Early stopping of unpromising trials from their per-epoch objective: none, median, "
        "asha (successive halving) or hyperband.",
    )
    warmup_epochs: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Epochs every trial runs before a pruner may stop it (min resource); "
        "default: a tenth of training.epochs, with pruner asha training.epochs / 27 (at least 1), "
        "which leaves ASHA three rungs from 27 epochs on.",
    )
    parameters: list[TuningParameter] = Field(
        min_length=1, max_length=MAX_PARAMETERS, description="The search space."
    )
    max_failed_trials: int = Field(
        default=3, ge=0, le=MAX_TRIALS, description="Failed trials tolerated; one more fails the pipeline."
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Seed of the sampler; same seed, same trials."
    )
    warmup_steps: int | None = Field(
        default=None,
        ge=1,
        description="training.entrypoint or command: steps (as reports count them) every trial runs before "
        "a pruner may stop it; default: a tenth of training.maxSteps, with pruner asha "
        "training.maxSteps / 27 (at least 1).",
    )
    stop_grace_period_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="A pruned trial is told to stop (conveyor.sdk.report returns False); its workers still "
        "running this long after are stopped.",
    )

    @model_validator(mode="after")
    def _rules(self) -> TuningSpec:
        return rules.enforce(self, rules.TUNING_RULES)


class StorageSpec(Spec):
    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.STORAGE_RULES))

    uri: str | None = Field(
        default=None,
        max_length=1024,
        description="Artifact root on Kubernetes: pvc://CLAIM[/PATH], a claim every stage pod mounts "
        "(ReadWriteMany when pods run on several nodes at once: workers > 1, tuning.parallelism > 1); "
        "the pipeline writes under PATH/<name>. Without it the operator provisions the claim "
        "<name>-artifacts (default StorageClass, owned by the pipeline; Event StorageProvisioned). "
        "`conveyor run` ignores it and writes to ./runs/<name> (or --root).",
    )

    @model_validator(mode="after")
    def _rules(self) -> StorageSpec:
        return rules.enforce(self, rules.STORAGE_RULES)


class CodeSpec(Spec):
    """Where the user's code (model, data, training entrypoints or command) comes from."""

    path: str | None = Field(
        default=None,
        max_length=1024,
        description="A directory relative to the manifest: `conveyor run` puts it on sys.path; "
        "`conveyor apply` packs it into the ConfigMap <name>-code and sets configMap.",
    )
    config_map: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="A ConfigMap holding a packed code directory (made by `conveyor apply`), mounted "
        "read-only in every workload pod and put on sys.path.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="The image every pod of the pipeline runs (default: "
        "the operator's trainer image); it must hold Conveyor's trainer (pip install conveyor[trainer]).",
    )


class EnvVar(Spec):
    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.ENV_RULES))

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=32768)

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        return rules.enforce(self, rules.ENV_RULES)


class SchedulingSpec(Spec):
    """Passed through unchanged to every pod the pipeline creates (ignored by `conveyor run`)."""

    image_pull_policy: PullPolicy | None = Field(default=None, description="Always, IfNotPresent or Never.")
    node_selector: dict[str, str] | None = Field(default=None, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] | None = Field(
        default=None, max_length=64, description="Pod tolerations (core/v1 Toleration)."
    )
    affinity: dict[str, Any] | None = Field(default=None, description="Pod affinity (core/v1 Affinity).")
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    scheduler_name: str | None = Field(
        default=None, max_length=253, description="e.g. volcano or a coscheduler."
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        description="Kueue LocalQueue: workloads are created suspended with this queue label.",
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, description="ServiceAccount of workload pods (needs no API access)."
    )
    labels: dict[str, str] | None = Field(default=None, description="Extra labels on every child object.")
    annotations: dict[str, str] | None = Field(default=None, description="Extra annotations on every pod.")


class TrainingPipelineSpec(Spec):
    """The whole pipeline: prepare -> tune (optional) -> train -> evaluate (gate) -> ensemble (optional)
    -> serve (optional, only when the gate passed)."""

    model_config = ConfigDict(json_schema_extra=rules.schema_extra(rules.SPEC_RULES))

    task: TaskSpec = Field(default_factory=TaskSpec, description="Task type and the tuning objective.")
    data: DataSpec = Field(default_factory=DataSpec, description="Dataset source, split and preprocessing.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Architecture and its size.")
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="Optimizer and learning rate schedule."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Epochs, batch size, precision.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Test-split metrics and the gate before serving."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Distributed shape and resources."
    )
    tuning: TuningSpec | None = Field(default=None, description="Hyperparameter study; omit to train once.")
    ensemble: EnsembleSpec | None = Field(default=None, description="Combine the best trials (needs tuning).")
    serving: ServingSpec | None = Field(default=None, description="Serve the result when the gate passed.")
    code: CodeSpec = Field(
        default_factory=CodeSpec, description="Your code: a directory, a ConfigMap, an image."
    )
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where artifacts live.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Pod placement pass-through."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        description="Extra environment of the prepare, training, evaluation and ensemble containers "
        "(not serving); the names Conveyor sets itself are refused.",
    )
    suspend: bool = Field(
        default=False,
        description="Start nothing new and stop running workloads; trials are kept and resume on unsuspend "
        "(Kueue admits by flipping this).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the pipeline (reason DeadlineExceeded) if it runs longer than this.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the finished pipeline (not a serving one) after this many seconds.",
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Retries of a failed prepare/train/evaluate/ensemble workload "
        "(each resumes from its checkpoint); failed trials count against tuning.maxFailedTrials instead.",
    )
    managed_by: str | None = Field(
        default=None,
        max_length=63,
        description="Controller that owns the workloads (e.g. kueue.x-k8s.io/multikueue).",
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainingPipelineSpec:
        rules.enforce(self, rules.SPEC_RULES)
        self._check_parameter_values()
        return self

    def _check_parameter_values(self) -> None:
        """Every bound and choice of the search space must make a valid training config (Python only:
        CEL cannot run the trainer's validators). Raises with the parameter's path."""
        if self.tuning is None:
            return
        base = self.trainer_config()
        for index, parameter in enumerate(self.tuning.parameters):
            for value in parameter.candidates():
                try:
                    with_overrides(base, {parameter.name: value})
                except ValueError as error:
                    detail = [
                        line.strip()
                        for line in str(error).splitlines()
                        if line.strip() and not line.strip().startswith("For further information")
                    ]
                    reason = detail[-1].split(" [type=")[0] if detail else str(error)
                    raise PydanticCustomError(
                        "conveyor_rule",
                        "{message}",
                        {
                            "field": f"tuning.parameters[{index}]",
                            "message": f"value {value!r} is not valid for {parameter.name}: {reason}",
                        },
                    ) from None

    def trainer_config(self, overrides: dict[str, Any] | None = None) -> TrainerConfig:
        """The training workload's config: the manifest's sections, with a trial's overrides applied."""
        config = TrainerConfig(
            task=self.task,
            data=self.data,
            model=self.model,
            optimizer=self.optimizer,
            training=self.training,
            evaluation=self.evaluation,
        )
        return with_overrides(config, overrides) if overrides else config
