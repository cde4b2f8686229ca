"""`ConveyorCallback` for Hugging Face Transformers: report each evaluation, stop when the pipeline asks.

    trainer = transformers.Trainer(..., callbacks=[ConveyorCallback()])

On every evaluation it reports the evaluation's metrics at `state.global_step` through
`conveyor.sdk.report` — `eval_accuracy` also as `accuracy`, so the objective keeps its manifest name —
and sets `control.should_training_stop` when `conveyor.sdk.should_stop()` says so (agreed across ranks:
every rank evaluates at the same step). Imports `transformers`, the one part of `conveyor.sdk` that
needs it.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from conveyor import sdk

PREFIX = "eval_"


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def metrics_of(evaluation: dict[str, Any]) -> dict[str, float]:
    """The evaluation's numeric metrics, each `eval_<name>` also as `<name>` (unless that name is
    taken); the Trainer's fractional `epoch` is left out (the report's epoch counts reports)."""
    values = {
        name: number
        for name, value in evaluation.items()
        if name != "epoch" and (number := as_float(value)) is not None
    }
    for name, value in list(values.items()):
        if name.startswith(PREFIX):
            values.setdefault(name[len(PREFIX) :], value)
    return values


class ConveyorCallback(TrainerCallback):
    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        sdk.report(state.global_step, metrics_of(metrics or {}))
        if sdk.should_stop():
            control.should_training_stop = True
