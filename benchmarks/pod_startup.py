"""Pod start to first batch on the test bed's local node: where a trial's start-up goes on Kubernetes,
and which part of it is Conveyor's.

A fresh dev cluster (`conveyor.devcluster`: the real API server, scheduler and controllers, and the
local node, whose kubelet runs pods as local processes) runs reference digits trials as the operator
renders them (`conveyor.operator.kubernetes.builders`: the headless Service and the Indexed Job of 2
worker pods, the artifacts claim mounted at /artifacts), `--epochs` epochs each, one trial at a time
(or `--parallel` at once). No operator runs: the benchmark creates the objects itself, so the times
are the pods', not the reconcile loop's.

Three codes side by side in one run, alternating trial by trial so all see the same load, each
importing its trainer from a copy on the claim (first on the pods' PYTHONPATH; the working tree's is
copied when the benchmark starts), so that only the code differs:

- `head`: HEAD as it was: the trainer at `--baseline` (a copy of HEAD plus the same `startup` event),
  each pod `torchrun --nnodes 2 ... -m conveyor.trainer train` (HEAD's rendering, `with_agent`);
- `agent`: the working tree's trainer, still under torchrun's agent (what the trainer's own changes do);
- `new`: the working tree as the builders render it now: a one-process worker's pod runs
  `python -m conveyor.trainer train` itself, rank = the Job's completion index.

Per pod, on one clock (this machine's Unix time: the benchmark's watches and the trainer's `startup`
event, `conveyor.trainer.startup`):

- the cluster's: Job created -> pod created (Job controller) -> scheduled (scheduler) -> the pod's
  process started (the kubelet: volumes, sandbox, fork+exec of the container's command);
- Conveyor's: process -> trainer process started (torchrun's agent, where there is one: its
  interpreter and torch import, the agents' rendezvous, starting the worker) -> imports done
  (interpreter, torch, the trainer) -> process group up (rendezvous) -> data loaded -> model ready
  (built, DDP, optimizer) -> first training step done;
- after training (rank 0): last epoch event -> result written (the artifacts: weights, exported
  program, card) and result -> pod Succeeded (process exit seen by the kubelet) -> Job Complete.

Raw numbers: benchmarks/out/pod_startup.json. The machine's load average is recorded with every trial.
`--split-mib N` instead measures the data phase of 2 ranks on an N MiB prepared split (no cluster).

    .venv/bin/python benchmarks/pod_startup.py                      # 3 rounds x (agent, new)
    .venv/bin/python benchmarks/pod_startup.py --modes head agent new --baseline /tmp/base/trainer
    .venv/bin/python benchmarks/pod_startup.py --rounds 5 --modes new
    .venv/bin/python benchmarks/pod_startup.py --split-mib 512 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifests" / "examples" / "digits.yaml"
OUT = REPO / "benchmarks" / "out" / "pod_startup.json"
NAMESPACE = "bench"
CLAIM = "conveyor-artifacts"
BASELINE_ON_CLAIM = "baseline"  # where the baseline trainer is copied, under the claim's root
WORKING_TREE_ON_CLAIM = "h1-working-tree"  # and the working tree's
AGENT_SETS = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")  # what torchrun's agent gives its worker

# (label, from, to): the per-pod breakdown, in order; "job" is when the Job was created.
SPANS = (
    ("pod created", "job", "created"),
    ("scheduled", "created", "scheduled"),
    ("kubelet: process started", "scheduled", "launcher"),
    ("torchrun agent -> worker", "launcher", "process"),
    ("imports", "process", "imported"),
    ("rendezvous", "imported", "rendezvous"),
    ("data", "rendezvous", "data"),
    ("model + optimizer", "data", "model"),
    ("first step", "model", "firstStep"),
)
TOTALS = (
    ("job -> first step", "job", "firstStep"),
    ("cluster's (job -> process)", "job", "launcher"),
    ("Conveyor's (process -> first step)", "launcher", "firstStep"),
)
AFTER = (
    ("last epoch -> result", "lastEpoch", "result"),
    ("result -> pod Succeeded", "result", "succeeded"),
    ("result -> Job Complete", "result", "complete"),
    ("job -> Job Complete (the whole trial)", "job", "complete"),
)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Watches:
    """When this process first saw each pod created, scheduled and Succeeded, and each Job Complete
    (watch events, this machine's clock)."""

    def __init__(self, api: Any) -> None:
        self.api, self.lock, self.stop = api, threading.Lock(), threading.Event()
        self.pods: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, float] = {}
        for target in (self._pods, self._jobs):
            threading.Thread(target=target, daemon=True).start()

    def _loop(self, list_fn: Any, seen: Any) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(list_fn, NAMESPACE, timeout_seconds=30):
                    seen(self.api.sanitize_for_serialization(event["object"]), time.time())
                    if self.stop.is_set():
                        stream.stop()
            except Exception:  # a dropped watch: start another
                time.sleep(0.1)

    def _pods(self) -> None:
        from kubernetes import client

        def seen(pod: dict[str, Any], now: float) -> None:
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            with self.lock:
                marks = self.pods.setdefault(meta["name"], {"job": meta["labels"].get("job-name")})
                marks.setdefault("created", now)
                if spec.get("nodeName"):
                    marks.setdefault("scheduled", now)
                marks["uid"], marks["index"] = meta["uid"], spec.get("hostname", "")
                if status.get("phase") in ("Succeeded", "Failed"):
                    marks.setdefault("succeeded", now)
                    marks["phase"] = status["phase"]

        self._loop(client.CoreV1Api(self.api).list_namespaced_pod, seen)

    def _jobs(self) -> None:
        from kubernetes import client

        def seen(job: dict[str, Any], now: float) -> None:
            conditions = (job.get("status") or {}).get("conditions") or []
            if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
                with self.lock:
                    self.jobs.setdefault(job["metadata"]["name"], now)

        self._loop(client.BatchV1Api(self.api).list_namespaced_job, seen)


