"""The reconcile function: (spec, status, observations, now) -> Decision(actions, new status).

Pure: no I/O, no clocks (`now` is given), no memory between calls. Everything it needs to continue is
in `status`, so executors may call it as often as they like, restart at any moment, and repeat a call
after a lost status write: a workload already recorded in status is never started twice (a lost write
makes the engine repeat the same StartWorkload, which executors treat as done by its key).

Stage order: prepare -> tune (optional) -> train -> evaluate -> ensemble (optional) -> gate ->
serve (optional). Decisions worth knowing:

- The final training uses the best trial's parameters (without tuning: the spec as written).
- The ensemble's members are the top-K SUCCEEDED trials by validation objective (pruned and failed
  trials never join). The final model is not a member: it is trained with the best trial's parameters,
  so it would mostly duplicate the best member and add no diversity.
- The gate judges what would be served: the ensemble when there is one, else the final model, on
  the test split. A failed gate FAILS the pipeline (phase Failed, reason GateFailed, GatePassed=False,
  Serving=False): "did not produce a model good enough to promote" is the clear signal Kubeflow users
  ask for; every artifact and metric stays in status for inspection.
- Failed prepare/train/evaluate/ensemble workloads are retried up to `backoffLimit` times (each
  retry resumes from its checkpoint); a failed trial is not retried but counts against
  `tuning.maxFailedTrials`, and one more failure than that fails the pipeline
  (TrialFailedLimitExceeded). Failed trials count as trials: the study runs exactly `trials`.
- `suspend` stops every running workload (and serving); their records move to Suspended and start
  again as their next attempt (from their checkpoints) on unsuspend. Trials are kept.
- A workload an executor reports `lost` is started again as its next attempt; no failure is counted.
- `activeDeadlineSeconds` counts from status.startTime until the pipeline finishes or serves.
- `ttlSecondsAfterFinished` applies to Succeeded and Failed pipelines, never to a serving one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import (
    STAGE_CONDITIONS,
    STAGES,
    ArtifactsStatus,
    BestTrial,
    ConditionStatus,
    EnsembleStatus,
    EvaluationStatus,
    GateStatus,
    ObjectiveStatus,
    PipelineStatus,
    ServingStatus,
    StageName,
    StageState,
    StageStatus,
    TrialStatus,
    TuningStatus,
    WorkloadStatus,
    parse_time,
    rfc3339,
)
from conveyor.operator.engine import conditions
from conveyor.operator.engine.actions import (
    Action,
    Decision,
    DeletePipeline,
    Emit,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
)
from conveyor.operator.engine.observations import Observations, ObservedState, WorkloadObservation
from conveyor.operator.engine.tuning import Study, planned_trials
from conveyor.operator.workloads import PERMANENT_REASONS, Workload
from conveyor.trainer.artifacts import DATA_DIR, ENSEMBLE_DIR, EVALUATION_DIR, MODEL_DIR, TRIALS_DIR

ACTIVE = ("Pending", "Running")
TRIAL_DONE = ("Succeeded", "Failed", "Pruned")
WORKLOAD_STAGES: dict[str, StageName] = {
    "prepare": "prepare",
    "train": "train",
    "evaluate-model": "evaluate",
    "ensemble": "ensemble",
    "evaluate-ensemble": "ensemble",
}
FAILURE_REASONS = {
    "prepare": "PrepareFailed",
    "train": "TrainingFailed",
    "evaluate-model": "EvaluationFailed",
    "ensemble": "EnsembleFailed",
    "evaluate-ensemble": "EnsembleEvaluationFailed",
}
PHASES: dict[StageName, Any] = {
    "prepare": "Preparing",
    "tune": "Tuning",
    "train": "Training",
    "evaluate": "Evaluating",
    "ensemble": "Ensembling",
    "serve": "Serving",
}
MAX_SAMPLER_STATES = 3


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def active_workloads(status: PipelineStatus | None) -> list[tuple[str, int]]:
    """(name, attempt) of every workload status says should exist now: executors report `lost` for
    the ones they cannot find."""
    if status is None:
        return []
    records: list[TrialStatus | WorkloadStatus] = [*status.trials, *status.workloads]
    return [(r.name, r.attempt) for r in records if r.state in ACTIVE]


def workload_for(spec: TrainingPipelineSpec, status: PipelineStatus, name: str, attempt: int) -> Workload:
    """The workload `name` as the engine starts it, rebuilt from spec and status alone."""
    res = spec.resources
    env = tuple((e.name, e.value) for e in spec.env or ())
    single: dict[str, Any] = {"attempt": attempt, "cpu": res.cpu, "memory": res.memory, "env": env}
    distributed: dict[str, Any] = {
        **single,
        "distributed": True,
        "workers": res.workers,
        "processes_per_worker": res.processes_per_worker,
        "gpu": res.gpu,
    }
    if name == "prepare":
        return Workload(
            name, "prepare", "prepare", DATA_DIR, config=spec.trainer_config().to_wire(), **single
        )
    if name.startswith("trial-"):
        trial = status.trial(name)
        if trial is None:
            raise KeyError(f"no trial {name} in status")
        return Workload(
            name,
            "tune",
            "train",
            f"{TRIALS_DIR}/{name}",
            config=spec.trainer_config(trial.params).to_wire(),
            trial=trial.number,
            params=dict(trial.params),
            **distributed,
        )
    if name == "train":
        params = dict(status.best_trial.params) if spec.tuning and status.best_trial else {}
        config = spec.trainer_config(params).to_wire()
        return Workload(name, "train", "train", MODEL_DIR, config=config, params=params, **distributed)
    if name == "evaluate-model":
        return Workload(
            name, "evaluate", "evaluate", f"{EVALUATION_DIR}/model", models=(MODEL_DIR,), **single
        )
    if name == "ensemble":
        members = status.ensemble.members if status.ensemble else []
        method = spec.ensemble.method if spec.ensemble else "softVoting"
        models = tuple(f"{TRIALS_DIR}/{m}" for m in members)
        return Workload(name, "ensemble", "ensemble", ENSEMBLE_DIR, models=models, method=method, **single)
    if name == "evaluate-ensemble":
        return Workload(
            name, "ensemble", "evaluate", f"{EVALUATION_DIR}/ensemble", models=(ENSEMBLE_DIR,), **single
        )
    raise KeyError(f"unknown workload {name!r}")


@dataclass
class _Ctx:
    spec: TrainingPipelineSpec
    st: PipelineStatus
    obs: Observations
    now: datetime
    generation: int | None
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    stage: StageName | None = None
    suspended: bool = False

    @property
    def ts(self) -> str:
        return rfc3339(self.now)

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(Emit(type_, reason, message))

    def start(self, name: str, attempt: int) -> None:
        self.actions.append(StartWorkload(workload_for(self.spec, self.st, name, attempt)))


def reconcile(
    spec: TrainingPipelineSpec,
    status: PipelineStatus | None,
    observations: Observations,
    now: datetime,
    generation: int | None = None,
) -> Decision:
    """Decide what happens next. `status` is the last status written (None for a new pipeline),
    `generation` the object's metadata.generation (recorded as observedGeneration)."""
    st = status.model_copy(deep=True) if status is not None else PipelineStatus()
    ctx = _Ctx(spec, st, observations, now, generation)
    if generation is not None:
        st.observed_generation = generation
    st.start_time = st.start_time or ctx.ts
    st.objective = ObjectiveStatus(
        metric=spec.task.metric, goal="maximize" if spec.task.maximize else "minimize"
    )
    st.artifacts = st.artifacts or ArtifactsStatus(root=spec.storage.uri, data=DATA_DIR)

    _absorb(ctx)
    if st.phase in ("Succeeded", "Failed"):
        _expire(ctx)
    elif spec.suspend:
        _suspend(ctx)
    else:
        _resume(ctx)
        if not _deadline(ctx):
            _advance(ctx)
    _summarize(ctx)
    return Decision(tuple(ctx.actions), st, min(ctx.requeue) if ctx.requeue else None)


