"""The pipeline engine: pure decisions, no I/O.

`reconcile(spec, status, observations, now, generation=None)` -> `Decision(actions, status,
requeue_after)`. Imports neither kopf, nor a Kubernetes client, nor torch; both executors (local
processes, Kubernetes) call it the same way. See `pipeline` for the stage logic and its decisions,
`tuning` for the Optuna study rebuilt from status, `actions` and `observations` for the executor
contract.
"""

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
from conveyor.operator.engine.observations import (
    EpochReport,
    Observations,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.engine.pipeline import active_workloads, reconcile, trial_name, workload_for

__all__ = [
    "Action",
    "Decision",
    "DeletePipeline",
    "Emit",
    "EpochReport",
    "Observations",
    "ServingObservation",
    "StartServing",
    "StartWorkload",
    "StopServing",
    "StopWorkload",
    "WorkloadObservation",
    "active_workloads",
    "reconcile",
    "trial_name",
    "workload_for",
]
