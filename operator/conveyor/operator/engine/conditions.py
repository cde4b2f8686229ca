"""Kubernetes-style conditions: one entry per type, and lastTransitionTime moves only when the status
(True/False/Unknown) changes, so watchers and `kubectl wait` see real transitions only."""

from __future__ import annotations

from conveyor.operator.api.status import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> None:
    current = next((c for c in conditions if c.type == type_), None)
    if current is None:
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
        return
    if current.status != status:
        current.last_transition_time = now
    current.status = status
    current.reason = reason
    current.message = message
    current.observed_generation = generation