# --- observations -------------------------------------------------------------------------------


def _absorb(ctx: _Ctx) -> None:
    for trial in ctx.st.trials:
        _absorb_record(ctx, trial)
    for workload in ctx.st.workloads:
        _absorb_record(ctx, workload)
    seen = ctx.obs.serving
    if seen is not None and ctx.st.serving is not None:
        serving = ctx.st.serving
        serving.ready = seen.ready and (seen.model in (None, serving.model))
        serving.url = seen.url or serving.url
        serving.ready_replicas = seen.ready_replicas
        serving.reason = seen.reason
        serving.message = seen.message


def _objective_of(ctx: _Ctx, trial: TrialStatus, result: dict[str, Any] | None) -> float | None:
    objective = (result or {}).get("objective") or {}
    if isinstance(objective, dict) and isinstance(objective.get("value"), int | float):
        return float(objective["value"])
    values = [v for v in trial.values if v is not None]
    if not values:
        return None
    return max(values) if ctx.spec.task.maximize else min(values)


def _absorb_record(ctx: _Ctx, rec: TrialStatus | WorkloadStatus) -> None:
    seen: WorkloadObservation | None = ctx.obs.workloads.get(rec.name)
    if seen is None or seen.attempt != rec.attempt or rec.state not in ACTIVE:
        return
    if seen.started_at is not None and rec.start_time is None:
        rec.start_time = rfc3339(seen.started_at)
    if seen.epochs:
        last = max(seen.epochs, key=lambda e: e.epoch)
        rec.epoch = last.epoch
        rec.epochs = last.epochs or rec.epochs
        if isinstance(rec, TrialStatus):
            metric = ctx.spec.task.metric
            values = list(rec.values)
            for report in seen.epochs:
                value = report.metrics.get(metric)
                if report.epoch < 1 or value is None:
                    continue
                values.extend([None] * (report.epoch - len(values)))
                values[report.epoch - 1] = round(float(value), 6)
            rec.values = values
    result = dict(seen.result) if seen.result is not None else None
    state = seen.state
    if result is not None and state != "lost":
        # The result is the durable verdict, also over a non-zero exit: rank 0 writes it after the
        # last collective, so every rank has finished. A process can still be exiting, or crash while
        # exiting (gloo aborts now and then at interpreter teardown: "terminate called without an
        # active exception"); the work it finished is kept.
        verdict: ObservedState = "succeeded" if result.get("status", "succeeded") == "succeeded" else "failed"
        if state == "failed" and verdict == "succeeded":
            ctx.emit(
                "Warning",
                "ExitedAfterResult",
                f"{rec.name} (attempt {rec.attempt}) exited with an error after writing its result; "
                f"the result is kept ({seen.reason or 'process failed'})",
            )
        state = verdict
    finished = rfc3339(seen.finished_at) if seen.finished_at else ctx.ts
    if state == "pending":
        rec.state = "Pending"
    elif state == "running":
        rec.state = "Running"
        rec.start_time = rec.start_time or ctx.ts
    elif state == "succeeded":
        rec.state, rec.completion_time = "Succeeded", finished
        rec.reason, rec.message = None, None
        if isinstance(rec, TrialStatus):
            rec.value = _objective_of(ctx, rec, result)
            if rec.value is None:
                rec.state, rec.reason = "Failed", "NoObjective"
                rec.message = f"the trial reported no {ctx.spec.task.metric}"
        else:
            metrics = (result or {}).get("metrics") or {}
            rec.metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)} or None
    elif state == "failed":
        rec.state, rec.completion_time = "Failed", finished
        rec.reason = seen.reason or (result or {}).get("reason") or "WorkloadFailed"
        rec.message = seen.message or (result or {}).get("message") or ""
        if isinstance(rec, WorkloadStatus):
            rec.failures += 1
        ctx.emit(
            "Warning", "WorkloadFailed", f"{rec.name} (attempt {rec.attempt}): {rec.reason}: {rec.message}"
        )
    else:  # lost: started again as the next attempt by _resume
        rec.state, rec.reason = "Suspended", "Lost"
        rec.message = seen.message or "the workload disappeared without a result; starting it again"
    if isinstance(rec, TrialStatus) and rec.state in TRIAL_DONE and rec.start_time and rec.completion_time:
        began, ended = parse_time(rec.start_time), parse_time(rec.completion_time)
        if began and ended:
            rec.duration_seconds = max(0.0, (ended - began).total_seconds())


