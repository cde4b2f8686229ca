"""Serving throughput: Conveyor's server vs KServe's Python ModelServer vs LitServe (batching on).

`conveyor-exported` is Conveyor's server on the same network saved as an exported program only
(`model.pt2` + `model.json`, no weights.pt: what a user model whose code is not importable looks
like), against `conveyor`, which rebuilds the built-in network from code and weights.pt:

    .venv/bin/python benchmarks/serving.py --servers conveyor conveyor-exported

`conveyor-preloaded` (an ablation) is `conveyor` in a process that also loaded the exported program
(benchmarks/serving_peers/conveyor_preloaded.py): set against `conveyor-exported`, it leaves only the
cost of calling the program, not that of being a process that loaded one.

With both, it also times `Predictor.predict` alone for each (in this process, batches of 1, 8 and
32 rows) to show what the exported program's module costs per call apart from HTTP and batching.
Every server's CPU time per request (user + system, all its processes, from /proc) is reported next
to req/s: on a shared machine it moves far less than throughput does.

All three serve the same torch model (an MLP on builtin digits, loaded from one model directory
through `conveyor.trainer.predictor`, so model and preprocessing cost are identical) and receive the
same Open Inference Protocol v2 JSON body (one raw row, FP32 [1, 64]) from `wrk` with 32 keep-alive
connections. Servers are measured one after another, interleaved over several rounds, in one run.

Pinning (2-core machine): each server, with every process it spawns, runs on CPU 0
(`taskset -c 0`, torch at 1 thread); wrk runs on CPU 1 (`taskset -c 1`, 1 thread). Override with
--server-cpus / --client-cpus.

    .venv/bin/python benchmarks/serving.py                      # full run, writes benchmarks/out/serving/
    .venv/bin/python benchmarks/serving.py --duration 5 --rounds 1 --servers conveyor kserve

Needs: `wrk` (apt-get install wrk) and the peers' venv .venv-bench-serve (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "trainer"))

from conveyor.trainer import artifacts  # noqa: E402
from conveyor.trainer.artifacts import DatasetMetadata, ModelCard, NormalizationStats  # noqa: E402
from conveyor.trainer.config import TrainerConfig  # noqa: E402
from conveyor.trainer.export import export_model  # noqa: E402
from conveyor.trainer.models import build_model  # noqa: E402
from conveyor.trainer.predictor import load_predictor  # noqa: E402

PEERS = ROOT / "benchmarks" / "serving_peers"
BENCH_PYTHON = ROOT / ".venv-bench-serve" / "bin" / "python"
INFER_PATH = "/v2/models/model/infer"
RESULT = re.compile(r"RESULT (.*)")


def make_model(workdir: Path, hidden: int, layers: int) -> Path:
    """Prepare digits and train an MLP briefly (accuracy is beside the point; the work per call is not)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    shift, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    np.savez(data / "test.npz", x=(x - shift) / scale, y=y)
    meta = DatasetMetadata(
        task="classification", source="builtin://digits", feature_shape=[64],
        classes=[str(i) for i in range(10)], sizes={"test": len(y)},
        normalization=NormalizationStats(method="standard", shift=shift.tolist(), scale=scale.tolist()),
    )
    artifacts.write_json_atomic(data / artifacts.METADATA_FILE, meta.model_dump(mode="json"))
    config = TrainerConfig.model_validate(
        {"model": {"architecture": "mlp", "hiddenSize": hidden, "layers": layers, "dropout": 0.0}}
    )
    torch.manual_seed(0)
    model = build_model(config.model, meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy((x - shift) / scale), torch.from_numpy(y)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model_dir = workdir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / artifacts.WEIGHTS_FILE)
    artifacts.write_card(model_dir, ModelCard(name="model", config=config, dataset=meta))
    return model_dir


def make_exported_copy(model_dir: Path) -> Path:
    """The same network as `model_dir`, as an exported program and the card only (no weights.pt)."""
    card = artifacts.read_card(model_dir)
    model = build_model(card.config.model, card.dataset)
    model.load_state_dict(torch.load(model_dir / artifacts.WEIGHTS_FILE, weights_only=True))
    exported_dir = model_dir.parent / "model-exported"
    exported_dir.mkdir(parents=True, exist_ok=True)
    (exported_dir / artifacts.WEIGHTS_FILE).unlink(missing_ok=True)
    if export_model(model, torch.zeros(1, *card.dataset.feature_shape), exported_dir) is None:
        raise SystemExit("the benchmark model did not export")
    artifacts.write_card(exported_dir, card)
    return exported_dir


