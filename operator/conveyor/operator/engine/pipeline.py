"""The reconcile function: (spec, status, observations, now) -> Decision(actions, new status).

Pure: no I/O, no clocks (`now` is given), no memory between calls. Everything it needs to continue is
in `status`, so executors may call it as often as they like, restart at any moment, and repeat a call
after a lost status write: a workload already recorded in status is never started twice (a lost write
makes the engine repeat the same StartWorkload, which executors treat as done by its key).

A reconcile reads as its steps: absorb what was observed; then either expire a finished pipeline,
suspend, or resume and advance through the stages (unless the deadline passed); then ask pruned user
loops to stop, or stop them (`stopping`, last: it sees this reconcile's prunings and failures); then
summarize.
The stage order is `_advance`: prepare -> tune (optional) -> train -> evaluate, beside ensemble
(optional) -> gate -> serve (optional). Each policy lives in its own module; see the package docstring.
"""

from __future__ import annotations

from datetime import datetime

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import ArtifactsStatus, ObjectiveStatus, PipelineStatus
from conveyor.operator.engine import (
    absorb,
    lifecycle,
    promotion,
    reasons,
    retries,
    stopping,
    summary,
    trials,
)
from conveyor.operator.engine.actions import Decision
from conveyor.operator.engine.context import FINISHED, Context
from conveyor.operator.engine.observations import Observations
from conveyor.trainer.artifacts import DATA_DIR


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
    ctx = Context(spec, st, observations, now, generation)
    _stamp(ctx)
    absorb.absorb(ctx)
    if st.phase in FINISHED:
        lifecycle.expire(ctx)
    elif spec.suspend:
        lifecycle.suspend(ctx)
    else:
        lifecycle.resume(ctx)
        if not lifecycle.deadline_exceeded(ctx):
            _advance(ctx)
    stopping.enforce(ctx)
    summary.summarize(ctx)
    return ctx.decision()


def _stamp(ctx: Context) -> None:
    """What status always says: the generation seen, when it started, the objective, the artifacts' root."""
    st, spec = ctx.status, ctx.spec
    if ctx.generation is not None:
        st.observed_generation = ctx.generation
    st.start_time = st.start_time or ctx.ts
    st.objective = ObjectiveStatus(
        metric=spec.task.metric, goal="maximize" if spec.task.maximize else "minimize"
    )
    st.artifacts = st.artifacts or ArtifactsStatus(root=spec.storage.uri, data=DATA_DIR)


def _advance(ctx: Context) -> None:
    """Take every stage whose inputs are ready one step further, in stage order."""
    spec = ctx.spec
    if not retries.run(ctx, "prepare"):
        return
    if spec.tuning is not None:
        if not trials.tune(ctx):
            return
    else:
        ctx.set_stage("tune", "Skipped", reasons.NOT_REQUESTED)
    # The final training and the ensemble of the best trials need nothing from each other, so they run
    # side by side; the gate waits for both.
    trained = retries.run(ctx, "train") and retries.run(ctx, "evaluate-model")
    if ctx.status.phase == "Failed":
        return
    if spec.ensemble is not None:
        ensembled = promotion.ensemble(ctx)
    else:
        ctx.set_stage("ensemble", "Skipped", reasons.NOT_REQUESTED)
        ensembled = True
    if not (trained and ensembled) or ctx.status.phase == "Failed":
        return
    if not promotion.gate(ctx):
        return
    if spec.serving is None:
        ctx.set_stage("serve", "Skipped", reasons.NOT_REQUESTED)
        ctx.succeed()
        return
    promotion.serve(ctx)
