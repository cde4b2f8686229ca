"""The kinds of workload the engine starts, in one table: what each runs, what its failure is called
and what its result changes in status. Adding a kind is one row in `KINDS` (plus the step in
`pipeline` that runs it, and its output directory in `conveyor.trainer.artifacts.WORKLOAD_DIRS`: a
workload writes to `artifacts.workload_dir(name)`, which executors use too).

Workloads are rebuilt from spec and status alone (`workload_for`), so a restarted operator, or an
executor that lost one, starts exactly the workload the engine decided before. Decisions worth knowing:

- The final training uses the best trial's parameters (without tuning: the spec as written).
- Trials are the one kind outside the table: there are many of them, named `trial-NNNN`, each with
  its own parameters from the study; they are not retried (see `trials`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import EvaluationStatus, PipelineStatus, StageName, WorkloadStatus
from conveyor.operator.engine import reasons
from conveyor.operator.engine.tuning import verdict_epochs
from conveyor.operator.workloads import Command, Workload
from conveyor.trainer.artifacts import TRIAL_PREFIX, workload_dir

# The Workload fields a kind needs from spec and status (config, parameters, models, method).
Inputs = Callable[[TrainingPipelineSpec, PipelineStatus], dict[str, Any]]
# Records a succeeded workload's result in status; returns the message its stage finishes with, or
# None when the stage goes on with another workload.
Recorder = Callable[[TrainingPipelineSpec, PipelineStatus, WorkloadStatus], str | None]


@dataclass(frozen=True)
class Kind:
    """One kind of non-trial workload: a row of `KINDS`."""

    stage: StageName  # the stage it belongs to
    command: Command  # the trainer command it runs
    failure: str  # the pipeline's reason when it fails for good
    artifact: str | None  # the status.artifacts field that points at its output once it succeeded
    inputs: Inputs
    record: Recorder
    distributed: bool = False  # under torchrun with the spec's workers, processes and GPUs


def trial_name(number: int) -> str:
    """The workload name of trial `number`: trial-0007."""
    return f"{TRIAL_PREFIX}{number:04d}"


def metrics_message(metric: str, metrics: dict[str, float] | None) -> str:
    """How an evaluation's stage reports its result: the objective on the test split, if reported."""
    if metrics and metric in metrics:
        return f"test {metric} {metrics[metric]:.4f}"
    return "evaluated"


def _prepare_inputs(spec: TrainingPipelineSpec, status: PipelineStatus) -> dict[str, Any]:
    return {"config": spec.trainer_config().to_wire()}


def _train_inputs(spec: TrainingPipelineSpec, status: PipelineStatus) -> dict[str, Any]:
    params = dict(status.best_trial.params) if spec.tuning and status.best_trial else {}
    return {"config": spec.trainer_config(params).to_wire(), "params": params}


def _ensemble_inputs(spec: TrainingPipelineSpec, status: PipelineStatus) -> dict[str, Any]:
    members = status.ensemble.members if status.ensemble else []
    method = spec.ensemble.method if spec.ensemble else "softVoting"
    return {"models": tuple(workload_dir(m) for m in members), "method": method}


def _evaluates(workload: str) -> Inputs:
    """The inputs of an evaluation of the model that `workload` wrote."""
    return lambda spec, status: {"models": (workload_dir(workload),)}


def _prepared(spec: TrainingPipelineSpec, status: PipelineStatus, rec: WorkloadStatus) -> str | None:
    return "dataset prepared"


def _trained(spec: TrainingPipelineSpec, status: PipelineStatus, rec: WorkloadStatus) -> str | None:
    metric = spec.task.metric
    if spec.tuning is None and rec.metrics and metric in rec.metrics:
        status.best_objective = f"{metric}={rec.metrics[metric]:.4f}"  # with tuning: the best trial's
    return "final model trained"