def write_body(workdir: Path, model_dir: Path) -> Path:
    predictor = load_predictor(model_dir)
    stats = predictor.metadata.normalization
    with np.load(model_dir.parent / "data" / "test.npz") as arrays:
        row = arrays["x"][:1] * np.asarray(stats.scale, np.float32) + np.asarray(stats.shift, np.float32)
    body = {"id": "bench", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [round(float(v), 4) for v in row.ravel()]}]}
    path = workdir / "body.json"
    path.write_text(json.dumps(body))
    return path


def server_command(name: str, model_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "trainer")}
    serve = ["serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
             "--max-batch-size", "32", "--max-latency-ms", "2"]
    if name in ("conveyor", "conveyor-exported"):  # the model directory says which path loads
        return [sys.executable, "-m", "conveyor.trainer", *serve], env
    if name == "conveyor-preloaded":  # ablation: `conveyor` in a process that also loaded model.pt2
        program = model_dir.parent / "model-exported" / "model.pt2"
        return [sys.executable, str(PEERS / "conveyor_preloaded.py"), str(program), *serve], env
    if name == "aiohttp":  # ablation: Conveyor's server minus its HTTP layer, on aiohttp
        return [sys.executable, str(PEERS / "aiohttp_server.py"), str(model_dir), str(port)], env
    if name == "litserve-fastqueue":
        script = PEERS / "litserve_server.py"
        return [str(BENCH_PYTHON), str(script), str(model_dir), str(port), "fast-queue"], env
    script = PEERS / f"{name}_server.py"
    return [str(BENCH_PYTHON), str(script), str(model_dir), str(port)], env


def wait_ready(port: int, process: subprocess.Popen[bytes], body: bytes, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            url = f"http://127.0.0.1:{port}{INFER_PATH}"
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"server on port {port} not ready after {timeout}s")


def run_wrk(port: int, body_file: Path, duration: int, connections: int, cpus: str) -> dict[str, float]:
    env = {**os.environ, "BODY_FILE": str(body_file), "INFER_PATH": INFER_PATH}
    command = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
               "-s", str(PEERS / "post.lua"), f"http://127.0.0.1:{port}"]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = RESULT.search(output)
    if not match:
        raise RuntimeError(f"no RESULT line from wrk:\n{output}")
    fields = dict(item.split("=") for item in match.group(1).split())
    values = {k: float(v) for k, v in fields.items()}
    errors = sum(v for k, v in values.items() if k.startswith("errors_"))
    return {
        "rps": values["requests"] / (values["duration_us"] / 1e6),
        "p50_ms": values["p50_us"] / 1000,
        "p99_ms": values["p99_us"] / 1000,
        "errors": errors,
        "requests": values["requests"],
    }


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in group `pgid` (a server and what it spawned)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (LitServe and KServe spawn workers), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


