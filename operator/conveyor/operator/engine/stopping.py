"""A pruned user loop: asked to stop, then stopped.

Conveyor's own loop is stopped the moment the pruner decides (`trials`): it checkpoints nothing the
study needs and its processes can be killed at any point (locally, a trial under ASHA is waiting at its
rung for the verdict by then: `tuning.verdict_epochs`). A user loop (`training.entrypoint` or
`command`) is the user's code: killed mid-step it may leave a half-written checkpoint, a locked file
or an open connection behind, and its processes may be in a collective that a one-sided kill turns
into a hang on the other ranks. So it is asked first and stopped only if it does not listen:

- The pruning decision marks the trial Pruned at once (its `completionTime` is the decision time) and
  sets `stopping`: its workload may still run. The study counts it as pruned from then on, and nothing
  the workload reports or writes later (a result included) changes the trial (`absorb`).
- While it is stopping and within `tuning.stopGracePeriodSeconds` of the decision, every reconcile
  emits `RequestStop` (the local executor writes `$CONVEYOR_OUT/stop`; on Kubernetes the progress
  endpoint answers the trial's POSTs with `{"stop": true}`) and requeues for the end of the grace
  period, the way lifecycle deadlines requeue. Repeating it is what makes it survive restarts: the
  ask lives in status, and a new leader's executor learns it on its first reconcile.
- Once the workload is gone (the executor saw it finish, fail or disappear), `stopping` is cleared.
- At the end of the grace period, or at once when the pipeline finished or is suspended, it gets the
  StopWorkload Conveyor's own loop got at once, and `stopping` is cleared.
"""

from __future__ import annotations

from conveyor.operator.api.status import TrialStatus, parse_time
from conveyor.operator.engine import reasons
from conveyor.operator.engine.actions import RequestStop, StopWorkload
from conveyor.operator.engine.context import FINISHED, Context
from conveyor.operator.engine.lifecycle import remaining_seconds


def begin(ctx: Context, trial: TrialStatus) -> None:
    """Trial `trial` was just pruned: stop it at once (Conveyor's loop) or ask it first (a user loop)."""
    if ctx.spec.training.user_loop:
        trial.stopping = True
        return
    ctx.actions.append(StopWorkload(trial.name, trial.attempt, reasons.PRUNED, trial.message or ""))


def enforce(ctx: Context) -> None:
    """Ask every stopping trial again, or stop it once its grace period is over."""
    grace = ctx.spec.tuning.stop_grace_period_seconds if ctx.spec.tuning is not None else 0
    for trial in ctx.status.trials:
        if not trial.stopping:
            continue
        decided = parse_time(trial.completion_time)
        left = 0.0 if decided is None else remaining_seconds(grace, decided, ctx.now)
        if left > 0 and not ctx.suspended and ctx.status.phase not in FINISHED:
            ctx.actions.append(RequestStop(trial.name, trial.attempt, reasons.PRUNED, trial.message or ""))
            ctx.requeue.append(left)
            continue
        if left > 0:
            why = "suspended" if ctx.suspended else f"the pipeline {ctx.status.phase.lower()}"
            message = f"{trial.message}; stopped now: {why}"
        else:
            message = f"{trial.message}; still running {grace}s (stopGracePeriodSeconds) after the ask"
        ctx.actions.append(StopWorkload(trial.name, trial.attempt, reasons.PRUNED, message))
        trial.stopping = None