# --- lifecycle ----------------------------------------------------------------------------------


def _records(st: PipelineStatus) -> list[TrialStatus | WorkloadStatus]:
    return [*st.trials, *st.workloads]


def _suspend(ctx: _Ctx) -> None:
    ctx.suspended = True
    for rec in _records(ctx.st):
        if rec.state in ACTIVE:
            ctx.actions.append(StopWorkload(rec.name, rec.attempt, "Suspended", "spec.suspend is true"))
            rec.state, rec.reason, rec.message = "Suspended", "Suspended", "stopped by spec.suspend"
    serve = ctx.st.stages.serve
    if serve is not None and serve.state in ("Running", "Succeeded"):
        ctx.actions.append(StopServing("Suspended"))
        serve.state = "Pending"
        if ctx.st.serving is not None:
            ctx.st.serving.ready = False
    current = ctx.st.condition("Suspended")
    if current is None or current.status != "True":
        ctx.emit("Normal", "Suspended", "spec.suspend is true: running workloads stopped, trials kept")


def _resume(ctx: _Ctx) -> None:
    for rec in _records(ctx.st):
        if rec.state == "Suspended":
            why = "resumed" if rec.reason == "Suspended" else "lost"
            rec.attempt += 1
            rec.state, rec.reason, rec.message = "Pending", "Restarted", f"attempt {rec.attempt} ({why})"
            ctx.start(rec.name, rec.attempt)
    current = ctx.st.condition("Suspended")
    if current is not None and current.status == "True":
        ctx.emit("Normal", "Resumed", "spec.suspend is false: continuing")


