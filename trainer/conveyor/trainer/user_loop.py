"""Running the user's own loop: `training.entrypoint` (L2) and `training.command` (L3), and their result.

Conveyor's loop writes its result from what it measured; a user's loop is measured by what it reported
through `conveyor.sdk.report`, so both runners end the same way: `result_from_reports` reads the
reports in `progress.jsonl` and picks the best objective in the goal's direction. A run that never
reported the objective fails as `ObjectiveNotReported` (a tuner must never rank a trial on nothing),
and an exception in user code fails as `UserCodeError` with the end of its traceback.

L2, `python -m conveyor.trainer train` with `training.entrypoint` set (dispatched from
`conveyor.trainer.train.run`), on every rank under torchrun as Conveyor's own loop runs::

    torchrun --nproc-per-node 2 -m conveyor.trainer train --config C --data D --out O

sets `$CONVEYOR_CONFIG`/`OUT`/`DATA`, initialises the process group (`conveyor.trainer.distributed`) and
calls `function(config)` with the configuration in manifest form.

L3, the `command` stage: each worker runs, *not* under torchrun::

    python -m conveyor.trainer command --config C --data D --out O -- python train.py --lr 0.01

which sets the same environment and starts `python -m torch.distributed.run --no-python <argv>` in
`$CONVEYOR_CODE` (`python script.py` / `python -m module` through `python_program`, so that a rank
leaves without the teardown where gloo now and then aborts; torchrun takes nodes, node rank,
processes and rendezvous from the `PET_*` environment the executors set; without any, a single-node
`--standalone` run), relays signals to it, tees its stderr to keep the last lines for a failure
message, and exits with its status. Only node rank 0 writes the result, after torchrun exited 0
everywhere it matters: that node's processes include rank 0, the one that reports.

Resuming is the user's: `conveyor.sdk.checkpoint_dir()` is in OUT, which a retry of the workload
reuses, so a loop that loads its last checkpoint on start continues, and its earlier reports still
count towards the result.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from conveyor.sdk import env
from conveyor.trainer import progress, python_program
from conveyor.trainer.artifacts import CARD_FILE
from conveyor.trainer.config import EXIT_INVALID_INPUT, ConfigError, TrainerConfig, load_config
from conveyor.trainer.usercode import TRACEBACK_LINES, entrypoint, last_lines

MESSAGE_LIMIT = 2000  # characters of a failure message kept in result.json (and the status)
STDERR_LINES = 400  # the tail of a command's stderr kept to find its traceback in
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"
TORCHRUN_FAILED = re.compile(r"failed \(exitcode: -?\d+\)")  # torchrun's report of a failed worker
TORCHRUN_LOG = re.compile(r"^[DIWEC]\d{4} [\d:.]+ \d+ \S*torch/distributed/")  # torchrun's own log lines


class UserCodeError(Exception):
    """User code raised or exited non-zero; the message is the end of its traceback."""


def result_from_reports(
    out_dir: Path, metric: str, goal: str, *, stopped_early: bool = False, duration_seconds: float = 0.0
) -> dict[str, Any]:
    """The result of a user loop from its written reports (`conveyor.sdk.report`) in `out_dir`: the
    report with the best `metric` in the `goal` direction ("maximize" or "minimize")."""
    reports = [event for event in progress.read_events(out_dir) if event.get("event") == "epoch"]
    scored = [event for event in reports if isinstance(event.get("metrics", {}).get(metric), (int, float))]
    if not scored:
        return {
            "status": "failed",
            "reason": "ObjectiveNotReported",
            "message": f"the training code never reported the objective metric {metric!r}: call "
            f'conveyor.sdk.report(step, {{"{metric}": value, ...}}) after each evaluation '
            f"({len(reports)} reports without it)",
        }
    pick = max if goal == "maximize" else min
    best = pick(scored, key=lambda event: float(event["metrics"][metric]))
    return {
        "status": "succeeded",
        "objective": {"metric": metric, "value": float(best["metrics"][metric])},
        "metrics": best["metrics"],
        "epochsRun": len(reports),
        "bestEpoch": best.get("epoch"),
        "bestStep": best.get("step"),
        "stoppedEarly": stopped_early,
        "durationSeconds": round(duration_seconds, 3),
    }


def set_environment(config: TrainerConfig, data_dir: Path, out_dir: Path, environ: Any = os.environ) -> None:
    """What the SDK reads: the configuration and the directories (absolute: a command runs elsewhere)."""
    environ[env.CONFIG] = json.dumps(config.to_wire(), separators=(",", ":"))
    environ[env.OUT] = str(out_dir.absolute())
    environ[env.DATA] = str(data_dir.absolute())


def asked_to_stop(out_dir: Path) -> bool:
    return (out_dir / env.STOP_FILE).exists()


def write_result(out_dir: Path, config: TrainerConfig, started: float) -> dict[str, Any]:
    task = config.task
    result = result_from_reports(
        out_dir,
        task.metric,
        "maximize" if task.maximize else "minimize",
        stopped_early=asked_to_stop(out_dir),
        duration_seconds=time.monotonic() - started,
    )
    progress.write_result(out_dir, result)
    return result


def failure(out_dir: Path, message: str) -> None:
    progress.write_result(
        out_dir, {"status": "failed", "reason": "UserCodeError", "message": message[-MESSAGE_LIMIT:]}
    )


# --- L2: training.entrypoint -------------------------------------------------------------------


def run_entrypoint(config: TrainerConfig, data_dir: Path, out_dir: Path) -> int:
    """Call `training.entrypoint` on this rank and, on rank 0, write the result; the exit status."""
    from conveyor.sdk import flush
    from conveyor.trainer import distributed

    started = time.monotonic()
    reference = config.training.entrypoint
    assert reference is not None
    code = os.environ.get(env.CODE)
    if code and code not in sys.path:
        sys.path.insert(0, code)
    function = entrypoint(reference, "training.entrypoint", ("config",))
    out_dir.mkdir(parents=True, exist_ok=True)
    set_environment(config, data_dir, out_dir)
    ctx = distributed.setup()
    try:
        try:
            function(config.to_wire())
        except SystemExit as error:
            if error.code not in (None, 0):
                raise UserCodeError(f"{reference} exited with status {error.code}") from error
        except Exception as error:
            raise UserCodeError(last_lines(error)) from error
        flush()
        if not ctx.is_main:
            return 0
        result = write_result(out_dir, config, started)
        return 0 if result["status"] == "succeeded" else EXIT_INVALID_INPUT
    except UserCodeError as error:
        print(f"error: training.entrypoint {reference} failed:\n{error}", file=sys.stderr, flush=True)
        if ctx.is_main and final_attempt():
            failure(out_dir, str(error))
        return 1
    finally:
        distributed.cleanup(ctx)


def final_attempt() -> bool:
    """torchrun will not restart this worker (a restarted one would report instead)."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return restarts >= int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))


