"""Promotion: from trained models to what is served, through the ensemble, the gate and serving.

- The ensemble's members are the top-K SUCCEEDED trials by validation objective (pruned and failed
  trials never join). The final model is not a member: it is trained with the best trial's
  parameters, so it would mostly duplicate the best member and add no diversity.
- The gate judges what would be served: the ensemble when there is one, else the final model, on
  the test split. A failed gate FAILS the pipeline (phase Failed, reason GateFailed, GatePassed=False,
  Serving=False): "did not produce a model good enough to promote" is the clear signal Kubeflow users
  ask for; every artifact and metric stays in status for inspection.
- Serving starts once the gate passed, starts again when the executor lost it, and makes the
  pipeline done (reason Serving) once it is ready.
"""

from __future__ import annotations

from typing import Literal

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import EnsembleStatus, EvaluationStatus, GateStatus, ServingStatus
from conveyor.operator.engine import reasons, retries, trials
from conveyor.operator.engine.actions import StartServing
from conveyor.operator.engine.context import Context
from conveyor.trainer import config
from conveyor.trainer.artifacts import ENSEMBLE_DIR, MODEL_DIR

Candidate = Literal["model", "ensemble"]
SERVED_ARTIFACT: dict[Candidate, str] = {"model": MODEL_DIR, "ensemble": ENSEMBLE_DIR}


def candidate(spec: TrainingPipelineSpec) -> Candidate:
    """What would be served: the ensemble when there is one, else the final model."""
    return "ensemble" if spec.ensemble is not None else "model"


def ensemble(ctx: Context) -> bool:
    """Choose the members once, then build and evaluate the ensemble; True once it is evaluated."""
    spec = ctx.spec.ensemble
    assert spec is not None
    if ctx.status.ensemble is None:
        best = trials.ranked(ctx.status.trials, ctx.spec.task.maximize)
        members = [t.name for t in best[: spec.top_k]]
        ctx.status.ensemble = EnsembleStatus(members=members, method=spec.method)
        if len(members) < spec.top_k:
            ctx.emit(
                "Warning",
                reasons.FEWER_MEMBERS,
                f"only {len(members)} trials succeeded; topK is {spec.top_k}",
            )
    return retries.run(ctx, "ensemble") and retries.run(ctx, "evaluate-ensemble")


def gate(ctx: Context) -> bool:
    """Judge the candidate's test metrics; True if it may be served, else the pipeline fails."""
    spec = ctx.spec.evaluation.gate
    if spec is None:
        return True
    judged = candidate(ctx.spec)
    evaluation = ctx.status.evaluation or EvaluationStatus()
    metrics = (evaluation.ensemble if judged == "ensemble" else evaluation.model) or {}
    value = metrics.get(spec.metric)
    passed = value is not None and spec.passes(value)
    first = ctx.status.gate is None
    ctx.status.gate = GateStatus(
        metric=spec.metric, min=spec.min, max=spec.max, value=value, candidate=judged, passed=passed
    )
    if passed:
        if first:
            ctx.emit("Normal", reasons.GATE_PASSED, gate_message(ctx.status.gate))
        return True
    message = gate_message(ctx.status.gate) + ("; not served" if ctx.spec.serving is not None else "")
    if ctx.spec.serving is not None:
        ctx.set_stage("serve", "Skipped", reasons.GATE_FAILED, message)
    ctx.fail(reasons.GATE_FAILED, message)
    return False


def gate_message(gate: GateStatus) -> str:
    """The gate's verdict in words, for its event, the pipeline's message and the GatePassed condition."""
    return config.gate_message(gate, gate.value, f"{gate.candidate} test")


def serve(ctx: Context) -> None:
    """Start serving the candidate (again, if the executor lost it); done once it is ready."""
    serving = ctx.spec.serving
    assert serving is not None
    ctx.working_on("serve")
    model = SERVED_ARTIFACT[candidate(ctx.spec)]
    stage = ctx.status.stages.serve
    seen = ctx.observed.serving
    wanted = (
        ctx.status.serving is None
        or ctx.status.serving.model != model
        or stage is None
        or stage.state == "Pending"
    )
    lost = seen is not None and seen.model is None and not seen.ready
    if wanted or lost:
        if wanted:
            ctx.status.serving = ServingStatus(model=model, ready=False, replicas=serving.replicas)
            ctx.emit("Normal", reasons.SERVING_STARTED, f"serving {model}")
        ctx.actions.append(StartServing(model, serving))
        ctx.set_stage("serve", "Running")
        return
    assert ctx.status.serving is not None
    if ctx.status.serving.ready:
        url = ctx.status.serving.url or "(no url yet)"
        ctx.set_stage("serve", "Succeeded", reasons.READY, f"serving {model} at {url}")
        ctx.status.completion_time = ctx.status.completion_time or ctx.ts
        ctx.status.reason, ctx.status.message = reasons.SERVING, None
