"""The tuning stage: trials asked from the Optuna study, pruned, counted and ranked.

The study itself (samplers, pruners, ask/tell rebuilt from status) is `tuning.Study`; this module
decides when to use it. Decisions worth knowing:

- At most `parallelism` trials run at once, and the study runs exactly `trials` of them (a grid: at
  most its size). Failed trials count as trials.
- A failed trial is not retried; it counts against `tuning.maxFailedTrials`, and one more failure
  than that fails the pipeline (TrialFailedLimitExceeded).
- Running trials are offered to the pruner report by report (`tuning.Study.check_pruning`): epoch by
  epoch for Conveyor's loop, step by step for a user loop (`training.entrypoint`/`command`, counted
  up to `training.maxSteps`). A pruned trial is Pruned from that moment and its record stays for the
  study and the summary; Conveyor's loop is stopped at once, a user loop is asked to stop first
  (`stopping`).
- Ties between equal values go to the earlier trial.
- Large sampler state (the CMA-ES optimizer) is kept for the last few trials only, so status stays
  small; the study resumes from the newest one whose trial succeeded.
- Tuning is decided once: after it succeeded it is not re-decided, which would announce it again.
"""

from __future__ import annotations

from typing import Any

from conveyor.operator.api.spec import TuningSpec
from conveyor.operator.api.status import BestTrial, PipelineStatus, TrialStatus, TuningStatus
from conveyor.operator.engine import reasons, stopping
from conveyor.operator.engine.context import ACTIVE, TRIAL_DONE, Context
from conveyor.operator.engine.tuning import Study, max_epochs, planned_trials, resource
from conveyor.operator.engine.workload_kinds import trial_name

MAX_SAMPLER_STATES = 3


def tune(ctx: Context) -> bool:
    """Run the tuning stage one step further; True once it has succeeded."""
    tuning = ctx.spec.tuning
    assert tuning is not None
    st = ctx.status
    planned = planned_trials(tuning)
    st.tuning = st.tuning or TuningStatus()
    st.tuning.trials = planned
    if st.stages.tune is not None and st.stages.tune.state == "Succeeded":
        return True
    ctx.at_work = "tune"
    ctx.set_stage("tune", "Running")
    if _too_many_failures(ctx, tuning):
        return False
    _prune(ctx, tuning)
    if not _ask(ctx, tuning, planned):
        return False
    count(st.tuning, st.trials)
    _record_best(ctx)
    if len(st.trials) < planned or any(t.state not in TRIAL_DONE for t in st.trials):
        return False
    if st.best_trial is None:
        ctx.fail(reasons.NO_TRIAL_SUCCEEDED, f"none of the {planned} trials succeeded", "tune")
        return False
    best = st.best_trial
    ctx.set_stage(
        "tune", "Succeeded", reasons.COMPLETED, f"best {best.name}: {ctx.spec.task.metric} {best.value:.4f}"
    )
    ctx.at_work = None  # tuning is done: the phase follows the stages after it
    return True


def _study(ctx: Context, tuning: TuningSpec) -> Study:
    st, spec = ctx.status, ctx.spec
    return Study(tuning, st.trials, spec.task.maximize, max_epochs(spec), sampler_state(st), resource(spec))


def _too_many_failures(ctx: Context, tuning: TuningSpec) -> bool:
    failed = [t for t in ctx.status.trials if t.state == "Failed"]
    if len(failed) <= tuning.max_failed_trials:
        return False
    last = failed[-1]
    ctx.fail(
        reasons.TRIAL_FAILED_LIMIT_EXCEEDED,
        f"{len(failed)} trials failed (maxFailedTrials {tuning.max_failed_trials}); "
        f"last: {last.name}: {last.reason}: {last.message}",
        "tune",
    )
    return True


