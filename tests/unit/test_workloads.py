"""The workload contract: trainer command lines and the torchrun environment."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conveyor.operator.command_template import TemplateError
from conveyor.operator.workloads import (
    RESERVED_ENV,
    TRAINER_PROCESS_ENV,
    Workload,
    command_argv,
    contract_env,
    serve_argv,
    torchrun_argv,
    trainer_argv,
    worker_env,
)
from conveyor.trainer.config import ServingSpec

TRIAL = Workload(
    "trial-0007",
    "tune",
    "train",
    "trials/trial-0007",
    attempt=1,
    config={"model": {"dropout": 0.2}},
    trial=7,
    params={"model.dropout": 0.2},
    distributed=True,
    workers=2,
    processes_per_worker=2,
    cpu="4",
)


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        (
            Workload("prepare", "prepare", "prepare", "data", config={"a": 1}),
            ["prepare", "--config", '{"a":1}', "--out", "/runs/x/data"],
        ),
        (
            TRIAL,
            [
                "train",
                "--config",
                '{"model":{"dropout":0.2}}',
                "--data",
                "/runs/x/data",
                "--out",
                "/runs/x/trials/trial-0007",
            ],
        ),
        (
            Workload("evaluate-model", "evaluate", "evaluate", "evaluation/model", models=("model",)),
            [
                "evaluate",
                "--model",
                "/runs/x/model",
                "--data",
                "/runs/x/data",
                "--out",
                "/runs/x/evaluation/model",
            ],
        ),
        (
            Workload(
                "ensemble",
                "ensemble",
                "ensemble",
                "ensemble",
                models=("trials/trial-0001", "trials/trial-0003"),
                method="hardVoting",
            ),
            [
                "ensemble",
                "--method",
                "hardVoting",
                "--data",
                "/runs/x/data",
                "--out",
                "/runs/x/ensemble",
                "--models",
                "/runs/x/trials/trial-0001",
                "/runs/x/trials/trial-0003",
            ],
        ),
    ],
    ids=["prepare", "train", "evaluate", "ensemble"],
)
def test_trainer_argv(workload: Workload, expected: list[str]) -> None:
    assert trainer_argv(workload, "/runs/x") == expected


def test_config_travels_as_json_not_templating() -> None:
    argv = trainer_argv(TRIAL, "")
    assert json.loads(argv[argv.index("--config") + 1]) == {"model": {"dropout": 0.2}}
    assert argv[-1] == "trials/trial-0007"


def test_torchrun_env_contract() -> None:
    env = worker_env(TRIAL, "digits-trial-0007-0.digits", 29500, node_rank=1)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "2" and env["PET_NODE_RANK"] == "1"
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "digits-trial-0007-0.digits"
    assert env["PET_MASTER_PORT"] == env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "4" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PET_RDZV_BACKEND"] == "static" and "timeout=" in env["PET_RDZV_CONF"]
    assert env["PET_RDZV_ENDPOINT"] == "digits-trial-0007-0.digits:29500"
    assert env["PET_RDZV_ID"] == "trial-0007-1"
    assert env["PET_MAX_RESTARTS"] == "0"
    assert env["OMP_NUM_THREADS"] == "2"  # 4 CPUs shared by 2 processes
    assert env["CONVEYOR_WORKLOAD"] == "trial-0007" and env["CONVEYOR_ATTEMPT"] == "1"


def test_user_env_cannot_override_the_contract() -> None:
    workload = Workload(
        "train",
        "train",
        "train",
        "model",
        distributed=True,
        env=(("MASTER_PORT", "1"), ("HF_HOME", "/cache")),
    )
    env = worker_env(workload, "127.0.0.1")
    assert env["MASTER_PORT"] == "29500" and env["HF_HOME"] == "/cache"


@pytest.mark.parametrize("distributed", [True, False])
def test_the_user_env_overrides_the_defaults(distributed: bool) -> None:
    user = (("OMP_NUM_THREADS", "8"), ("PYTHONUNBUFFERED", "0"))
    workload = Workload("train", "train", "train", "model", distributed=distributed, env=user)
    _, env = command_argv(workload, "/r")
    assert env["OMP_NUM_THREADS"] == "8" and env["PYTHONUNBUFFERED"] == "0"


def test_reserved_env_is_the_contract() -> None:
    """What `spec.env` may not set is derived from what the contract writes, plus what torchrun sets per
    process, and the pvc:// mount root and progress endpoint the Kubernetes executor sets (tested with the
    builders)."""
    distributed = contract_env(TRIAL, "h", 1, 0)
    kubernetes = {
        "CONVEYOR_PVC_ROOT",
        "CONVEYOR_PROGRESS_URL",
        "CONVEYOR_PROGRESS_TOKEN_FILE",
        "CONVEYOR_PROGRESS_CA_FILE",
    }
    trainer = {"CONVEYOR_CONFIG", "CONVEYOR_OUT", "CONVEYOR_DATA"}
    code = {"CONVEYOR_CODE", "CONVEYOR_CODE_ARCHIVE"}  # set when the pipeline has code
    assert set(TRAINER_PROCESS_ENV) == trainer
    assert set(RESERVED_ENV) == {
        *distributed,
        *code,
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        *trainer,
        *kubernetes,
    }
    single = contract_env(Workload("prepare", "prepare", "prepare", "data"))
    identity = {"CONVEYOR_PIPELINE", "CONVEYOR_WORKLOAD", "CONVEYOR_ATTEMPT", "CONVEYOR_PARAMS"}
    assert set(single) == identity < set(distributed)
    assert "CONVEYOR_TRIAL" in distributed
    assert "CONVEYOR_RUN_ROOT" not in RESERVED_ENV  # nothing sets it


def test_torchrun_argv() -> None:
    argv = torchrun_argv(TRIAL, "/runs/x", "127.0.0.1", 29511, node_rank=1, python="/venv/bin/python")
    assert argv[:3] == ["/venv/bin/python", "-m", "torch.distributed.run"]
    flags = dict(zip(argv[3:17:2], argv[4:18:2], strict=True))
    assert flags["--nnodes"] == "2" and flags["--nproc-per-node"] == "2" and flags["--node-rank"] == "1"
    assert flags["--master-addr"] == "127.0.0.1" and flags["--master-port"] == "29511"
    module = argv.index("-m", 3)
    assert argv[module + 1] == "conveyor.trainer" and argv[module + 2] == "train"


def test_command_argv_picks_torchrun_only_for_distributed() -> None:
    argv, env = command_argv(TRIAL, "/r")
    assert "torch.distributed.run" in argv and "PET_NNODES" in env
    single = Workload("prepare", "prepare", "prepare", "data", config={}, cpu="500m")
    argv, env = command_argv(single, "/r")
    assert argv[:3] == ["python", "-m", "conveyor.trainer"] and "PET_NNODES" not in env
    assert env["OMP_NUM_THREADS"] == "1"


def test_serve_argv() -> None:
    argv = serve_argv("ensemble", ServingSpec(quantization="int8", max_batch_size=16), "/r", port=9000)
    assert argv[:3] == ["serve", "--model", "/r/ensemble"]
    assert argv[argv.index("--port") + 1] == "9000" and argv[argv.index("--quantization") + 1] == "int8"


COMMAND_TRIAL = dataclasses.replace(
    TRIAL,
    config={
        "training": {
            "command": [
                "python",
                "train.py",
                "--lr",
                "{{params.optimizer.learningRate}}",
                "--name={{params.model.options.name}}",
                "--amp",
                "{{ params.training.amp }}",
            ]
        }
    },
    params={"optimizer.learningRate": 0.001, "model.options.name": "a b;rm", "training.amp": True},
)


def test_the_user_program_runs_once_per_worker_with_its_parameters_rendered() -> None:
    argv, env = command_argv(COMMAND_TRIAL, "/r", "rank0", 29500, node_rank=1, python="/py")
    assert argv[:4] == ["/py", "-m", "conveyor.trainer", "command"]  # no torchrun: the stage starts it
    assert argv[argv.index("--data") + 1] == "/r/data" and argv[argv.index("--out") + 1].startswith("/r/")
    program = argv[argv.index("--") + 1 :]
    # A whole-argument placeholder is one argv element as it is; an embedded one is shell-quoted.
    assert program == ["python", "train.py", "--lr", "0.001", "--name='a b;rm'", "--amp", "true"]
    assert env["PET_NNODES"] == "2" and env["PET_NODE_RANK"] == "1" and env["PET_MASTER_ADDR"] == "rank0"


def test_the_final_training_renders_the_best_trials_values() -> None:
    final = dataclasses.replace(COMMAND_TRIAL, name="train", trial=None, params={**COMMAND_TRIAL.params})
    argv = trainer_argv(final, "/r")
    assert argv[0] == "command" and "0.001" in argv


def test_a_placeholder_without_a_value_is_an_error_naming_it() -> None:
    broken = dataclasses.replace(COMMAND_TRIAL, params={"optimizer.learningRate": 0.1})
    with pytest.raises(TemplateError, match=r"\{\{params.model.options.name\}\}"):
        trainer_argv(broken, "/r")


def test_user_code_reaches_the_environment() -> None:
    workload = dataclasses.replace(TRIAL, pipeline="digits", code="/src", code_archive=None)
    env = contract_env(workload, "h", 1, 0)
    assert env["CONVEYOR_PIPELINE"] == "digits" and env["CONVEYOR_TRIAL"] == "7"
    assert json.loads(env["CONVEYOR_PARAMS"]) == {"model.dropout": 0.2}  # typed, not strings
    assert env["CONVEYOR_CODE"] == "/src" and "CONVEYOR_CODE_ARCHIVE" not in env
    packed = contract_env(dataclasses.replace(TRIAL, code_archive="/code/code.tar.gz"))
    assert packed["CONVEYOR_CODE_ARCHIVE"] == "/code/code.tar.gz" and "CONVEYOR_CODE" not in packed
    assert "CONVEYOR_TRIAL" not in contract_env(dataclasses.replace(TRIAL, trial=None))