def _deadline(ctx: _Ctx) -> bool:
    limit = ctx.spec.active_deadline_seconds
    if limit is None or ctx.st.phase == "Serving":
        return False
    began = parse_time(ctx.st.start_time)
    assert began is not None
    remaining = limit - (ctx.now - began).total_seconds()
    if remaining > 0:
        ctx.requeue.append(remaining)
        return False
    _fail(ctx, "DeadlineExceeded", f"the pipeline ran longer than activeDeadlineSeconds ({limit}s)")
    return True


def _expire(ctx: _Ctx) -> None:
    ttl = ctx.spec.ttl_seconds_after_finished
    finished = parse_time(ctx.st.completion_time)
    if ttl is None or finished is None:
        return
    remaining = ttl - (ctx.now - finished).total_seconds()
    if remaining <= 0:
        ctx.actions.append(DeletePipeline("TTLExpired"))
    else:
        ctx.requeue.append(remaining)


def _fail(ctx: _Ctx, reason: str, message: str, stage: StageName | None = None) -> None:
    for rec in _records(ctx.st):
        if rec.state in ACTIVE or rec.state == "Suspended":
            if rec.state in ACTIVE:
                ctx.actions.append(StopWorkload(rec.name, rec.attempt, "PipelineFailed", reason))
            rec.state, rec.reason, rec.message = "Failed", "Stopped", f"pipeline failed: {reason}"
            rec.completion_time = ctx.ts
    if stage is not None:
        _stage(ctx, stage, "Failed", reason, message)
    ctx.st.phase, ctx.st.reason, ctx.st.message = "Failed", reason, message
    ctx.st.completion_time = ctx.ts
    ctx.emit("Warning", reason, message)


def _succeed(ctx: _Ctx) -> None:
    if ctx.st.phase != "Succeeded":
        ctx.emit("Normal", "Succeeded", "the pipeline finished")
    ctx.st.phase, ctx.st.reason, ctx.st.message = "Succeeded", "Succeeded", None
    ctx.st.completion_time = ctx.st.completion_time or ctx.ts


def _stage(
    ctx: _Ctx, name: StageName, state: StageState, reason: str | None = None, message: str | None = None
) -> None:
    stage = ctx.st.stages.get(name)
    if stage is None:
        stage = StageStatus()
        setattr(ctx.st.stages, name, stage)
    if state == "Running" and stage.start_time is None:
        stage.start_time = ctx.ts
    if state in ("Succeeded", "Failed") and stage.completion_time is None:
        stage.completion_time = ctx.ts
    if state == "Succeeded" and stage.state != "Succeeded":
        ctx.emit("Normal", f"{STAGE_CONDITIONS[name]}", message or f"{name} finished")
    stage.state = state
    if reason is not None or state != "Running":
        stage.reason, stage.message = reason, message


