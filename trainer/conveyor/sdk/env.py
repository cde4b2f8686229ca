"""The environment through which a pipeline talks to user code: one list of names, read by
`conveyor.sdk` and written by the executors (`conveyor.operator.workloads`) and the trainer process.

Environment variables, not files or a service, because they reach every kind of user code the same way:
an entrypoint called inside Conveyor's trainer, a whole program under torchrun, and the processes that
program starts. Standard library only, like the rest of `conveyor.sdk`.

Who sets what:
- the executors (identity, the trial and the code): PIPELINE, WORKLOAD, ATTEMPT, TRIAL, PARAMS, CODE
  (locally) or CODE_ARCHIVE (in pods);
- the trainer process, from its own arguments, before it calls or starts user code: CONFIG, OUT, DATA.
"""

from __future__ import annotations

PIPELINE = "CONVEYOR_PIPELINE"  # the TrainingPipeline's name
WORKLOAD = "CONVEYOR_WORKLOAD"  # trial-0007, train, ...
ATTEMPT = "CONVEYOR_ATTEMPT"  # grows on every retry of the workload
TRIAL = "CONVEYOR_TRIAL"  # the Optuna trial number (trials only)
PARAMS = "CONVEYOR_PARAMS"  # JSON object: the trial's parameters by dotted manifest name, typed
CONFIG = "CONVEYOR_CONFIG"  # JSON object: the resolved training configuration in manifest form
OUT = "CONVEYOR_OUT"  # this workload's model directory (reports, checkpoints, the saved model)
DATA = "CONVEYOR_DATA"  # the prepared dataset directory
CODE = "CONVEYOR_CODE"  # the directory of the user's code (on sys.path; a command's working directory)
CODE_ARCHIVE = "CONVEYOR_CODE_ARCHIVE"  # Kubernetes: the packed code (a mounted ConfigMap) to unpack first

# A file in OUT that asks a running workload to stop (the local executor's way of saying what the
# progress endpoint's reply says on Kubernetes).
STOP_FILE = "stop"

# Subdirectory of OUT for a user loop's checkpoints (`conveyor.sdk.checkpoint_dir()`); the same
# directory Conveyor's own loop checkpoints into, so a retry of the workload finds it either way.
CHECKPOINT_DIR = "checkpoints"

# Kubernetes: where rank 0 POSTs its reports, the projected token it proves itself with, and the CA the
# endpoint's certificate must verify against (the same names `conveyor.trainer.progress` reads).
PROGRESS_URL = "CONVEYOR_PROGRESS_URL"
PROGRESS_TOKEN_FILE = "CONVEYOR_PROGRESS_TOKEN_FILE"
PROGRESS_CA_FILE = "CONVEYOR_PROGRESS_CA_FILE"
