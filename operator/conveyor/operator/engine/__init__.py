"""The pipeline engine: pure decisions, no I/O.

`reconcile(spec, status, observations, now, generation=None)` -> `Decision(actions, status,
requeue_after)`. Imports neither kopf, nor a Kubernetes client, nor torch. Both executors (local
processes, Kubernetes) implement one interface (`conveyor.operator.executors.protocol`) and their
drivers take the same step: observe `active_workloads(status)`, reconcile, write status, carry the
actions out. Executors report facts; every decision is the engine's. One policy per module:

- `pipeline`: `reconcile` as named steps, and the stage order.
- `context`: the working state of one reconcile and the moves every policy makes (start a workload,
  set a stage, fail or succeed the pipeline).
- `workload_kinds`: the table of workload kinds (stage, command, output, failure reason, how the
  result is recorded) and `workload_for`, which builds a workload from spec and status alone.
- `absorb`: observations folded into the records of the current attempts.
- `lifecycle`: suspend/resume, lost workloads, the active deadline and the TTL.
- `retries`: running one non-trial workload to success within `backoffLimit`.
- `trials`: the tuning stage (asking, pruning, counting and ranking trials); `tuning`: the Optuna
  study rebuilt from status.
- `stopping`: a pruned user loop asked to stop, then stopped after its grace period.
- `promotion`: the ensemble, the gate and serving.
- `summary`: phase, progress and conditions (`conditions` keeps their transition times).
- `reasons`: every reason the engine writes.
- `actions` and `observations`: what executors are asked to do and the facts they report back.
"""

from conveyor.operator.engine.actions import (
    Action,
    Decision,
    DeletePipeline,
    Emit,
    RequestStop,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
)
from conveyor.operator.engine.lifecycle import active_workloads
from conveyor.operator.engine.observations import (
    EpochReport,
    Observations,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.engine.pipeline import reconcile
from conveyor.operator.engine.workload_kinds import trial_name, workload_for

__all__ = [
    "Action",
    "Decision",
    "DeletePipeline",
    "Emit",
    "EpochReport",
    "Observations",
    "RequestStop",
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