def strip_owner(obj: dict[str, Any]) -> dict[str, Any]:
    """No pipeline object exists here: an owner reference to one would have the objects collected."""
    obj["metadata"].pop("ownerReferences", None)
    return obj


def create(api: Any, objects: list[dict[str, Any]]) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    batch: Any = client.BatchV1Api(api)
    for obj in map(strip_owner, objects):
        if obj["kind"] == "Service":
            core.create_namespaced_service(NAMESPACE, obj)
        else:
            batch.create_namespaced_job(NAMESPACE, obj)


def with_agent(job: dict[str, Any], workload: Any, owner: Any, settings: Any) -> None:
    """HEAD's rendering of a training pod (modes head and agent): the pod's process is torchrun's
    agent, which starts the trainer; the builders now run a one-process worker's trainer directly."""
    from conveyor.operator.kubernetes import builders
    from conveyor.operator.workloads import DEFAULT_MASTER_PORT, torchrun_argv

    (container,) = job["spec"]["template"]["spec"]["containers"]
    workload = replace(workload, pipeline=owner.name, code_archive=builders.code_archive(owner))
    address = builders.master_address(owner, workload)
    argv = torchrun_argv(
        workload,
        builders.storage(owner).root,
        address,
        DEFAULT_MASTER_PORT,
        "$(PET_NODE_RANK)",
        settings.python,
    )
    container["command"], container["args"] = argv[:1], argv[1:]
    container["env"] = [e for e in container["env"] if e["name"] not in AGENT_SETS]


