"""`TrainingPipeline.status`: everything a user watches and everything the engine needs to resume.

Follows the Kubernetes API conventions: `observedGeneration`, a one-word `phase` for humans and
printer columns, and `conditions` (type, status, reason, message, lastTransitionTime,
observedGeneration) that tools wait on: one per stage (Prepared, Tuned, Trained, Evaluated, GatePassed,
Ensembled, Serving) plus Ready, Succeeded, Failed and Suspended.

State lives here and nowhere else: trials with their parameters, state, per-epoch objective values
(a user loop's per-report values, with the step of each) and final value (plus the few Optuna
attributes that samplers and pruners keep per trial), and every workload with its attempt. The
engine rebuilds its Optuna study from this alone, so an operator restarted at any moment neither
repeats nor loses a trial. Kept compact for 500 trials: a trial is its number, parameters, a list of
per-epoch values and a handful of scalars (about 0.5 KiB).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from conveyor.operator.api import MAX_TRIALS

Phase = Literal[
    "Pending",
    "Preparing",
    "Tuning",
    "Training",
    "Evaluating",
    "Ensembling",
    "Serving",
    "Succeeded",
    "Failed",
    "Suspended",
]
StageName = Literal["prepare", "tune", "train", "evaluate", "ensemble", "serve"]
StageState = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
# Suspended: stopped by spec.suspend; it starts again (next attempt, from its checkpoint) on unsuspend.
TrialState = Literal["Pending", "Running", "Succeeded", "Failed", "Pruned", "Suspended"]
WorkloadState = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ConditionStatus = Literal["True", "False", "Unknown"]

STAGES: tuple[StageName, ...] = ("prepare", "tune", "train", "evaluate", "ensemble", "serve")
# The condition each stage sets when it is done (True) or cannot be (False).
STAGE_CONDITIONS: dict[StageName, str] = {
    "prepare": "Prepared",
    "tune": "Tuned",
    "train": "Trained",
    "evaluate": "Evaluated",
    "ensemble": "Ensembled",
    "serve": "Serving",
}
CONDITION_TYPES = (*STAGE_CONDITIONS.values(), "GatePassed", "Ready", "Succeeded", "Failed", "Suspended")


def rfc3339(moment: datetime) -> str:
    """Kubernetes timestamps: UTC, seconds precision, a trailing Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes or `rfc3339` timestamp (fractions and offsets allowed) as an aware datetime; a
    timestamp without a zone is UTC, as `rfc3339` writes them."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Status(BaseModel):
    """Base of status objects: camelCase on the wire; fields a newer operator wrote are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(Status):
    type: str = Field(
        max_length=64,
        description="Prepared, Tuned, Trained, Evaluated, GatePassed, Ensembled, "
        "Serving, Ready, Succeeded, Failed or Suspended.",
    )
    status: ConditionStatus
    reason: str = Field(
        default="", max_length=128, description="CamelCase reason, e.g. TrialFailedLimitExceeded."
    )
    message: str = Field(default="", max_length=4096)
    last_transition_time: str | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = None


class TrialStatus(Status):
    name: str = Field(description="Workload name, e.g. trial-0007.")
    number: int = Field(ge=0, description="Optuna trial number.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters by dotted manifest name.")
    state: TrialState = "Pending"
    attempt: int = Field(default=0, ge=0, description="Restarts after suspension or loss (not failures).")
    epoch: int | None = Field(default=None, description="Last epoch reported.")
    epochs: int | None = Field(default=None, description="Epochs planned.")
    values: list[float | None] = Field(
        default_factory=list, description="Objective on the validation split per epoch (index 0 = epoch 1)."
    )
    steps: list[int | None] | None = Field(
        default=None,
        description="training.entrypoint or command: the step each value was reported at "
        "(index i = values[i]); what pruners count for a user loop.",
    )
    value: float | None = Field(default=None, description="Final objective value (best epoch).")
    start_time: str | None = None
    completion_time: str | None = Field(default=None, description="When it finished, or was pruned.")
    duration_seconds: float | None = None
    reason: str | None = None
    message: str | None = None
    stopping: bool | None = Field(
        default=None,
        description="Pruned, and its user loop was asked to stop and may still run; its workers are "
        "stopped tuning.stopGracePeriodSeconds after completionTime.",
    )
    attrs: dict[str, Any] | None = Field(
        default=None, description="Sampler/pruner bookkeeping Optuna keeps per trial (rung values, grid id)."
    )


class WorkloadStatus(Status):
    """A non-trial workload: prepare, train, evaluate-model, ensemble, evaluate-ensemble."""

    name: str
    stage: StageName
    state: WorkloadState = "Pending"
    attempt: int = Field(default=0, ge=0, description="0 for the first run; +1 per retry or restart.")
    failures: int = Field(default=0, ge=0, description="Failed attempts so far (against spec.backoffLimit).")
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] | None = Field(default=None, description="Final metrics the workload reported.")
    start_time: str | None = None
    completion_time: str | None = None
    reason: str | None = None
    message: str | None = None


class StageStatus(Status):
    state: StageState = "Pending"
    start_time: str | None = None
    completion_time: str | None = None
    reason: str | None = None
    message: str | None = None


class StagesStatus(Status):
    prepare: StageStatus | None = None
    tune: StageStatus | None = None
    train: StageStatus | None = None
    evaluate: StageStatus | None = None
    ensemble: StageStatus | None = None
    serve: StageStatus | None = None

    def get(self, name: StageName) -> StageStatus | None:
        stage: StageStatus | None = getattr(self, name)
        return stage


class TuningStatus(Status):
    trials: int = Field(default=0, description="Trials the study will run in total.")
    created: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    pruned: int = 0
    sampler_state: dict[str, Any] | None = Field(
        default=None, description="Large sampler state kept once (e.g. the CMA-ES optimizer), keyed by trial."
    )


class BestTrial(Status):
    name: str
    number: int
    value: float
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveStatus(Status):
    metric: str
    goal: Literal["maximize", "minimize"]


class EvaluationStatus(Status):
    model: dict[str, float] | None = Field(default=None, description="Test metrics of the final model.")
    ensemble: dict[str, float] | None = Field(default=None, description="Test metrics of the ensemble.")


class GateStatus(Status):
    metric: str
    min: float | None = None
    max: float | None = None
    value: float | None = Field(default=None, description="The candidate's test value.")
    candidate: Literal["model", "ensemble"] = Field(default="model", description="What would be served.")
    passed: bool


class EnsembleStatus(Status):
    members: list[str] = Field(default_factory=list, description="Trial names, best first.")
    method: str


class ArtifactsStatus(Status):
    """Paths relative to the run root: <storage.uri>/<pipeline name> on Kubernetes, ./runs/<name> locally."""

    root: str | None = Field(
        default=None,
        description="spec.storage.uri, as given; without it, the claim the operator provisioned "
        "(pvc://<name>-artifacts).",
    )
    data: str | None = None
    model: str | None = None
    ensemble: str | None = None
    model_report: str | None = None
    ensemble_report: str | None = None


class ServingStatus(Status):
    url: str | None = None
    ready: bool = False
    model: str | None = Field(default=None, description="Artifact served: model or ensemble.")
    replicas: int | None = None
    ready_replicas: int | None = None
    reason: str | None = None
    message: str | None = None


class PipelineStatus(Status):
    observed_generation: int | None = None
    phase: Phase = "Pending"
    reason: str | None = Field(default=None, description="Why the phase is what it is (failures, gate).")
    message: str | None = None
    progress: str | None = Field(default=None, description="Short progress: 'trials 7/12', 'epoch 12/30'.")
    best_objective: str | None = Field(default=None, description="e.g. 'accuracy=0.9731' (printer column).")
    objective: ObjectiveStatus | None = None
    start_time: str | None = None
    completion_time: str | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    stages: StagesStatus = Field(default_factory=StagesStatus)
    workloads: list[WorkloadStatus] = Field(default_factory=list, max_length=16)
    trials: list[TrialStatus] = Field(default_factory=list, max_length=MAX_TRIALS)
    tuning: TuningStatus | None = None
    best_trial: BestTrial | None = None
    evaluation: EvaluationStatus | None = None
    gate: GateStatus | None = None
    ensemble: EnsembleStatus | None = None
    artifacts: ArtifactsStatus | None = None
    serving: ServingStatus | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def workload(self, name: str) -> WorkloadStatus | None:
        return next((w for w in self.workloads if w.name == name), None)

    def trial(self, name: str) -> TrialStatus | None:
        return next((t for t in self.trials if t.name == name), None)
