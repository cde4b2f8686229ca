"""`conveyor run` for real: a small pipeline through every stage with real trainer processes (forked
from warm workers, and with `--cold` as torchrun agents), served and queried with an Open Inference
Protocol client; Ctrl-C and SIGTERM stop every child, and after SIGKILL no child remains either; the
same command resumes without running finished trials again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as triton

from conveyor.operator.executors.local import free_port
from conveyor.trainer import progress
from tests.helpers.processes import leftovers

pytestmark = pytest.mark.slow

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
TRIALS = 3

MANIFEST = f"""
apiVersion: conveyor.dev/v1alpha1
kind: TrainingPipeline
metadata: {{name: iris-e2e}}
spec:
  task: {{type: classification, objective: {{metric: accuracy}}}}
  data: {{source: builtin://iris, split: {{validation: 0.2, test: 0.2, seed: 3}}}}
  model: {{architecture: mlp, hiddenSize: 16}}
  optimizer: {{learningRate: 0.02}}
  training: {{epochs: 6, batchSize: 16}}
  resources: {{workers: 2, processesPerWorker: 1, cpu: "1"}}
  tuning:
    algorithm: random
    trials: {TRIALS}
    parallelism: 2
    pruner: none
    parameters:
    - {{name: optimizer.learningRate, type: float, min: 0.005, max: 0.05, log: true}}
  evaluation: {{gate: {{metric: accuracy, min: 0.3}}}}
  ensemble: {{topK: 2, method: softVoting}}
  serving: {{maxBatchSize: 8}}
"""


def start(manifest: Path, root: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*CONVEYOR, "run", "-f", str(manifest), "--root", str(root), "--plain", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen within {timeout}s; output:\n{''.join(lines)}")


def interrupt(proc: subprocess.Popen[str]) -> int:
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=60)


def children_of(root: Path) -> list[psutil.Process]:
    """Processes still running with this run directory on their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(root) in cmdline:
            found.append(proc)
    return found


def status_of(root: Path) -> dict:
    return json.loads((root / "status.json").read_text())


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(MANIFEST)
    return path


@pytest.fixture
def long_trials(tmp_path: Path) -> Path:
    """Trials long enough (seconds) to be caught running: warm workers finish 6 epochs at once."""
    path = tmp_path / "long-trials.yaml"
    path.write_text(MANIFEST.replace("epochs: 6,", "epochs: 400, earlyStopping: {patience: 400},"))
    return path


def test_invalid_manifest_is_rejected_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.replace("parallelism: 2", "parallelism: 7"))
    root = tmp_path / "run"
    result = subprocess.run(
        [*CONVEYOR, "run", "-f", str(bad), "--root", str(root), "--plain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "spec.tuning" in result.stderr and "parallelism" in result.stderr
    assert not root.exists()


def test_run_serves_then_resumes_without_rerunning(manifest: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    port = free_port()
    proc = start(manifest, root, "--port", str(port))
    text = "".join(wait_for_line(proc, "Serving until Ctrl-C", timeout=600))
    assert "Gate:" in text and "passes the gate" in text

    # The endpoint serves the ensemble under the pipeline's name, for a stock OIP v2 client.
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_ready() and client.is_model_ready("iris-e2e")
    metadata = client.get_model_metadata("iris-e2e")
    assert metadata["inputs"][0]["shape"][-1] == 4
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]], np.float32)
    inputs = [triton.InferInput("input", list(flowers.shape), "FP32")]
    inputs[0].set_data_from_numpy(flowers)
    probabilities = client.infer("iris-e2e", inputs).as_numpy("probabilities")
    assert probabilities.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert probabilities[0].argmax() == 0  # an unmistakable setosa

    assert interrupt(proc) == 130
    assert leftovers(lambda: children_of(root), timeout=15) == []

    status = status_of(root)
    assert len(status["trials"]) == TRIALS
    assert {t["state"] for t in status["trials"]} == {"Succeeded"}
    assert status["ensemble"]["members"] and len(status["ensemble"]["members"]) == 2
    assert status["gate"]["passed"] is True
    logs_before = sorted(p.name for p in (root / "logs").iterdir())

    # The same command again (cold this time): nothing is trained again, serving comes back.
    again = start(manifest, root, "--port", str(port), "--cold")
    try:
        wait_for_line(again, "Serving until Ctrl-C", timeout=180)
        assert client.is_server_ready()
    finally:
        # SIGTERM to the run alone, as `kill` or a supervisor sends it: its server must go too.
        again.send_signal(signal.SIGTERM)
        stopped = again.wait(timeout=60)
    assert stopped == 130
    assert leftovers(lambda: children_of(root), timeout=15) == [], "SIGTERM left child processes behind"
    new_logs = sorted(set(p.name for p in (root / "logs").iterdir()) - set(logs_before))
    assert all(not name.startswith(("trial-", "train-", "prepare-")) for name in new_logs), new_logs
    assert [t["attempt"] for t in status_of(root)["trials"]] == [t["attempt"] for t in status["trials"]]


def mid_sweep(proc: subprocess.Popen[str], root: Path) -> dict[str, float]:
    """Wait until a trial finished while another runs; the finished ones' result times."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if (root / "status.json").exists():
            trials = status_of(root)["trials"]
            done = [t for t in trials if t["state"] == "Succeeded"]
            if done and any(t["state"] == "Running" for t in trials):
                return {
                    t["name"]: (root / "trials" / t["name"] / "result.json").stat().st_mtime for t in done
                }
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    raise AssertionError("never saw a finished trial next to a running one")


def resumes_to_completion(manifest: Path, root: Path, finished: dict[str, float]) -> None:
    resumed = start(manifest, root, "--no-serve")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read() if resumed.stdout else ""
    status = status_of(root)
    names = [t["name"] for t in status["trials"]]
    assert len(names) == TRIALS == len(set(names))
    for name, mtime in finished.items():
        assert (root / "trials" / name / "result.json").stat().st_mtime == mtime, f"{name} ran again"
    assert status["phase"] == "Succeeded"
    assert leftovers(lambda: children_of(root), timeout=15) == []


def test_a_pruned_trial_trains_nothing_past_its_rung(tmp_path: Path) -> None:
    """Trials under ASHA wait at each rung for the verdict, so a pruned one stopped there, though its
    epochs take milliseconds and the stop a reconcile."""
    manifest = tmp_path / "asha.yaml"
    manifest.write_text(
        MANIFEST.replace("trials: 3", "trials: 8")
        .replace("pruner: none", "pruner: asha")
        .replace("epochs: 6,", "epochs: 9,")
        .replace("min: 0.005, max: 0.05", "min: 0.00001, max: 0.5")
    )
    root = tmp_path / "run"
    proc = start(manifest, root, "--no-serve")
    assert proc.wait(timeout=600) == 0, proc.stdout.read() if proc.stdout else ""
    pruned = [t for t in status_of(root)["trials"] if t["state"] == "Pruned"]
    assert pruned
    for trial in pruned:
        trained = [e for e in progress.read_events(root / "trials" / trial["name"]) if e["event"] == "epoch"]
        assert len(trained) in (1, 3) and f"after epoch {len(trained)} " in trial["message"], trial


def test_interrupt_mid_sweep_then_resume(long_trials: Path, tmp_path: Path) -> None:
    manifest, root = long_trials, tmp_path / "run"
    proc = start(manifest, root, "--no-serve")
    finished = mid_sweep(proc, root)
    assert interrupt(proc) == 130
    assert leftovers(lambda: children_of(root), timeout=15) == [], "Ctrl-C left child processes behind"
    resumes_to_completion(manifest, root, finished)


def test_sigkill_mid_sweep_leaves_no_process_then_resume(long_trials: Path, tmp_path: Path) -> None:
    manifest, root = long_trials, tmp_path / "run"
    proc = start(manifest, root, "--no-serve")
    finished = mid_sweep(proc, root)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert len(descendants) >= 3  # the fork server, its guardian, a running trial's ranks
    proc.kill()  # SIGKILL to `conveyor run` alone: nothing gets to clean up
    assert proc.wait(timeout=10) == -signal.SIGKILL
    survivors = leftovers(lambda: [p for p in descendants if p.is_running()] + children_of(root), timeout=15)
    assert survivors == [], "SIGKILL of conveyor run left child processes behind"
    resumes_to_completion(manifest, root, finished)
