"""The pipeline engine: pure decisions, no I/O.

`reconcile(spec, status, observations, now)` -> `Decision(actions, status)`. Imports neither kopf,
nor a Kubernetes client, nor torch; both executors (local processes, Kubernetes) call it the same way.
"""