def measure(name: str, args: argparse.Namespace, model_dir: Path, body_file: Path, port: int) -> dict:
    if name == "conveyor-exported":
        model_dir = model_dir.parent / "model-exported"
    command, env = server_command(name, model_dir, port)
    log = (args.workdir / f"{name}.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", args.server_cpus, *command], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        reply = wait_ready(port, process, body_file.read_bytes())
        probabilities = next(o for o in reply["outputs"] if o["name"] == "probabilities")
        run_wrk(port, body_file, 2, args.connections, args.client_cpus)  # warm-up
        cpu_before = group_cpu_seconds(process.pid)
        result = run_wrk(port, body_file, args.duration, args.connections, args.client_cpus)
        cpu = group_cpu_seconds(process.pid) - cpu_before
        result["cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
        result["label"] = int(np.argmax(np.asarray(probabilities["data"])))
        return result
    finally:
        stop(process)
        log.close()


def predict_costs(model_dir: Path, rounds: int = 15, calls: int = 300) -> dict[str, dict[int, float]]:
    """CPU microseconds per `Predictor.predict` call, rebuilt module vs exported program, by batch size:
    this thread's CPU time (torch runs on it, 1 thread), which waiting for a shared core does not
    inflate as it does wall time; median of interleaved rounds."""
    predictors = {"conveyor": load_predictor(model_dir),
                  "conveyor-exported": load_predictor(model_dir.parent / "model-exported")}
    with np.load(model_dir.parent / "data" / "test.npz") as arrays:
        x = arrays["x"][:32]
    costs: dict[str, dict[int, float]] = {name: {} for name in predictors}
    for batch in (1, 8, 32):
        rows = x[:batch]
        np.testing.assert_allclose(*(p.predict(rows) for p in predictors.values()), atol=1e-5)
        samples: dict[str, list[float]] = {name: [] for name in predictors}
        for _ in range(rounds):
            for name, predictor in predictors.items():
                started = time.thread_time()
                for _ in range(calls):
                    predictor.predict(rows)
                samples[name].append((time.thread_time() - started) / calls * 1e6)
        for name, values in samples.items():
            costs[name][batch] = statistics.median(values)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--servers", nargs="+", default=["conveyor", "kserve", "litserve", "litserve-fastqueue"],
        help="conveyor, conveyor-exported (the same network from model.pt2 only), kserve, litserve "
        "(default queues), litserve-fastqueue (ZeroMQ queues), "
        "aiohttp (ablation: Conveyor's batching and protocol on aiohttp's web framework), "
        "conveyor-preloaded (ablation: conveyor in a process that also loaded the exported program)",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "serving")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model_dir = make_model(args.workdir, args.hidden, args.layers)
    body_file = write_body(args.workdir, model_dir)
    if {"conveyor-exported", "conveyor-preloaded"} & set(args.servers):
        make_exported_copy(model_dir)
    runs: dict[str, list[dict]] = {name: [] for name in args.servers}
    load_before = [round(v, 2) for v in os.getloadavg()]  # the machine may be shared: say how busy
    port = 18080
    for round_ in range(args.rounds):
        shift = round_ % len(args.servers)  # each server goes first in turn: no place in the order is its own
        for name in args.servers[shift:] + args.servers[:shift]:
            port += 1
            result = measure(name, args, model_dir, body_file, port)
            runs[name].append(result)
            print(f"round {round_ + 1} {name:17s} {result['rps']:7.0f} req/s p50 {result['p50_ms']:6.2f} ms  "
                  f"p99 {result['p99_ms']:6.2f} ms  cpu {result['cpu_us_per_request']:4.0f} us/request  "
                  f"errors {result['errors']:.0f}", flush=True)
    labels = {name: {r["label"] for r in results} for name, results in runs.items()}
    if len(set.union(*labels.values())) != 1:
        raise SystemExit(f"servers disagree on the prediction: {labels}")
    summary = {
        name: {
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
            "runs": results,
        }
        for name, results in runs.items()
    }
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "model": f"MLP 64-{args.hidden}x{args.layers}-10 on digits (torch {torch.__version__}, 1 thread)",
        "load": f"wrk -t1 -c{args.connections} -d{args.duration}s, OIP v2 JSON body, 1 row",
        "pinning": f"server(s) taskset -c {args.server_cpus}; wrk taskset -c {args.client_cpus}",
        "load_average_start_end": [load_before, [round(v, 2) for v in os.getloadavg()]],
        "summary": summary,
    }
    if "conveyor" in summary and "conveyor-exported" in summary:
        report["predict_us_per_call"] = predict_costs(model_dir)
    (args.workdir / "results.json").write_text(json.dumps(report, indent=1))
    print("\n| server | req/s (median) | p50 ms | p99 ms | server CPU us/request | errors |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['cpu_us_per_request']:.0f} | {s['errors']:.0f} |")
    if "conveyor" in summary:
        for peer in ("kserve", "litserve", "litserve-fastqueue", "aiohttp"):
            if peer in summary:
                ratio = summary["conveyor"]["rps"] / summary[peer]["rps"]
                print(f"conveyor / {peer}: {ratio:.2f}x req/s; p99 {summary['conveyor']['p99_ms']:.2f} ms vs "
                      f"{summary[peer]['p99_ms']:.2f} ms")

    if "conveyor" in summary and "conveyor-exported" in summary:
        exported, rebuilt = summary["conveyor-exported"], summary["conveyor"]
        rounds = [e["rps"] / b["rps"] for e, b in zip(exported["runs"], rebuilt["runs"], strict=True)]
        print(f"conveyor-exported / conveyor: {exported['rps'] / rebuilt['rps']:.2f}x req/s (per round "
              f"{', '.join(f'{r:.2f}' for r in rounds)}); p99 {exported['p99_ms']:.2f} ms vs "
              f"{rebuilt['p99_ms']:.2f} ms")
        if "conveyor-preloaded" in summary:
            preloaded = summary["conveyor-preloaded"]
            rounds = [e["rps"] / b["rps"] for e, b in zip(exported["runs"], preloaded["runs"], strict=True)]
            print(f"conveyor-exported / conveyor-preloaded: {exported['rps'] / preloaded['rps']:.2f}x req/s "
                  f"(per round {', '.join(f'{r:.2f}' for r in rounds)})")
        costs = report["predict_us_per_call"]
        print("\nPredictor.predict alone, CPU us per call (median of 15 rounds)")
        print("| batch | conveyor | conveyor-exported |\n|---|---|---|")
        for batch, cost in costs["conveyor"].items():
            print(f"| {batch} | {cost:.1f} | {costs['conveyor-exported'][batch]:.1f} |")


if __name__ == "__main__":
    main()
