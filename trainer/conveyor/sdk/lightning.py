"""`ConveyorCallback` for PyTorch Lightning: report after each validation, stop when the pipeline asks.

    trainer = lightning.Trainer(callbacks=[ConveyorCallback()], ...)

After every validation run (not the sanity check) it reports `trainer.callback_metrics` at
`trainer.global_step` through `conveyor.sdk.report`, and sets `trainer.should_stop` when
`conveyor.sdk.should_stop()` says so: the answer is agreed across ranks at the same point of every
rank's loop (validation ends on all ranks together), so DDP never hangs on a one-sided stop. Log the
objective under its manifest name (e.g. `self.log("accuracy", acc)`); metrics logged with `prefix`
(default "val_": `val_accuracy`) are also reported without it. Imports `lightning`
(`lightning.pytorch`), so this module is the one part of `conveyor.sdk` that needs it.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from conveyor import sdk


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # a non-scalar tensor or a string
        return None


class ConveyorCallback(Callback):
    def __init__(self, prefix: str = "val_") -> None:
        self.prefix = prefix

    def metrics(self, logged: dict[str, Any]) -> dict[str, float]:
        values = {name: number for name, value in logged.items() if (number := as_float(value)) is not None}
        for name, value in list(values.items()):
            if self.prefix and name.startswith(self.prefix):
                values.setdefault(name[len(self.prefix) :], value)
        return values

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        sdk.report(trainer.global_step, self.metrics(dict(trainer.callback_metrics)))
        if sdk.should_stop():
            trainer.should_stop = True
