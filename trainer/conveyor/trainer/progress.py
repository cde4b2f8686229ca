"""How a workload reports: per-epoch progress events and one durable final result.

Progress is one JSON object per line, written to stdout (so `kubectl logs` reads well) and appended
to `progress.jsonl` in the model directory (so the local executor, the learning-curve plot and the
operator can follow it). The final result goes to `result.json` and, when the file
`/dev/termination-log` exists (Kubernetes), a summary of at most 4 KiB goes there too: the
container's termination message survives an operator that was down when the pod finished.

Event shapes (all keys camelCase)::

    {"event": "epoch", "epoch": 3, "epochs": 30, "metrics": {"loss": .., "accuracy": .., "trainLoss": ..},
     "samplesPerSecond": 1234.5, "etaSeconds": 40.1, "elapsedSeconds": 5.2}
    {"event": "result", "status": "succeeded" | "failed", "epochsRun": 12, "bestEpoch": 9,
     "objective": {"metric": "accuracy", "value": 0.97}, "metrics": {...}, "reason": "..", "message": ".."}

On stdout only, every training process also prints where its start-up went, once, at its first step
(`conveyor.trainer.startup`)::

    {"event": "startup", "rank": 0, "worldSize": 2, "at": {"process": .., "imported": .., ...}}

A trial waits for the tuner's verdict after the epochs named in `CONVEYOR_VERDICT_EPOCHS` (ASHA's rungs,
set by the local executor): rank 0 reports the epoch, then polls the model directory's `judged` file
(`{"epoch": n}`, written by the executor once the engine has seen epoch n and not stopped the trial)
before it trains on, so a pruned trial is stopped at its rung instead of training on while the stop
travels, as a Ray Tune trial waits in `report`. No verdict within `VERDICT_TIMEOUT_SECONDS` (nobody
judging) and it trains on. Pods are not told to wait: on Kubernetes a stop takes the operator's
reconcile to arrive, and the trial trains on meanwhile.

Validation metrics use the evaluation's names (`accuracy`, `f1`, `rmse`, ..., `loss` for the
validation loss); the training loss is `trainLoss`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from conveyor.trainer.artifacts import PROGRESS_FILE, RESULT_FILE, write_json_atomic

# Where a pod pushes its epoch events, and the projected token it proves itself with (set by the
# Kubernetes executor; absent locally, where progress.jsonl is read instead).
PROGRESS_URL_ENV = "CONVEYOR_PROGRESS_URL"
PROGRESS_TOKEN_FILE_ENV = "CONVEYOR_PROGRESS_TOKEN_FILE"
# The CA file the endpoint's certificate must verify against (set with an https URL); with one set,
# nothing is sent unless over verified https.
PROGRESS_CA_FILE_ENV = "CONVEYOR_PROGRESS_CA_FILE"

# The epochs after which a trial waits for its verdict ("1,3,9"), and where the executor gives it.
VERDICT_EPOCHS_ENV = "CONVEYOR_VERDICT_EPOCHS"
VERDICT_FILE = "judged"
VERDICT_TIMEOUT_SECONDS = 30.0
VERDICT_POLL_SECONDS = 0.01

TERMINATION_LOG = Path(os.environ.get("CONVEYOR_TERMINATION_LOG", "/dev/termination-log"))
TERMINATION_LIMIT = 4096


def epoch_event(
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    samples_per_second: float,
    elapsed_seconds: float,
) -> dict[str, Any]:
    per_epoch = elapsed_seconds / max(epoch, 1)
    return {
        "event": "epoch",
        "epoch": epoch,
        "epochs": epochs,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "samplesPerSecond": round(samples_per_second, 1),
        "etaSeconds": round(per_epoch * (epochs - epoch), 1),
        "elapsedSeconds": round(elapsed_seconds, 2),
    }


def emit(model_dir: Path, event: dict[str, Any]) -> None:
    """Print an event and append it to the progress file (one line, flushed); on Kubernetes also push
    epoch events to the operator (`push`)."""
    line = json.dumps(event, separators=(",", ":"))
    print(line, flush=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / PROGRESS_FILE).open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
    if event.get("event") == "epoch":
        push(line)


def push(line: str, timeout: float = 1.0) -> bool:
    """POST one epoch event to the operator's progress endpoint (`CONVEYOR_PROGRESS_URL`) with the
    pod's projected token (audience conveyor.dev), over https verified against the CA in
    `CONVEYOR_PROGRESS_CA_FILE` alone when that is set (a plain http URL then sends nothing). Best
    effort: a short timeout, every error ignored (a certificate that does not verify included), so
    training never waits on or fails because of the operator; results travel durably elsewhere."""
    url = os.environ.get(PROGRESS_URL_ENV)
    token_file = os.environ.get(PROGRESS_TOKEN_FILE_ENV)
    ca_file = os.environ.get(PROGRESS_CA_FILE_ENV)
    if not url or not token_file or os.environ.get("RANK", "0") != "0":
        return False
    if ca_file and not url.startswith("https://"):
        return False  # a CA is configured: never send the token in the clear
    import ssl
    import urllib.request

    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        token = Path(token_file).read_text().strip()  # re-read: the kubelet rotates projected tokens
        request = urllib.request.Request(
            url.rstrip("/") + "/v1/progress",
            data=line.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return bool(200 <= reply.status < 300)
    except Exception:  # progress is best effort by design
        return False


def verdict_epochs() -> frozenset[int]:
    """The epochs after which this workload waits for the tuner's verdict (none unless told)."""
    named = os.environ.get(VERDICT_EPOCHS_ENV, "")
    return frozenset(int(epoch) for epoch in named.split(",") if epoch.strip())