def wait(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; an API error (404: not there yet) counts as not yet."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except ApiException:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def startup_events(pods_dir: Path, marks: dict[str, Any]) -> dict[str, Any]:
    """The trainer's `startup` event from the pod's log (every rank prints it)."""
    for log in pods_dir.glob(f"{NAMESPACE}_*_{marks['uid'][:8]}/logs/*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"event":"startup"'):
                event: dict[str, Any] = json.loads(line)
                return event
    return {}


def run_trial(
    api: Any,
    watches: Watches,
    owner: Any,
    settings: Any,
    spec: Any,
    number: int,
    mode: str,
    epochs: int,
    claim_dir: Path,
    pods_dir: Path,
    parallel: int,
) -> list[dict[str, Any]]:
    from conveyor.operator.kubernetes import builders
    from conveyor.operator.workloads import Workload
    from conveyor.trainer.artifacts import workload_dir

    res = spec.resources
    params = {"training.epochs": epochs, "training.earlyStopping.patience": epochs}
    # Every mode imports its trainer from a copy on the claim, so that only the code differs.
    copy = BASELINE_ON_CLAIM if mode == "head" else WORKING_TREE_ON_CLAIM
    env = (("PYTHONPATH", f"/artifacts/{copy}/trainer"),)
    workloads = []
    for i in range(parallel):
        name = f"trial-{number + i:04d}"
        workloads.append(
            Workload(
                name,
                "tune",
                "train",
                workload_dir(name),
                config=spec.trainer_config(params).to_wire(),
                trial=number + i,
                params=params,
                distributed=True,
                workers=res.workers,
                processes_per_worker=res.processes_per_worker,
                cpu=res.cpu,
                memory=res.memory,
                env=env,
            )
        )
    created: dict[str, float] = {}
    for workload in workloads:
        job = builders.job_name(owner.name, workload.name, workload.attempt)
        objects = builders.workload_objects(owner, settings, workload)
        if mode in ("head", "agent"):
            with_agent(objects[-1], workload, owner, settings)
        created[job] = time.time()
        create(api, objects)
    wait(lambda: all(job in watches.jobs for job in created), 600, f"jobs {sorted(created)}")
    rows = []
    for workload in workloads:
        job = builders.job_name(owner.name, workload.name, workload.attempt)
        out = claim_dir / owner.name / workload.out
        result = json.loads((out / "result.json").read_text())
        if result.get("status") != "succeeded":
            raise SystemExit(f"{job}: {result}")
        with watches.lock:
            pods = {n: dict(m) for n, m in watches.pods.items() if m.get("job") == job}
        for name, marks in sorted(pods.items(), key=lambda item: item[1]["index"]):
            event = startup_events(pods_dir, marks)
            if not event:
                raise SystemExit(f"{name}: no startup event in its log")
            at = {**marks, **event["at"], "job": created[job], "complete": watches.jobs[job]}
            at.setdefault("launcher", at.get("process"))  # no agent: the pod's process is the trainer
            if event["rank"] == 0:
                at["lastEpoch"] = (out / "progress.jsonl").stat().st_mtime
                at["result"] = (out / "result.json").stat().st_mtime
            rows.append(
                {
                    "mode": mode,
                    "trial": workload.name,
                    "pod": name,
                    "rank": event["rank"],
                    "at": {k: v for k, v in at.items() if isinstance(v, float)},
                    "spans": {
                        label: at[b] - at[a]
                        for label, a, b in (*SPANS, *TOTALS, *AFTER)
                        if isinstance(at.get(a), float) and isinstance(at.get(b), float)
                    },
                }
            )
    return rows


def table(rows: list[dict[str, Any]], modes: list[str]) -> str:
    """Medians per mode, rank 0 and rank 1 pooled (the after-training spans are rank 0's)."""
    labels = [label for label, _, _ in (*SPANS, *TOTALS, *AFTER)]
    lines = ["| span (s, median) | " + " | ".join(modes) + " |", "|---" + "|---:" * len(modes) + "|"]
    for label in labels:
        cells = []
        for mode in modes:
            values = [r["spans"][label] for r in rows if r["mode"] == mode and label in r["spans"]]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# One rank's data phase, as `train.load_data` + the first epoch's gather do it, in a fresh process:
# prints seconds to the split loaded, to the first batch gathered, and peak and proportional memory.
RANK_DATA = """
import sys, time, numpy as np, torch
from pathlib import Path
from conveyor.trainer.data.prepare import load_split
how, data, rank = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
if how == "read":  # HEAD: np.load of the .npz, into this process's memory
    with np.load(data / "train.npz") as arrays:
        x, y = arrays["x"], arrays["y"]
else:
    x, y = load_split(data, "train")
loaded = time.perf_counter() - started
order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
xs = torch.from_numpy(x)[order[rank::2]]  # this rank's shard, gathered once per epoch
first = time.perf_counter() - started
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
pss = next(int(l.split()[1]) for l in rollup if l.startswith("Pss:"))
print(loaded, first, int(status["VmHWM"].split()[0]) / 1024, pss / 1024)
"""


def split_loading(mib: int, repeats: int) -> list[dict[str, Any]]:
    """The data phase of 2 ranks on one node on a prepared train split of `mib` MiB (784 float32
    features a row, page cache warm as on the node that prepared it): HEAD's read vs the mapped split."""
    import subprocess
    import sys

    import numpy as np

    rows = mib * 2**20 // (784 * 4)
    results = []
    with tempfile.TemporaryDirectory(prefix="conveyor-split-") as tmp:
        data = Path(tmp)
        generator = np.random.default_rng(0)
        np.savez(data / "train.npz", x=generator.standard_normal((rows, 784), dtype=np.float32),
                 y=generator.integers(0, 10, rows))  # fmt: skip
        for repeat in range(repeats):
            for how in ("read", "mapped") if repeat % 2 == 0 else ("mapped", "read"):
                before = load()
                procs = [
                    subprocess.Popen(
                        [sys.executable, "-c", RANK_DATA, how, str(data), str(rank)],
                        stdout=subprocess.PIPE,
                        text=True,
                        env=dict(os.environ, OMP_NUM_THREADS="1"),
                    )
                    for rank in range(2)
                ]
                for rank, proc in enumerate(procs):
                    loaded, first, peak, pss = map(float, proc.communicate()[0].split())
                    results.append(
                        {"how": how, "rank": rank, "loaded": loaded, "firstBatch": first, "peakMiB": peak,
                         "pssMiB": pss, "load": f"{before} -> {load()}"}
                    )  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per trial (a pruned trial trains about 3)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="trials started together")
    parser.add_argument("--modes", nargs="+", default=["agent", "new"], choices=["head", "agent", "new"])
    parser.add_argument(
        "--baseline",
        type=Path,
        help="for mode head: a trainer directory (holding conveyor/trainer) of an older commit, e.g. "
        "`git worktree add /tmp/base <commit>` -> /tmp/base/trainer, with the `startup` event added",
    )
    parser.add_argument(
        "--split-mib",
        type=int,
        default=0,
        help="instead: the data phase of 2 ranks on a prepared split of this many MiB (no cluster)",
    )
    args = parser.parse_args()
    if "head" in args.modes and args.baseline is None:
        parser.error("--modes head needs --baseline")
    if args.split_mib:
        results = split_loading(args.split_mib, args.rounds)
        OUT.with_name("pod_startup_split.json").write_text(json.dumps(results, indent=1))
        print(
            f"| {args.split_mib} MiB split, 2 ranks (median s, MiB) | loaded | first batch | peak RSS | PSS |"
        )
        print("|---|---:|---:|---:|---:|")
        for how in ("read", "mapped"):
            mine = [r for r in results if r["how"] == how]
            cells = [
                statistics.median(r[k] for r in mine) for k in ("loaded", "firstBatch", "peakMiB", "pssMiB")
            ]
            print(f"| {how} | {cells[0]:.3f} | {cells[1]:.3f} | {cells[2]:.0f} | {cells[3]:.0f} |")
        return

    from kubernetes import client

    from conveyor.devcluster.cluster import Cluster, ClusterConfig
    from conveyor.operator.api.resource import load_manifest
    from conveyor.operator.kubernetes import builders
    from conveyor.operator.workloads import Workload
    from conveyor.trainer.artifacts import workload_dir

    spec = load_manifest(MANIFEST)[0].spec
    owner = builders.Owner(name="digits", namespace=NAMESPACE, uid="0", spec=spec)
    settings = builders.Settings(python="python")  # no progress endpoint: no operator runs
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count()}
    state = Path(tempfile.mkdtemp(prefix="conveyor-pod-startup-"))
    started = time.monotonic()
    try:
        with Cluster(ClusterConfig(state_dir=state, gpu_nodes=0)) as cluster:
            report["clusterStartSeconds"] = time.monotonic() - started
            api = cluster.api()
            core: Any = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            wait(lambda: core.read_namespaced_service_account("default", NAMESPACE), 60, "the ServiceAccount")
            core.create_namespaced_persistent_volume_claim(
                NAMESPACE,
                {
                    "metadata": {"name": CLAIM},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
                },
            )
            volume = wait(
                lambda: core.read_namespaced_persistent_volume_claim(CLAIM, NAMESPACE).spec.volume_name,
                60,
                "the claim bound",
            )
            claim_dir = Path(core.read_persistent_volume(volume).spec.host_path.path)
            copies = [(REPO / "trainer", WORKING_TREE_ON_CLAIM)]
            if args.baseline is not None:
                copies.append((args.baseline, BASELINE_ON_CLAIM))
            for source, copy in copies:
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(source, claim_dir / copy / "trainer", ignore=ignore)
            watches = Watches(api)
            prepare = Workload(
                "prepare",
                "prepare",
                "prepare",
                workload_dir("prepare"),
                config=spec.trainer_config().to_wire(),
            )
            create(api, builders.workload_objects(owner, settings, prepare))
            wait(lambda: watches.jobs, 300, "the prepare Job")
            pods_dir = state / "pods"
            rows: list[dict[str, Any]] = []
            number = 0
            for round_ in range(-1, args.rounds):  # round -1 warms up (page cache, bytecode), untimed
                order = args.modes if round_ % 2 == 0 else list(reversed(args.modes))
                for mode in order:
                    before = load()
                    trial_rows = run_trial(
                        api, watches, owner, settings, spec, number, mode, args.epochs, claim_dir,
                        pods_dir, args.parallel,
                    )  # fmt: skip
                    number += args.parallel
                    after = load()
                    for row in trial_rows:
                        row.update(round=round_, load=f"{before} -> {after}")
                    if round_ >= 0:
                        rows.extend(trial_rows)
                    print(
                        f"round {round_} {mode:4s} load {before} -> {after}: job -> first step "
                        + ", ".join(
                            f"{r['spans'].get('job -> first step', float('nan')):.2f}" for r in trial_rows
                        ),
                        flush=True,
                    )
            watches.stop.set()
            report["trials"] = rows
    finally:
        shutil.rmtree(state, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    shape = f"{args.rounds} rounds x {args.parallel} trial(s) of {args.epochs} epochs, 2 pods each"
    print(f"\nmedians over {shape}; per pod (ranks pooled; after-training spans: rank 0)")
    print(table(rows, args.modes))


if __name__ == "__main__":
    main()