def _prune(ctx: Context, tuning: TuningSpec) -> None:
    running = [t for t in ctx.status.trials if t.state == "Running" and t.values]
    if tuning.pruner == "none" or not running:
        return
    study = _study(ctx, tuning)
    for trial in sorted(running, key=lambda t: t.number):
        report = study.check_pruning(trial)
        if report is None:
            continue
        value = trial.values[report - 1]
        by_step = study.resource.unit == "step" and trial.steps is not None
        where = f"step {(trial.steps or [])[report - 1]}" if by_step else f"epoch {report}"
        trial.state, trial.reason = "Pruned", reasons.PRUNED
        trial.message = f"{tuning.pruner} stopped it after {where} ({ctx.spec.task.metric} {value})"
        trial.completion_time = ctx.ts
        stopping.begin(ctx, trial)
        ctx.emit("Normal", reasons.TRIAL_PRUNED, f"{trial.name}: {trial.message}")


def _ask(ctx: Context, tuning: TuningSpec, planned: int) -> bool:
    """Start new trials while fewer than `parallelism` run; False if the sampler cannot be used."""
    st = ctx.status
    active = sum(t.state in ACTIVE for t in st.trials)
    if active >= tuning.parallelism or len(st.trials) >= planned:
        return True
    study = _study(ctx, tuning)
    while active < tuning.parallelism and len(st.trials) < planned:
        number = len(st.trials)
        try:
            params, attrs, large = study.ask(number)
        except ImportError as error:  # cmaes needs the `cmaes` package next to optuna
            ctx.fail(reasons.SAMPLER_UNAVAILABLE, f"{tuning.algorithm}: {error}", "tune")
            return False
        st.trials.append(
            TrialStatus(name=trial_name(number), number=number, params=params, attrs=attrs or None)
        )
        if large:
            keep_sampler_state(st, number, large)
        ctx.start(trial_name(number), 0)
        active += 1
    return True


def count(tuning: TuningStatus, trials: list[TrialStatus]) -> None:
    """Count the trials by state into the tuning status."""
    tuning.created = len(trials)
    tuning.running = sum(t.state in ACTIVE for t in trials)
    tuning.succeeded = sum(t.state == "Succeeded" for t in trials)
    tuning.failed = sum(t.state == "Failed" for t in trials)
    tuning.pruned = sum(t.state == "Pruned" for t in trials)


def ranked(trials: list[TrialStatus], maximize: bool) -> list[TrialStatus]:
    """Succeeded trials, best first; ties go to the earlier trial."""
    done = [t for t in trials if t.state == "Succeeded" and t.value is not None]
    sign = -1.0 if maximize else 1.0
    return sorted(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def _record_best(ctx: Context) -> None:
    best = next(iter(ranked(ctx.status.trials, ctx.spec.task.maximize)), None)
    if best is None:
        return
    assert best.value is not None
    ctx.status.best_trial = BestTrial(
        name=best.name, number=best.number, value=best.value, params=dict(best.params)
    )
    ctx.status.best_objective = f"{ctx.spec.task.metric}={best.value:.4f}"


def sampler_state(st: PipelineStatus) -> dict[str, Any] | None:
    """The most recent large sampler state of a succeeded trial, as Study expects it:
    {"trial": n, "attrs": {...}}."""
    states = (st.tuning.sampler_state if st.tuning else None) or {}
    complete = {t.number for t in st.trials if t.state == "Succeeded"}
    for key in sorted(states, key=int, reverse=True):
        if int(key) in complete:
            return {"trial": int(key), "attrs": states[key]}
    return None


def keep_sampler_state(st: PipelineStatus, number: int, attrs: dict[str, Any]) -> None:
    """Keep trial `number`'s large sampler state, dropping all but the newest MAX_SAMPLER_STATES."""
    assert st.tuning is not None
    states = dict(st.tuning.sampler_state or {})
    states[str(number)] = attrs
    for key in sorted(states, key=int)[:-MAX_SAMPLER_STATES]:
        del states[key]
    st.tuning.sampler_state = states