# --- L3: the `command` stage -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TrainerConfig as inline JSON or a JSON/YAML file")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    parser.add_argument("--out", required=True, type=Path, help="model directory the program writes into")
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, help="after --: the program and its arguments, {{params}} rendered"
    )


def torchrun_argv(argv: list[str], environ: Any = os.environ) -> list[str]:
    """`python -m torch.distributed.run --no-python <argv>`; `python`/`python3` become this interpreter
    (the one with torch and conveyor), running a script or module through `python_program`, and with
    no rendezvous in the environment a standalone run."""
    program = python_program.wrapped(argv) or [
        sys.executable if argv[0] in python_program.PYTHONS else argv[0],
        *argv[1:],
    ]
    standalone = (
        [] if environ.get("PET_RDZV_ENDPOINT") or environ.get("PET_MASTER_PORT") else ["--standalone"]
    )
    return [sys.executable, "-m", "torch.distributed.run", *standalone, "--no-python", *program]


def tee(source: IO[bytes], sink: IO[bytes], tail: collections.deque[str]) -> None:
    for line in iter(source.readline, b""):
        sink.write(line)
        sink.flush()
        tail.append(line.decode(errors="replace").rstrip("\n"))


def before_torchrun_report(lines: list[str]) -> list[str]:
    """A command's stderr up to torchrun's own failure report (which starts at the "failed (exitcode:
    N)" line and names only the exit code)."""
    for index, line in enumerate(lines):
        if TORCHRUN_FAILED.search(line):
            return lines[:index]
    return lines


def traceback_tail(lines: list[str], count: int = TRACEBACK_LINES) -> str:
    """The user's error in a command's stderr: its last lines before torchrun's failure report."""
    kept = [line for line in before_torchrun_report(lines) if line.strip() and not TORCHRUN_LOG.match(line)]
    return "\n".join(kept[-count:])


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("training.command: no program to run; give it, e.g. [python, train.py]")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        if node_rank() == 0:
            progress.write_result(
                args.out, {"status": "failed", "reason": "InvalidConfig", "message": str(error)}
            )
        raise
    args.out.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    set_environment(config, args.data, args.out, child_env)
    code = os.environ.get(env.CODE)
    command = torchrun_argv(argv, child_env)
    try:
        child = subprocess.Popen(command, cwd=code or None, env=child_env, stderr=subprocess.PIPE)
    except OSError as error:
        raise ConfigError(f"training.command: cannot start {command[0]}: {error}") from error
    relayed = [signal.SIGTERM, signal.SIGINT]
    previous = {sig: signal.signal(sig, lambda number, _frame: child.send_signal(number)) for sig in relayed}
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    assert child.stderr is not None
    reader = threading.Thread(target=tee, args=(child.stderr, sys.stderr.buffer, tail), daemon=True)
    reader.start()
    try:
        status = child.wait()
        reader.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if node_rank() != 0:  # rank 0's node judges the run; its model is not on this node to check
        return 0 if status != 0 and only_teardown_abort(list(tail)) else status
    if status != 0 and finished_before_teardown_abort(list(tail), args.out):
        print(
            f"warning: training.command exited with status {status} from gloo's known abort at interpreter "
            "teardown, after the program had saved its model; the run counts",
            file=sys.stderr,
            flush=True,
        )
        status = 0
    if status != 0:
        message = traceback_tail(list(tail)) or f"exited with status {status}"
        failure(args.out, f"training.command {' '.join(argv)!r} failed (status {status}):\n{message}")
        return status
    result = write_result(args.out, config, started)
    return 0 if result["status"] == "succeeded" else EXIT_INVALID_INPUT


def finished_before_teardown_abort(lines: list[str], out_dir: Path) -> bool:
    """torch's gloo backend now and then aborts a process at interpreter teardown, after all its work
    ("terminate called without an active exception"; see process_exit), and torchrun then fails the
    run. It counts as finished when that abort is the only error and the program already saved its model."""
    return only_teardown_abort(lines) and (out_dir / CARD_FILE).is_file()


def only_teardown_abort(lines: list[str]) -> bool:
    """The command's only error is gloo's teardown abort: no Python traceback of its own."""
    text = "\n".join(before_torchrun_report(lines))  # torchrun's report has a traceback of its own
    return GLOO_TEARDOWN_ABORT in text and "Traceback (most recent call last)" not in text


def node_rank() -> int:
    return int(os.environ.get("PET_NODE_RANK") or os.environ.get("GROUP_RANK") or "0")
