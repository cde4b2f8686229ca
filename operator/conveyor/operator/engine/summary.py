"""The summary users read, computed at the end of every reconcile from what the policies decided:
the phase, the short progress text of the printer column, and the conditions tools wait on.

- The phase names the earliest stage still at work. The ensemble runs beside the final training, so
  a pipeline may go from Training to Evaluating without showing Ensembling; it never goes back.
- Conditions follow the Kubernetes conventions (`conditions`): one per stage that was requested,
  GatePassed, Succeeded, Failed, Ready (served when serving is asked, else succeeded) and, once the
  pipeline was ever suspended, Suspended.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.operator.api.status import (
    STAGE_CONDITIONS,
    STAGES,
    ConditionStatus,
    Phase,
    PipelineStatus,
    StageName,
)
from conveyor.operator.engine import conditions, reasons
from conveyor.operator.engine.context import FINISHED, TRIAL_DONE, Context
from conveyor.operator.engine.lifecycle import SUSPEND_MESSAGE
from conveyor.operator.engine.promotion import gate_message

STAGE_PHASES: dict[StageName, Phase] = {
    "prepare": "Preparing",
    "tune": "Tuning",
    "train": "Training",
    "evaluate": "Evaluating",
    "ensemble": "Ensembling",
    "serve": "Serving",
}
# The progress of the phases whose progress needs no counting.
PROGRESS: dict[Phase, str] = {
    "Pending": "pending",
    "Preparing": "preparing data",
    "Evaluating": "evaluating",
    "Ensembling": "ensembling",
    "Succeeded": "done",
    "Suspended": "suspended",
}

# Sets one condition: type, status, reason, message.
Put = Callable[[str, ConditionStatus, str, str], None]


def summarize(ctx: Context) -> None:
    """Set the phase, the progress and the conditions."""
    st = ctx.status
    if ctx.suspended:
        st.phase = "Suspended"
    elif st.phase not in FINISHED:
        st.phase = STAGE_PHASES[ctx.at_work] if ctx.at_work else "Pending"
    st.progress = progress(st)
    _set_conditions(ctx)


def progress(st: PipelineStatus) -> str:
    """The printer column's progress: trials done while tuning, epochs while training."""
    if st.tuning is not None and st.phase in ("Tuning", "Suspended") and st.trials:
        done = sum(t.state in TRIAL_DONE for t in st.trials)
        text = f"trials {done}/{st.tuning.trials}"
        return f"{text} (suspended)" if st.phase == "Suspended" else text
    if st.phase == "Training":
        train = st.workload("train")
        if train is not None and train.epoch and train.epochs:
            return f"epoch {train.epoch}/{train.epochs}"
        return "training"
    if st.phase == "Serving":
        return "serving" if st.serving is not None and st.serving.ready else "starting server"
    if st.phase == "Failed":
        return st.reason or "failed"
    return PROGRESS.get(st.phase, st.phase.lower())


def _set_conditions(ctx: Context) -> None:
    st = ctx.status
    generation = st.observed_generation

    def put(type_: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        conditions.set_condition(st.conditions, type_, status, reason, message, ctx.ts, generation)

    _stage_conditions(st, put)
    _gate_condition(ctx, put)
    _outcome_conditions(ctx, put)


def _stage_conditions(st: PipelineStatus, put: Put) -> None:
    """One condition per requested stage: True when done, False when failed, skipped or running."""
    for name in STAGES:
        stage = st.stages.get(name)
        if stage is None or (stage.state == "Skipped" and stage.reason == reasons.NOT_REQUESTED):
            continue
        if stage.state == "Succeeded":
            put(STAGE_CONDITIONS[name], "True", stage.reason or reasons.COMPLETED, stage.message or "")
        elif stage.state in ("Failed", "Skipped"):
            put(STAGE_CONDITIONS[name], "False", stage.reason or reasons.FAILED, stage.message or "")
        elif stage.state == "Running":
            put(STAGE_CONDITIONS[name], "False", reasons.IN_PROGRESS, st.progress or "")
        else:
            put(STAGE_CONDITIONS[name], "Unknown", reasons.PENDING, "")


def _gate_condition(ctx: Context, put: Put) -> None:
    st = ctx.status
    if st.gate is not None:
        passed = st.gate.passed
        put(
            "GatePassed",
            "True" if passed else "False",
            reasons.GATE_PASSED if passed else reasons.GATE_FAILED,
            gate_message(st.gate),
        )
    elif ctx.spec.evaluation.gate is None and st.evaluation is not None:
        put("GatePassed", "True", reasons.NO_GATE, "no gate configured")
    else:
        put("GatePassed", "Unknown", reasons.PENDING, "")


def _outcome_conditions(ctx: Context, put: Put) -> None:
    """Succeeded, Failed, Ready and Suspended: how the pipeline as a whole stands."""
    st = ctx.status
    serving_ready = st.serving is not None and st.serving.ready and st.phase == "Serving"
    done = st.phase == "Succeeded" or serving_ready
    put(
        "Succeeded",
        "True" if done else "False",
        reasons.SUCCEEDED if done else st.phase,
        "" if done else st.progress or "",
    )
    if st.phase == "Failed":
        put("Failed", "True", st.reason or reasons.FAILED, st.message or "")
    else:
        put("Failed", "False", reasons.NO_FAILURE, "")
    if ctx.spec.serving is not None:
        ready_message = f"serving at {st.serving.url}" if serving_ready and st.serving else st.progress or ""
        put(
            "Ready",
            "True" if serving_ready else "False",
            reasons.SERVING_READY if serving_ready else st.phase,
            ready_message,
        )
    else:
        put("Ready", "True" if done else "False", reasons.SUCCEEDED if done else st.phase, "")
    if ctx.suspended:
        put("Suspended", "True", reasons.SUSPENDED, SUSPEND_MESSAGE)
    elif st.condition("Suspended") is not None:
        put("Suspended", "False", reasons.RESUMED, "")