def judged_epoch(model_dir: Path) -> int:
    """The last epoch the executor says was judged (0 when none or mid-write)."""
    try:
        return int(json.loads((model_dir / VERDICT_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def await_verdict(model_dir: Path, epoch: int, timeout: float = VERDICT_TIMEOUT_SECONDS) -> bool:
    """Wait until `epoch` has been judged and the trial goes on (a trial the tuner stops is stopped
    while it waits); False when no verdict came within `timeout`."""
    deadline = time.monotonic() + timeout
    while judged_epoch(model_dir) < epoch:
        if time.monotonic() >= deadline:
            return False
        time.sleep(VERDICT_POLL_SECONDS)
    return True


def read_events(model_dir: Path) -> list[dict[str, Any]]:
    """Every complete event so far; a half-written last line (a writer mid-append) is ignored."""
    path = model_dir / PROGRESS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def termination_summary(result: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """The result as compact JSON within `limit` bytes, dropping detail before the essentials."""
    compact = dict(result)
    text = json.dumps(compact, separators=(",", ":"))
    for droppable in ("metrics", "message"):
        if len(text.encode()) <= limit:
            break
        compact.pop(droppable, None)
        text = json.dumps(compact, separators=(",", ":"))
    return text.encode()[:limit].decode(errors="ignore")


def write_result(model_dir: Path, result: dict[str, Any]) -> None:
    """Persist the final result durably: result file, stdout, and the termination log if present."""
    payload = {"event": "result", **result}
    if "CONVEYOR_ATTEMPT" in os.environ:  # lets an executor tell this attempt's result from an older one
        payload.setdefault("attempt", int(os.environ["CONVEYOR_ATTEMPT"]))
    write_json_atomic(model_dir / RESULT_FILE, payload)
    print(json.dumps(payload, separators=(",", ":")), flush=True)
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(termination_summary(payload))


def read_result(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / RESULT_FILE
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def main_print(*parts: Any) -> None:
    """Human-readable lines go to stderr so stdout stays one JSON event per line."""
    print(*parts, file=sys.stderr, flush=True)
