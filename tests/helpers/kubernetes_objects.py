"""Pods as the API server returns them, trimmed to what the executor reads: a completion index, a phase
and the trainer container's state."""

from __future__ import annotations

from typing import Any


def pod(index: int, phase: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def done(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    reason = reason or ("Error" if code else "Completed")
    return {"terminated": {"exitCode": code, "reason": reason, "message": message}}