# --- stages -------------------------------------------------------------------------------------


def _advance(ctx: _Ctx) -> None:
    spec = ctx.spec
    if not _single(ctx, "prepare"):
        return
    if spec.tuning is not None:
        if not _tune(ctx):
            return
    else:
        _stage(ctx, "tune", "Skipped", "NotRequested")
    # The final training and the ensemble of the best trials need nothing from each other, so they run
    # side by side; the gate waits for both.
    trained = _single(ctx, "train") and _single(ctx, "evaluate-model")
    if ctx.st.phase == "Failed":
        return
    if spec.ensemble is not None:
        ensembled = _ensemble(ctx)
    else:
        _stage(ctx, "ensemble", "Skipped", "NotRequested")
        ensembled = True
    if not (trained and ensembled) or ctx.st.phase == "Failed":
        return
    if not _gate(ctx):
        return
    if spec.serving is None:
        _stage(ctx, "serve", "Skipped", "NotRequested")
        _succeed(ctx)
        return
    _serve(ctx)


def _single(ctx: _Ctx, name: str) -> bool:
    """Run one non-trial workload to success (with retries); True once it has succeeded."""
    stage = WORKLOAD_STAGES[name]
    rec = ctx.st.workload(name)
    if rec is None:
        ctx.st.workloads.append(WorkloadStatus(name=name, stage=stage))
        ctx.start(name, 0)
        ctx.stage = ctx.stage or stage  # the phase names the earliest stage still at work
        _stage(ctx, stage, "Running")
        return False
    if rec.state == "Succeeded":
        _record_result(ctx, rec)
        return True
    ctx.stage = ctx.stage or stage
    _stage(ctx, stage, "Running")
    if rec.state == "Failed":
        limit = ctx.spec.backoff_limit
        if rec.failures <= limit and rec.reason not in PERMANENT_REASONS:
            rec.attempt += 1
            rec.state = "Pending"
            rec.completion_time = None
            ctx.emit(
                "Warning",
                "Retrying",
                f"{name}: attempt {rec.attempt} after {rec.reason} (backoffLimit {limit})",
            )
            ctx.start(name, rec.attempt)
        else:
            message = (
                f"{name} failed: {rec.reason}: {rec.message}"
                if rec.reason in PERMANENT_REASONS
                else f"{name} failed {rec.failures} time(s) (backoffLimit {limit}); "
                f"last: {rec.reason}: {rec.message}"
            )
            _fail(ctx, FAILURE_REASONS[name], message, stage)
    return False


def _record_result(ctx: _Ctx, rec: WorkloadStatus) -> None:
    st = ctx.st
    assert st.artifacts is not None
    if rec.name == "prepare":
        _stage(ctx, "prepare", "Succeeded", "Completed", "dataset prepared")
    elif rec.name == "train":
        st.artifacts.model = MODEL_DIR
        if ctx.spec.tuning is None and rec.metrics and ctx.spec.task.metric in rec.metrics:
            st.best_objective = f"{ctx.spec.task.metric}={rec.metrics[ctx.spec.task.metric]:.4f}"
        _stage(ctx, "train", "Succeeded", "Completed", "final model trained")
    elif rec.name == "evaluate-model":
        st.evaluation = st.evaluation or EvaluationStatus()
        st.evaluation.model = rec.metrics
        st.artifacts.model_report = f"{EVALUATION_DIR}/model"
        _stage(ctx, "evaluate", "Succeeded", "Completed", _metrics_message(ctx, rec.metrics))
    elif rec.name == "ensemble":
        st.artifacts.ensemble = ENSEMBLE_DIR
    elif rec.name == "evaluate-ensemble":
        st.evaluation = st.evaluation or EvaluationStatus()
        st.evaluation.ensemble = rec.metrics
        st.artifacts.ensemble_report = f"{EVALUATION_DIR}/ensemble"
        _stage(ctx, "ensemble", "Succeeded", "Completed", _metrics_message(ctx, rec.metrics))


