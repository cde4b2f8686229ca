"""Every reason the engine writes, in one place: users read them in `kubectl get`/`describe`, wait on
them in conditions, and alert on them as events, so they are part of the API and must not drift
between the policies that set them.

Reasons are CamelCase (Kubernetes conventions). Messages carry the details and are built by the
policy that owns each decision.
"""

from __future__ import annotations

# Why the pipeline failed: status.reason, the Failed condition and a Warning event.
PREPARE_FAILED = "PrepareFailed"
TRAINING_FAILED = "TrainingFailed"
EVALUATION_FAILED = "EvaluationFailed"
ENSEMBLE_FAILED = "EnsembleFailed"
ENSEMBLE_EVALUATION_FAILED = "EnsembleEvaluationFailed"
TRIAL_FAILED_LIMIT_EXCEEDED = "TrialFailedLimitExceeded"
SAMPLER_UNAVAILABLE = "SamplerUnavailable"
NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"
GATE_FAILED = "GateFailed"
DEADLINE_EXCEEDED = "DeadlineExceeded"

# How the pipeline ended well: status.reason, conditions and a Normal event.
SUCCEEDED = "Succeeded"
SERVING = "Serving"

# Why a trial or workload record is in its state.
WORKLOAD_FAILED = "WorkloadFailed"  # failed, and neither the executor nor the result said why
NO_OBJECTIVE = "NoObjective"  # a trial succeeded without reporting the objective
NO_RESULT = "NoResult"  # it exited successfully without writing a result
LOST = "Lost"  # the executor lost it without a result: it starts again
SUSPENDED = "Suspended"  # stopped by spec.suspend: it starts again on unsuspend
RESTARTED = "Restarted"  # started again after suspension or loss
STOPPED = "Stopped"  # stopped because the pipeline failed
PRUNED = "Pruned"  # a trial stopped early by the pruner
NOT_STARTING = "NotStarting"  # pending, and the executor says why (image pull, missing Secret, ...)
# Results of user code (`training.entrypoint`/`command`), as the trainer writes them:
# a user loop that never reported the objective through conveyor.sdk.report (permanent: the same
# code reports nothing the next time either, `workloads.PERMANENT_REASONS`), and an exception in user
# code, whose message is the last lines of its traceback (retried within backoffLimit, like any
# failure: it may be a flake).
OBJECTIVE_NOT_REPORTED = "ObjectiveNotReported"
USER_CODE_ERROR = "UserCodeError"

# Why a workload, serving or the pipeline itself is stopped (StopWorkload, StopServing, DeletePipeline).
PIPELINE_FAILED = "PipelineFailed"
TTL_EXPIRED = "TTLExpired"

# Stage reasons (status.stages.<stage>.reason, copied into the stage's condition).
COMPLETED = "Completed"
NOT_REQUESTED = "NotRequested"
READY = "Ready"

# Events that announce a step (Normal) or a problem that did not fail the pipeline (Warning).
EXITED_AFTER_RESULT = "ExitedAfterResult"
RETRYING = "Retrying"
TRIAL_PRUNED = "TrialPruned"
FEWER_MEMBERS = "FewerMembers"
GATE_PASSED = "GatePassed"
SERVING_STARTED = "ServingStarted"
RESUMED = "Resumed"

# Condition reasons beyond the ones above.
PENDING = "Pending"
IN_PROGRESS = "InProgress"
FAILED = "Failed"
NO_GATE = "NoGate"
NO_FAILURE = "NoFailure"
SERVING_READY = "ServingReady"