def _ensembled(spec: TrainingPipelineSpec, status: PipelineStatus, rec: WorkloadStatus) -> str | None:
    return None  # the ensemble stage finishes with its evaluation


def _evaluated(candidate: str) -> Recorder:
    """Records the test metrics of `candidate` (model or ensemble) in status.evaluation."""

    def record(spec: TrainingPipelineSpec, status: PipelineStatus, rec: WorkloadStatus) -> str | None:
        status.evaluation = status.evaluation or EvaluationStatus()
        setattr(status.evaluation, candidate, rec.metrics)
        return metrics_message(spec.task.metric, rec.metrics)

    return record


KINDS: dict[str, Kind] = {
    "prepare": Kind(
        stage="prepare",
        command="prepare",
        failure=reasons.PREPARE_FAILED,
        artifact=None,  # status.artifacts.data is known from the start
        inputs=_prepare_inputs,
        record=_prepared,
    ),
    "train": Kind(
        stage="train",
        command="train",
        failure=reasons.TRAINING_FAILED,
        artifact="model",
        inputs=_train_inputs,
        record=_trained,
        distributed=True,
    ),
    "evaluate-model": Kind(
        stage="evaluate",
        command="evaluate",
        failure=reasons.EVALUATION_FAILED,
        artifact="model_report",
        inputs=_evaluates("train"),
        record=_evaluated("model"),
    ),
    "ensemble": Kind(
        stage="ensemble",
        command="ensemble",
        failure=reasons.ENSEMBLE_FAILED,
        artifact="ensemble",
        inputs=_ensemble_inputs,
        record=_ensembled,
    ),
    "evaluate-ensemble": Kind(
        stage="ensemble",
        command="evaluate",
        failure=reasons.ENSEMBLE_EVALUATION_FAILED,
        artifact="ensemble_report",
        inputs=_evaluates("ensemble"),
        record=_evaluated("ensemble"),
    ),
}


def record_result(spec: TrainingPipelineSpec, status: PipelineStatus, rec: WorkloadStatus) -> str | None:
    """Record succeeded workload `rec` in status; returns the message its stage finishes with, if any."""
    kind = KINDS[rec.name]
    if kind.artifact is not None:
        assert status.artifacts is not None
        setattr(status.artifacts, kind.artifact, workload_dir(rec.name))
    return kind.record(spec, status, rec)


def _resources(spec: TrainingPipelineSpec, attempt: int, distributed: bool) -> dict[str, Any]:
    res = spec.resources
    env = tuple((e.name, e.value) for e in spec.env or ())
    fields: dict[str, Any] = {"attempt": attempt, "cpu": res.cpu, "memory": res.memory, "env": env}
    if distributed:
        fields.update(
            distributed=True, workers=res.workers, processes_per_worker=res.processes_per_worker, gpu=res.gpu
        )
    return fields


def _trial(spec: TrainingPipelineSpec, status: PipelineStatus, name: str, attempt: int) -> Workload:
    trial = status.trial(name)
    if trial is None:
        raise KeyError(f"no trial {name} in status")
    return Workload(
        name,
        "tune",
        "train",
        workload_dir(name),
        config=spec.trainer_config(trial.params).to_wire(),
        trial=trial.number,
        params=dict(trial.params),
        verdict_epochs=verdict_epochs(spec),
        **_resources(spec, attempt, distributed=True),
    )


def workload_for(spec: TrainingPipelineSpec, status: PipelineStatus, name: str, attempt: int) -> Workload:
    """The workload `name` as the engine starts it, rebuilt from spec and status alone."""
    if name.startswith(TRIAL_PREFIX):
        return _trial(spec, status, name, attempt)
    kind = KINDS.get(name)
    if kind is None:
        raise KeyError(f"unknown workload {name!r}")
    fields = {**_resources(spec, attempt, kind.distributed), **kind.inputs(spec, status)}
    return Workload(name, kind.stage, kind.command, workload_dir(name), **fields)
