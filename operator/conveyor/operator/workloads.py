"""The workload contract: what one stage runs, and the environment of distributed jobs.

A `Workload` is executor-independent: the engine decides it, the local executor renders it into
subprocesses on localhost and the Kubernetes executor into pods, and both use the functions here so the
two cannot drift. Artifact paths inside a workload are RELATIVE to the run root; `trainer_argv` renders
them against the root an executor mounts (`./runs/<name>` locally, the storage volume in a pod).

Distributed jobs (every `train`: the trials and the final training) run under torchrun with static
rendezvous on rank 0's address (on Kubernetes, a worker of one process runs the trainer itself with RANK
= its completion index, no agent in front of it: see `kubernetes.builders`). The environment carries
both torchrun's `PET_*` forms of its flags and the classic `MASTER_ADDR`/`MASTER_PORT`/`WORLD_SIZE`, as
Kubeflow does, so a plain `torchrun` in the image picks them up. The rendezvous timeout is long (15 min)
because rank 0's DNS name may resolve late on a busy cluster (pytorch#73682, kubeflow
pytorch-operator#125); torchrun itself does not restart workers (`--max-restarts 0`) because one node
restarting alone under static rendezvous hangs the others: the engine restarts the whole gang instead,
and the trainer resumes from its checkpoint.

User code sees the pipeline through the same contract (`conveyor.sdk.env`): the pipeline, workload,
attempt, trial and its typed parameters (`CONVEYOR_PARAMS`, JSON), and where the user's code is (a
directory locally, `CONVEYOR_CODE`; a packed archive in pods, `CONVEYOR_CODE_ARCHIVE`, which the trainer
unpacks and puts on the path itself). A train workload whose config has `training.command` runs the
trainer's `command` stage once per worker, not under torchrun: the stage starts torchrun itself around
the user's program (it reads the same `PET_*` environment), with `{{params.x}}` already rendered here
(`command_template`).

The names `contract_env` writes are the names a manifest's `spec.env` may not set (`RESERVED_ENV`,
enforced by `api.rules`), derived from it so the two cannot drift; `PYTHONUNBUFFERED` and
`OMP_NUM_THREADS` are defaults the manifest may override.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from conveyor.operator import command_template
from conveyor.operator.api.status import StageName
from conveyor.sdk import env as sdk_env

# EXIT_INVALID_INPUT, the trainer's exit status for an invalid config or dataset, is re-exported for the
# executors: they report it as a permanent failure (reason InvalidInput) and the engine does not retry.
from conveyor.trainer.config import EXIT_INVALID_INPUT as EXIT_INVALID_INPUT
from conveyor.trainer.config import PVC_ROOT_ENV, ServingSpec
from conveyor.trainer.progress import PROGRESS_CA_FILE_ENV, PROGRESS_TOKEN_FILE_ENV, PROGRESS_URL_ENV

Command = Literal["prepare", "train", "evaluate", "ensemble"]

PERMANENT_REASONS = frozenset({"InvalidInput", "InvalidConfig", "DataError", "ObjectiveNotReported"})
DEFAULT_MASTER_PORT = 29500
RENDEZVOUS_TIMEOUT_SECONDS = 900
TRAINER_MODULE = "conveyor.trainer"


@dataclass(frozen=True)
class Workload:
    """One run of a trainer command. `name` is stable and unique within the pipeline (prepare,
    trial-0007, train, evaluate-model, ensemble, evaluate-ensemble); `attempt` grows on every retry or
    restart, so executors key what they create by (name, attempt) and treat a repeated start as done."""

    name: str
    stage: StageName
    command: Command
    out: str  # output directory, relative to the run root
    attempt: int = 0
    data: str = "data"  # the prepared dataset, relative to the run root
    config: Mapping[str, Any] | None = None  # TrainerConfig in wire form (prepare, train)
    models: tuple[str, ...] = ()  # model directories read: evaluate (one), ensemble (the members)
    method: str | None = None  # ensemble method
    trial: int | None = None  # Optuna trial number (trials only)
    params: Mapping[str, Any] = field(default_factory=dict)  # the trial's parameters, by dotted name
    # Epochs after which a trial waits for the pruner's verdict (`tuning.verdict_epochs`); the local
    # executor delivers it, so a pruned trial trains nothing past its rung.
    verdict_epochs: tuple[int, ...] = ()
    distributed: bool = False  # run under torchrun with `workers` x `processes_per_worker`
    workers: int = 1
    processes_per_worker: int = 1
    gpu: int = 0
    cpu: str = "1"
    memory: str = "2Gi"
    env: tuple[tuple[str, str], ...] = ()  # the user's extra environment (reserved names refused)
    # Filled in by the executor, which knows them (the engine decides from the spec alone):
    pipeline: str = ""  # the TrainingPipeline's name
    code: str | None = None  # the user's code directory as the processes see it (local runs)
    code_archive: str | None = None  # the packed code directory to unpack first (pods)

    @property
    def world_size(self) -> int:
        return self.workers * self.processes_per_worker if self.distributed else 1

    @property
    def user_command(self) -> list[str] | None:
        """`training.command` of a train workload's config (the user's whole program), else None."""
        if self.command != "train":
            return None
        command = ((self.config or {}).get("training") or {}).get("command")
        return list(command) if command else None

    @property
    def key(self) -> str:
        """Unique per attempt: what an executor names the things it creates for this run."""
        return f"{self.name}-{self.attempt}"


def _under(root: str, relative: str) -> str:
    return posixpath.join(root, relative) if root else relative


def config_json(workload: Workload) -> str:
    return json.dumps(dict(workload.config or {}), separators=(",", ":"), sort_keys=True)


def trainer_argv(workload: Workload, root: str) -> list[str]:
    """The arguments after `python -m conveyor.trainer`, with artifact paths under `root`."""
    data = _under(root, workload.data)
    out = _under(root, workload.out)
    if workload.command == "prepare":
        return ["prepare", "--config", config_json(workload), "--out", out]
    if workload.command == "train":
        common = ["--config", config_json(workload), "--data", data, "--out", out]
        program = workload.user_command
        if program is not None:
            return ["command", *common, "--", *command_template.render(program, workload.params)]
        return ["train", *common]
    if workload.command == "evaluate":
        return ["evaluate", "--model", _under(root, workload.models[0]), "--data", data, "--out", out]
    members = [_under(root, m) for m in workload.models]
    return [
        "ensemble",
        "--method",
        workload.method or "softVoting",
        "--data",
        data,
        "--out",
        out,
        "--models",
        *members,
    ]


def serve_argv(
    model: str, serving: ServingSpec, root: str, port: int | None = None, name: str | None = None
) -> list[str]:
    """The arguments after `python -m conveyor.trainer` for serving `model` (relative to root); `name`
    is the model name clients use in URLs (the pipeline's name)."""
    named = ["--name", name] if name else []
    return [
        "serve",
        "--model",
        _under(root, model),
        "--port",
        str(port if port is not None else serving.port),
        "--max-batch-size",
        str(serving.max_batch_size),
        "--max-latency-ms",
        str(serving.max_latency_ms),
        "--quantization",
        serving.quantization,
        *named,
    ]


def python_argv(workload: Workload, root: str, python: str = "python") -> list[str]:
    """A single-process workload (prepare, evaluate, ensemble): the whole command line."""
    return [python, "-m", TRAINER_MODULE, *trainer_argv(workload, root)]


def _threads_per_process(workload: Workload) -> int:
    """CPU threads for each training process: the worker's CPU share, so trials side by side on a
    small machine do not oversubscribe it."""
    match = re.fullmatch(r"([0-9.]+)(m?)", workload.cpu)
    if not match:
        return 1
    cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    return max(1, math.floor(cores / max(1, workload.processes_per_worker)))


def contract_env(
    workload: Workload,
    master_addr: str = "127.0.0.1",
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: int | str = 0,
) -> dict[str, str]:
    """What the contract owns in the environment of worker `node_rank`: the workload's identity and, when
    distributed, torchrun's rendezvous. In pods `node_rank` is a `$(VAR)` reference expanded by the
    kubelet (the Job completion index)."""
    env = {
        sdk_env.PIPELINE: workload.pipeline,
        sdk_env.WORKLOAD: workload.name,
        sdk_env.ATTEMPT: str(workload.attempt),
        sdk_env.PARAMS: json.dumps(dict(workload.params), separators=(",", ":"), sort_keys=True),
    }
    if workload.trial is not None:
        env[sdk_env.TRIAL] = str(workload.trial)
    if workload.code is not None:
        env[sdk_env.CODE] = workload.code
    if workload.code_archive is not None:
        env[sdk_env.CODE_ARCHIVE] = workload.code_archive
    if not workload.distributed:
        return env
    nnodes, nproc = workload.workers, workload.processes_per_worker
    endpoint = f"{master_addr}:{master_port}"  # what static rendezvous would derive from the two
    env.update(
        {
            "PET_NNODES": str(nnodes),
            "PET_NPROC_PER_NODE": str(nproc),
            "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": master_addr,
            "PET_MASTER_PORT": str(master_port),
            "PET_RDZV_BACKEND": "static",
            "PET_RDZV_ENDPOINT": endpoint,
            "PET_RDZV_ID": workload.key,
            "PET_RDZV_CONF": f"timeout={RENDEZVOUS_TIMEOUT_SECONDS}",
            "PET_MAX_RESTARTS": "0",
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(nnodes * nproc),
        }
    )
    return env


def default_env(workload: Workload) -> dict[str, str]:
    """Environment every workload gets unless the manifest's `spec.env` says otherwise."""
    return {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(_threads_per_process(workload))}


# What torchrun itself sets in every training process it starts, whatever the worker's environment says.
TORCHRUN_PROCESS_ENV = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# What the trainer process sets from its own arguments before it calls or starts user code.
TRAINER_PROCESS_ENV = (sdk_env.CONFIG, sdk_env.OUT, sdk_env.DATA)
# The names a manifest's `spec.env` may not set: what `contract_env` writes (a distributed workload's is
# the superset), what torchrun and the trainer set per process, and the pvc:// mount root the
# Kubernetes executor sets in pods that read a pvc:// data source, and the progress endpoint it gives
# every workload pod.
RESERVED_ENV: tuple[str, ...] = (
    *contract_env(Workload("", "train", "train", "", distributed=True, trial=0, code="", code_archive="")),
    *TORCHRUN_PROCESS_ENV,
    *TRAINER_PROCESS_ENV,
    PVC_ROOT_ENV,
    PROGRESS_URL_ENV,
    PROGRESS_TOKEN_FILE_ENV,
    PROGRESS_CA_FILE_ENV,
)


def worker_env(
    workload: Workload,
    master_addr: str = "127.0.0.1",
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: int | str = 0,
) -> dict[str, str]:
    """The environment of worker `node_rank` (same on localhost and in pods): the defaults, then the
    manifest's `spec.env`, then the contract."""
    return {
        **default_env(workload),
        **dict(workload.env),
        **contract_env(workload, master_addr, master_port, node_rank),
    }


def torchrun_argv(
    workload: Workload,
    root: str,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: int | str = 0,
    python: str = "python",
) -> list[str]:
    """`python -m torch.distributed.run ... -m conveyor.trainer <trainer_argv>` for one worker."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(workload.workers),
        "--nproc-per-node",
        str(workload.processes_per_worker),
        "--node-rank",
        str(node_rank),
        "--master-addr",
        master_addr,
        "--master-port",
        str(master_port),
        "--rdzv-conf",
        f"timeout={RENDEZVOUS_TIMEOUT_SECONDS}",
        "--max-restarts",
        "0",
        "-m",
        TRAINER_MODULE,
        *trainer_argv(workload, root),
    ]


def command_argv(
    workload: Workload,
    root: str,
    master_addr: str = "127.0.0.1",
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: int | str = 0,
    python: str = "python",
) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of worker `node_rank`: torchrun for distributed workloads, plain
    python otherwise (and for the user's own program, whose `command` stage starts torchrun itself)."""
    env = worker_env(workload, master_addr, master_port, node_rank)
    if workload.distributed and workload.user_command is None:
        return torchrun_argv(workload, root, master_addr, master_port, node_rank, python), env
    return python_argv(workload, root, python), env