def _metrics_message(ctx: _Ctx, metrics: dict[str, float] | None) -> str:
    metric = ctx.spec.task.metric
    if metrics and metric in metrics:
        return f"test {metric} {metrics[metric]:.4f}"
    return "evaluated"


def _tune(ctx: _Ctx) -> bool:
    tuning = ctx.spec.tuning
    assert tuning is not None
    st = ctx.st
    planned = planned_trials(tuning)
    st.tuning = st.tuning or TuningStatus()
    st.tuning.trials = planned
    if st.stages.tune is not None and st.stages.tune.state == "Succeeded":
        return True  # decided once; re-deciding would announce it again on every reconcile
    ctx.stage = "tune"
    _stage(ctx, "tune", "Running")
    tuned_epochs = [int(p.max or 0) for p in tuning.parameters if p.name == "training.epochs"]
    max_epochs = max([ctx.spec.training.epochs, *tuned_epochs])

    failed = [t for t in st.trials if t.state == "Failed"]
    if len(failed) > tuning.max_failed_trials:
        last = failed[-1]
        _fail(
            ctx,
            "TrialFailedLimitExceeded",
            f"{len(failed)} trials failed (maxFailedTrials {tuning.max_failed_trials}); "
            f"last: {last.name}: {last.reason}: {last.message}",
            "tune",
        )
        return False

    running = [t for t in st.trials if t.state == "Running" and t.values]
    if tuning.pruner != "none" and running:
        study = Study(tuning, st.trials, ctx.spec.task.maximize, max_epochs, _sampler_state(st))
        for trial in sorted(running, key=lambda t: t.number):
            epoch = study.check_pruning(trial)
            if epoch is None:
                continue
            value = trial.values[epoch - 1]
            trial.state, trial.reason = "Pruned", "Pruned"
            trial.message = f"{tuning.pruner} stopped it after epoch {epoch} ({ctx.spec.task.metric} {value})"
            trial.completion_time = ctx.ts
            ctx.actions.append(StopWorkload(trial.name, trial.attempt, "Pruned", trial.message))
            ctx.emit("Normal", "TrialPruned", f"{trial.name}: {trial.message}")

    active = sum(t.state in ACTIVE for t in st.trials)
    if active < tuning.parallelism and len(st.trials) < planned:
        study = Study(tuning, st.trials, ctx.spec.task.maximize, max_epochs, _sampler_state(st))
        while active < tuning.parallelism and len(st.trials) < planned:
            number = len(st.trials)
            try:
                params, attrs, large = study.ask(number)
            except ImportError as error:  # cmaes needs the `cmaes` package next to optuna
                _fail(ctx, "SamplerUnavailable", f"{tuning.algorithm}: {error}", "tune")
                return False
            st.trials.append(
                TrialStatus(name=trial_name(number), number=number, params=params, attrs=attrs or None)
            )
            if large:
                _keep_sampler_state(st, number, large)
            ctx.start(trial_name(number), 0)
            active += 1

    _count_trials(ctx)
    _best(ctx)
    if len(st.trials) < planned or any(t.state not in TRIAL_DONE for t in st.trials):
        return False
    if st.best_trial is None:
        _fail(ctx, "NoTrialSucceeded", f"none of the {planned} trials succeeded", "tune")
        return False
    best = st.best_trial
    _stage(
        ctx, "tune", "Succeeded", "Completed", f"best {best.name}: {ctx.spec.task.metric} {best.value:.4f}"
    )
    ctx.stage = None  # tuning is done: the phase follows the stages after it
    return True


def _sampler_state(st: PipelineStatus) -> dict[str, Any] | None:
    """The most recent large sampler state, as Study expects it: {"trial": n, "attrs": {...}}."""
    states = (st.tuning.sampler_state if st.tuning else None) or {}
    complete = {t.number for t in st.trials if t.state == "Succeeded"}
    for key in sorted(states, key=int, reverse=True):
        if int(key) in complete:
            return {"trial": int(key), "attrs": states[key]}
    return None


def _keep_sampler_state(st: PipelineStatus, number: int, attrs: dict[str, Any]) -> None:
    assert st.tuning is not None
    states = dict(st.tuning.sampler_state or {})
    states[str(number)] = attrs
    for key in sorted(states, key=int)[:-MAX_SAMPLER_STATES]:
        del states[key]
    st.tuning.sampler_state = states


def _count_trials(ctx: _Ctx) -> None:
    assert ctx.st.tuning is not None
    trials = ctx.st.trials
    tuning = ctx.st.tuning
    tuning.created = len(trials)
    tuning.running = sum(t.state in ACTIVE for t in trials)
    tuning.succeeded = sum(t.state == "Succeeded" for t in trials)
    tuning.failed = sum(t.state == "Failed" for t in trials)
    tuning.pruned = sum(t.state == "Pruned" for t in trials)


def _ranked(ctx: _Ctx) -> list[TrialStatus]:
    """Succeeded trials, best first; ties go to the earlier trial."""
    done = [t for t in ctx.st.trials if t.state == "Succeeded" and t.value is not None]
    sign = -1.0 if ctx.spec.task.maximize else 1.0
    return sorted(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def _best(ctx: _Ctx) -> None:
    ranked = _ranked(ctx)
    if not ranked:
        return
    best = ranked[0]
    assert best.value is not None
    ctx.st.best_trial = BestTrial(
        name=best.name, number=best.number, value=best.value, params=dict(best.params)
    )
    ctx.st.best_objective = f"{ctx.spec.task.metric}={best.value:.4f}"


def _ensemble(ctx: _Ctx) -> bool:
    spec = ctx.spec.ensemble
    assert spec is not None
    if ctx.st.ensemble is None:
        members = [t.name for t in _ranked(ctx)[: spec.top_k]]
        ctx.st.ensemble = EnsembleStatus(members=members, method=spec.method)
        if len(members) < spec.top_k:
            ctx.emit("Warning", "FewerMembers", f"only {len(members)} trials succeeded; topK is {spec.top_k}")
    return _single(ctx, "ensemble") and _single(ctx, "evaluate-ensemble")


def _gate(ctx: _Ctx) -> bool:
    gate = ctx.spec.evaluation.gate
    if gate is None:
        return True
    candidate: Literal["model", "ensemble"] = "ensemble" if ctx.spec.ensemble is not None else "model"
    evaluation = ctx.st.evaluation or EvaluationStatus()
    metrics = (evaluation.ensemble if candidate == "ensemble" else evaluation.model) or {}
    value = metrics.get(gate.metric)
    passed = value is not None and gate.passes(value)
    first = ctx.st.gate is None
    ctx.st.gate = GateStatus(
        metric=gate.metric, min=gate.min, max=gate.max, value=value, candidate=candidate, passed=passed
    )
    if passed:
        if first:
            ctx.emit("Normal", "GatePassed", _gate_message(ctx.st.gate))
        return True
    message = _gate_message(ctx.st.gate) + ("; not served" if ctx.spec.serving is not None else "")
    if ctx.spec.serving is not None:
        _stage(ctx, "serve", "Skipped", "GateFailed", message)
    _fail(ctx, "GateFailed", message)
    return False


def _gate_message(gate: GateStatus) -> str:
    if gate.value is None:
        return f"the {gate.candidate}'s evaluation reported no {gate.metric}"
    bounds = " and ".join(
        f"{word} {bound}" for word, bound in ((">=", gate.min), ("<=", gate.max)) if bound is not None
    )
    verdict = "passes" if gate.passed else "fails"
    return f"{gate.candidate} test {gate.metric} {gate.value:.4f} {verdict} the gate ({gate.metric} {bounds})"


def _serve(ctx: _Ctx) -> None:
    serving = ctx.spec.serving
    assert serving is not None
    ctx.stage = "serve"
    model = ENSEMBLE_DIR if ctx.spec.ensemble is not None else MODEL_DIR
    stage = ctx.st.stages.serve
    seen = ctx.obs.serving
    wanted = (
        ctx.st.serving is None or ctx.st.serving.model != model or stage is None or stage.state == "Pending"
    )
    lost = seen is not None and seen.model is None and not seen.ready
    if wanted or lost:
        if wanted:
            ctx.st.serving = ServingStatus(model=model, ready=False, replicas=serving.replicas)
            ctx.emit("Normal", "ServingStarted", f"serving {model}")
        ctx.actions.append(StartServing(model, serving))
        _stage(ctx, "serve", "Running")
        return
    assert ctx.st.serving is not None
    if ctx.st.serving.ready:
        _stage(
            ctx, "serve", "Succeeded", "Ready", f"serving {model} at {ctx.st.serving.url or '(no url yet)'}"
        )
        ctx.st.completion_time = ctx.st.completion_time or ctx.ts
        ctx.st.reason, ctx.st.message = "Serving", None


# --- summary ------------------------------------------------------------------------------------


def _summarize(ctx: _Ctx) -> None:
    st = ctx.st
    if ctx.suspended:
        st.phase = "Suspended"
    elif st.phase not in ("Succeeded", "Failed"):
        st.phase = PHASES[ctx.stage] if ctx.stage else "Pending"
    st.progress = _progress(ctx)
    _conditions(ctx)


def _progress(ctx: _Ctx) -> str:
    st = ctx.st
    if st.tuning is not None and st.phase in ("Tuning", "Suspended") and st.trials:
        done = sum(t.state in TRIAL_DONE for t in st.trials)
        text = f"trials {done}/{st.tuning.trials}"
        return f"{text} (suspended)" if st.phase == "Suspended" else text
    if st.phase == "Training":
        train = st.workload("train")
        if train is not None and train.epoch and train.epochs:
            return f"epoch {train.epoch}/{train.epochs}"
        return "training"
    return {
        "Pending": "pending",
        "Preparing": "preparing data",
        "Evaluating": "evaluating",
        "Ensembling": "ensembling",
        "Serving": "serving" if st.serving is not None and st.serving.ready else "starting server",
        "Succeeded": "done",
        "Failed": st.reason or "failed",
        "Suspended": "suspended",
    }.get(st.phase, st.phase.lower())


def _conditions(ctx: _Ctx) -> None:
    st, spec = ctx.st, ctx.spec
    generation = st.observed_generation

    def put(type_: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        conditions.set_condition(st.conditions, type_, status, reason, message, ctx.ts, generation)

    for name in STAGES:
        stage = st.stages.get(name)
        if stage is None or (stage.state == "Skipped" and stage.reason == "NotRequested"):
            continue
        if stage.state == "Succeeded":
            put(STAGE_CONDITIONS[name], "True", stage.reason or "Completed", stage.message or "")
        elif stage.state in ("Failed", "Skipped"):
            put(STAGE_CONDITIONS[name], "False", stage.reason or "Failed", stage.message or "")
        elif stage.state == "Running":
            put(STAGE_CONDITIONS[name], "False", "InProgress", st.progress or "")
        else:
            put(STAGE_CONDITIONS[name], "Unknown", "Pending", "")
    if st.gate is not None:
        put(
            "GatePassed",
            "True" if st.gate.passed else "False",
            "GatePassed" if st.gate.passed else "GateFailed",
            _gate_message(st.gate),
        )
    elif spec.evaluation.gate is None and st.evaluation is not None:
        put("GatePassed", "True", "NoGate", "no gate configured")
    else:
        put("GatePassed", "Unknown", "Pending", "")
    serving_ready = st.serving is not None and st.serving.ready and st.phase == "Serving"
    done = st.phase == "Succeeded" or serving_ready
    put(
        "Succeeded",
        "True" if done else "False",
        "Succeeded" if done else st.phase,
        "" if done else st.progress or "",
    )
    if st.phase == "Failed":
        put("Failed", "True", st.reason or "Failed", st.message or "")
    else:
        put("Failed", "False", "NoFailure", "")
    if spec.serving is not None:
        ready_message = f"serving at {st.serving.url}" if serving_ready and st.serving else st.progress or ""
        put(
            "Ready",
            "True" if serving_ready else "False",
            "ServingReady" if serving_ready else st.phase,
            ready_message,
        )
    else:
        put("Ready", "True" if done else "False", "Succeeded" if done else st.phase, "")
    if ctx.suspended:
        put("Suspended", "True", "Suspended", "spec.suspend is true")
    elif st.condition("Suspended") is not None:
        put("Suspended", "False", "Resumed", "")
