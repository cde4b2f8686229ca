"""One fate of a workload, two executors, one decision.

Each scenario happens once to real (tiny) local processes, observed by the local executor (which
starts them cold and warm), and once as the Jobs and Pods the Kubernetes API lists, observed by the
Kubernetes executor's pure observation path; the engine then reconciles each observation from the
same status. Executors report facts only, so both must end in the same record (state, reason,
attempt, failures or values), the same starts and the same events. A pruned user loop is asked to stop
through each (the stop file; the real progress endpoint's reply), stops by itself and ends the same.
Also: the one dispatch of actions onto an executor, and the output directory both sides derive from
a workload's name.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.operator.api.resource import parse
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import (
    Decision,
    DeletePipeline,
    Emit,
    EpochReport,
    Observations,
    RequestStop,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
    WorkloadObservation,
    reconcile,
    workload_for,
)
from conveyor.operator.engine.workload_kinds import KINDS
from conveyor.operator.executors.forkserver import ForkServer
from conveyor.operator.executors.local import LocalExecutor
from conveyor.operator.executors.protocol import carry_out
from conveyor.operator.kubernetes import builders
from conveyor.operator.kubernetes import executor as k8s
from conveyor.operator.kubernetes import statusserver as ss
from conveyor.operator.workloads import PERMANENT_REASONS, Workload
from conveyor.sdk.env import STOP_FILE
from conveyor.trainer.artifacts import WORKLOAD_DIRS, workload_dir
from conveyor.trainer.config import ServingSpec
from tests.helpers.kubernetes_objects import done, pod
from tests.helpers.manifests import reference_document
from tests.helpers.processes import fake_python, stand_in_executor

T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
PIPELINE = "digits"
RESULT = {
    "event": "result",
    "status": "succeeded",
    "objective": {"metric": "accuracy", "value": 0.97},
    "metrics": {"accuracy": 0.97},
}
EPOCHS = (EpochReport(1, {"accuracy": 0.8}, 2), EpochReport(2, {"accuracy": 0.9}, 2))


def write_result() -> str:
    """Shell writing the trainer's result.json into the workload's output directory ($OUT)."""
    return f"mkdir -p \"$OUT\" && printf '%s' '{json.dumps(RESULT)}' > \"$OUT/result.json\""


def write_epochs() -> str:
    lines = [
        json.dumps({"event": "epoch", "epoch": e.epoch, "epochs": e.epochs, "metrics": dict(e.metrics)})
        for e in EPOCHS
    ]
    return " && ".join(f"printf '%s\\n' '{line}' >> \"$OUT/progress.jsonl\"" for line in lines)


@dataclass(frozen=True)
class Scenario:
    """`ranks`: shell run by rank 0 and rank 1 locally (None: never started here); `conditions` and
    `pods`: the Job's True conditions (None: no Job) and its pods as the API lists them."""

    workload: str
    ranks: tuple[str, str] | None
    conditions: tuple[tuple[str, str], ...] | None
    pods: tuple[dict[str, Any], ...] = ()
    epochs: bool = False
    until_result: bool = False  # locally, observe as soon as the result exists (rank 1 still runs)


MESSAGE = json.dumps(RESULT)  # the termination message rank 0 leaves
RUNNING = {"running": {"startedAt": "2026-11-30T04:29:52Z"}}

# id -> (scenario, the record's (state, reason) both executors must end in)
SCENARIOS: dict[str, tuple[Scenario, tuple[str, str | None]]] = {
    "finished with a result": (
        Scenario(
            "train",
            (f"{write_result()}; exit 0", "exit 0"),
            (("Complete", ""),),
            (pod(0, "Succeeded", done(0, MESSAGE)), pod(1, "Succeeded", done(0))),
        ),
        ("Succeeded", None),
    ),
    "finished without a result": (  # retried: attempt 1
        Scenario(
            "train",
            ("exit 0", "exit 0"),
            (("Complete", ""),),
            (pod(0, "Succeeded", done(0)), pod(1, "Succeeded", done(0))),
        ),
        ("Pending", "NoResult"),
    ),
    "invalid input": (  # permanent: not retried, the pipeline fails
        Scenario(
            "train",
            ("echo 'error: bad column'; exit 2", "echo 'error: bad column'; exit 2"),
            (("Failed", "PodFailurePolicy"),),
            (pod(0, "Failed", done(2, "bad column")),),
        ),
        ("Failed", "InvalidInput"),
    ),
    "rank 0's result while rank 1 still runs": (
        Scenario(
            "train",
            (f"{write_result()}; exit 0", "sleep 30"),
            (),
            (pod(0, "Succeeded", done(0, MESSAGE)), pod(1, "Running", RUNNING)),
            until_result=True,
        ),
        ("Succeeded", None),
    ),
    "crash after the result": (  # kept, with an ExitedAfterResult warning
        Scenario(
            "train",
            (f"{write_result()}; exit 134", "exit 0"),
            (("Failed", "BackoffLimitExceeded"),),
            (pod(0, "Failed", done(134, MESSAGE)), pod(1, "Succeeded", done(0))),
        ),
        ("Succeeded", None),
    ),
    "gone": (  # lost: its next attempt starts, no failure counted
        Scenario("train", None, None),
        ("Pending", "Restarted"),
    ),
    "a trial finished without a result": (  # its per-epoch values are no verdict
        Scenario(
            "trial-0000",
            (f'mkdir -p "$OUT" && {write_epochs()}; exit 0', "exit 0"),
            (("Complete", ""),),
            (pod(0, "Succeeded", done(0)), pod(1, "Succeeded", done(0))),
            epochs=True,
        ),
        ("Failed", "NoResult"),
    ),
}


def spec_for(workload: str) -> TrainingPipelineSpec:
    document = copy.deepcopy(reference_document())
    document["spec"]["tuning"].update({"trials": 4, "parallelism": 2, "pruner": "none"})
    if workload.startswith("trial-"):
        return parse(document).spec
    for section in ("tuning", "ensemble", "serving"):
        document["spec"].pop(section)
    return parse(document).spec


def running(spec: TrainingPipelineSpec, workload: str) -> PipelineStatus:
    """The status in which `workload` (attempt 0) was just started, after the dataset was prepared."""
    prepared = Observations({"prepare": WorkloadObservation("succeeded", result={"status": "succeeded"})})
    status = reconcile(spec, reconcile(spec, None, Observations(), T0).status, prepared, T0).status
    assert (workload, 0) in [(r.name, r.attempt) for r in [*status.trials, *status.workloads]]
    return status


def observed_locally(
    tmp_path: Path, scenario: Scenario, workload: Workload, executor_for: Callable[[Path, str], LocalExecutor]
) -> WorkloadObservation:
    root = tmp_path / "run"
    rank0, rank1 = scenario.ranks or ("exit 0", "exit 0")
    body = f'OUT="{root / workload.out}"\nif [ "$PET_NODE_RANK" = 0 ]; then {rank0}; else {rank1}; fi'
    executor = executor_for(root, fake_python(tmp_path, body))
    if scenario.ranks is not None:
        executor.start(workload)
    key = [(workload.name, workload.attempt)]
    deadline = time.monotonic() + 20
    try:
        while True:
            seen = executor.observe(key, serving=False).workloads[workload.name]
            if seen.state not in ("pending", "running") or (scenario.until_result and seen.result):
                return seen
            assert time.monotonic() < deadline, f"{workload.name} never finished: {seen}"
            time.sleep(0.05)
    finally:
        executor.shutdown()


def observed_on_kubernetes(scenario: Scenario, workload: Workload) -> WorkloadObservation:
    name = builders.job_name(PIPELINE, workload.name, workload.attempt)
    jobs = []
    if scenario.conditions is not None:
        conditions = [
            {"type": t, "status": "True", "reason": r, "lastTransitionTime": "2026-11-30T04:29:52Z"}
            for t, r in scenario.conditions
        ]
        status = {"startTime": "2026-11-30T04:20:00Z", "conditions": conditions}
        jobs.append({"metadata": {"name": name}, "status": status})
    pods = [copy.deepcopy(p) for p in scenario.pods]
    for p in pods:
        p["metadata"]["labels"] = {"job-name": name}

    def epochs(workload: str, attempt: int) -> tuple[EpochReport, ...]:
        return EPOCHS if scenario.epochs else ()

    seen = k8s.observe_jobs(PIPELINE, [(workload.name, workload.attempt)], jobs, pods, epochs)
    return seen[workload.name]


def outcome(decision: Decision, name: str) -> dict[str, Any]:
    """What a decision made of workload `name`, beyond times and messages."""
    record = decision.status.trial(name) or decision.status.workload(name)
    assert record is not None
    return {
        "record": (record.state, record.reason, record.attempt),
        "failures or values": getattr(record, "failures", None) or getattr(record, "values", None),
        "starts": sorted(
            (a.workload.name, a.workload.attempt) for a in decision.actions if isinstance(a, StartWorkload)
        ),
        "events": sorted((a.type, a.reason) for a in decision.actions if isinstance(a, Emit)),
        "phase": decision.status.phase,
    }


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    server = ForkServer(sys.executable, tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.mark.parametrize("launch", ["cold", "warm"])
@pytest.mark.parametrize("case", list(SCENARIOS))
def test_both_executors_lead_to_the_same_decision(
    tmp_path: Path, case: str, launch: str, forkserver: ForkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locally both ways of starting processes: fresh interpreters (cold) and forks of the fork server."""
    scenario, (state, reason) = SCENARIOS[case]
    spec = spec_for(scenario.workload)
    status = running(spec, scenario.workload)
    workload = workload_for(spec, status, scenario.workload, 0)
    now = T0 + timedelta(minutes=30)

    def executor_for(root: Path, script: str) -> LocalExecutor:
        return stand_in_executor(launch, root, script, forkserver, monkeypatch)

    seen = [
        observed_locally(tmp_path, scenario, workload, executor_for),
        observed_on_kubernetes(scenario, workload),
    ]
    local, kubernetes = (
        outcome(reconcile(spec, status, Observations({workload.name: s}), now), workload.name) for s in seen
    )
    assert local == kubernetes
    assert local["record"][:2] == (state, reason)


def test_what_the_scenarios_show_about_the_decisions() -> None:
    """The table's expectations spelled out on the Kubernetes side (the test above holds local equal)."""

    def decide(case: str) -> dict[str, Any]:
        scenario, _ = SCENARIOS[case]
        spec = spec_for(scenario.workload)
        status = running(spec, scenario.workload)
        workload = workload_for(spec, status, scenario.workload, 0)
        seen = observed_on_kubernetes(scenario, workload)
        return outcome(reconcile(spec, status, Observations({workload.name: seen}), T0), workload.name)

    assert decide("finished with a result")["starts"] == [("evaluate-model", 0)]
    assert decide("finished without a result")["starts"] == [("train", 1)]
    invalid = decide("invalid input")
    assert invalid["starts"] == [] and invalid["phase"] == "Failed" and "InvalidInput" in PERMANENT_REASONS
    assert decide("rank 0's result while rank 1 still runs")["starts"] == [("evaluate-model", 0)]
    assert ("Warning", "ExitedAfterResult") in decide("crash after the result")["events"]
    gone = decide("gone")
    assert gone["record"] == ("Pending", "Restarted", 1) and gone["failures or values"] is None
    assert decide("a trial finished without a result")["failures or values"] == [0.8, 0.9]


class Recorder:
    """An executor that writes down what it is asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self, workload: Workload) -> None:
        self.calls.append(("start", workload.key))

    def stop(self, name: str, attempt: int) -> None:
        self.calls.append(("stop", name, attempt))

    def request_stop(self, name: str, attempt: int) -> None:
        self.calls.append(("request_stop", name, attempt))

    def observe(self, workloads: Any, serving: bool) -> Observations:
        return Observations()

    def start_serving(self, model: str, serving: ServingSpec) -> None:
        self.calls.append(("start_serving", model))

    def stop_serving(self) -> None:
        self.calls.append(("stop_serving",))

    def emit(self, type: str, reason: str, message: str) -> None:
        self.calls.append(("emit", type, reason))

    def delete_pipeline(self) -> None:
        self.calls.append(("delete_pipeline",))


def test_carry_out_maps_every_action_onto_the_executor_in_order() -> None:
    recorder = Recorder()
    actions = [
        StartWorkload(Workload("train", "train", "train", "model", attempt=2)),
        StopWorkload("trial-0003", 0, "Pruned"),
        StartServing("ensemble", ServingSpec()),
        StopServing("Suspended"),
        Emit("Warning", "Retrying", "again"),
        DeletePipeline("TTLExpired"),
    ]
    carry_out(recorder, actions)
    assert recorder.calls == [
        ("start", "train-2"),
        ("stop", "trial-0003", 0),
        ("start_serving", "ensemble"),
        ("stop_serving",),
        ("emit", "Warning", "Retrying"),
        ("delete_pipeline",),
    ]


def test_carry_out_asks_to_stop_before_it_stops() -> None:
    recorder = Recorder()
    carry_out(recorder, [RequestStop("trial-0003", 1, "Pruned"), StopWorkload("trial-0003", 1, "Pruned")])
    assert recorder.calls == [("request_stop", "trial-0003", 1), ("stop", "trial-0003", 1)]


@pytest.mark.parametrize("name", [*KINDS, "trial-0000", "trial-0417"])
def test_executors_read_where_the_engine_tells_workloads_to_write(name: str) -> None:
    spec = spec_for("trial-0000")
    status = running(spec, "trial-0000")
    status.trials.append(status.trials[0].model_copy(update={"name": "trial-0417", "number": 417}))
    assert workload_for(spec, status, name, 0).out == workload_dir(name)


def test_every_kind_has_an_output_directory() -> None:
    assert set(KINDS) == set(WORKLOAD_DIRS)
    with pytest.raises(KeyError):
        workload_dir("nope")


# --- a pruned user loop: asked to stop, on both executors ---------------------------------------------

LATE = {  # what the pruned trial writes after it was asked to stop: never its verdict
    "event": "result",
    "status": "succeeded",
    "objective": {"metric": "accuracy", "value": 0.99},
    "attempt": 0,
}
REPORT = {  # conveyor.sdk.report's event at step 90 of 900: far below the finished trial's 0.8
    "event": "epoch",
    "epoch": 1,
    "epochs": 100,
    "step": 90,
    "maxSteps": 900,
    "metrics": {"accuracy": 0.1},
}


def user_loop_tuning() -> tuple[TrainingPipelineSpec, PipelineStatus]:
    """A user loop under a median pruner; trial-0000 finished well, trial-0001 (attempt 0) runs."""
    document = copy.deepcopy(reference_document())
    document["spec"]["tuning"].update({"trials": 4, "parallelism": 2, "pruner": "median"})
    document["spec"]["training"].update({"entrypoint": "mypkg.loop:train", "maxSteps": 900})
    spec = parse(document).spec
    status = running(spec, "trial-0001")
    done_, live = status.trials
    done_.state, done_.value, done_.values, done_.steps = "Succeeded", 0.9, [0.8, 0.9], [90, 180]
    live.state = "Running"
    return spec, status


def stop_actions(decision: Decision) -> list[RequestStop | StopWorkload]:
    return [a for a in decision.actions if isinstance(a, RequestStop | StopWorkload)]


def stop_outcome(decision: Decision) -> dict[str, Any]:
    trial = decision.status.trial("trial-0001")
    assert trial is not None
    return {
        "trial": (trial.state, trial.reason, trial.stopping, trial.values, trial.steps, trial.value),
        "stops": [(type(a).__name__, a.name, a.attempt) for a in stop_actions(decision)],
        "requeue": decision.requeue_after,
    }


def stopped_locally(
    tmp_path: Path,
    spec: TrainingPipelineSpec,
    status: PipelineStatus,
    launch: str,
    forkserver: ForkServer,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Decision, Decision]:
    """Rank 0 reports, every rank waits (bounded) for the stop file, rank 0 then writes a result."""
    root = tmp_path / "run"
    workload = workload_for(spec, status, "trial-0001", 0)
    out = root / workload.out
    wait = (
        f'i=0; while [ ! -f "{out}/{STOP_FILE}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
        f'[ -f "{out}/{STOP_FILE}" ]'
    )
    rank0 = (
        f"mkdir -p \"{out}\" && printf '%s\\n' '{json.dumps(REPORT)}' >> \"{out}/progress.jsonl\" && {wait} "
        f"&& printf '%s' '{json.dumps(LATE)}' > \"{out}/result.json\""
    )
    body = f'if [ "$PET_NODE_RANK" = 0 ]; then {rank0}; else {wait}; fi'
    executor = stand_in_executor(launch, root, fake_python(tmp_path, body), forkserver, monkeypatch)
    key = [("trial-0001", 0)]
    try:
        executor.start(workload)
        deadline = time.monotonic() + 20
        while not (seen := executor.observe(key, serving=False).workloads["trial-0001"]).epochs:
            assert time.monotonic() < deadline, "the trial never reported"
            time.sleep(0.05)
        pruned = reconcile(spec, status, Observations({"trial-0001": seen}), T0)
        carry_out(executor, stop_actions(pruned))
        while (seen := executor.observe(key, serving=False).workloads["trial-0001"]).state == "running":
            assert time.monotonic() < deadline, "the trial never stopped"
            time.sleep(0.05)
        assert seen.state == "succeeded" and seen.result is not None  # it listened, and wrote a result
        later = reconcile(spec, pruned.status, Observations({"trial-0001": seen}), T0 + timedelta(seconds=10))
        return pruned, later
    finally:
        executor.shutdown()


def stopped_on_kubernetes(spec: TrainingPipelineSpec, status: PipelineStatus) -> tuple[Decision, Decision]:
    """The same through the real progress endpoint and the Kubernetes executor's stop request."""
    import asyncio
    import threading

    from tests.helpers.operator_bed import free_port
    from tests.unit.test_kubernetes_observe import exchange, review_for

    labels = {
        builders.LABEL_PIPELINE: PIPELINE,
        builders.LABEL_WORKLOAD: "trial-0001",
        builders.LABEL_ATTEMPT: "0",
    }
    store = ss.ProgressStore()
    server = ss.ProgressServer(
        store, lambda token: review_for("p-0"), lambda ns, n: {"metadata": {"labels": labels}}
    )
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = loop.run_until_complete(ss.serve(server, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    shared = k8s.KubernetesExecutor(k8s.Api(client=None), progress=store.lookup, ask_stop=store.ask_stop)
    owner = builders.Owner(PIPELINE, "ml", "uid-1", spec)
    executor = shared.for_pipeline(owner, {"metadata": {"name": PIPELINE, "namespace": "ml"}})
    job = builders.job_name(PIPELINE, "trial-0001", 0)

    def seen(conditions: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Observations:
        jobs = [
            {
                "metadata": {"name": job},
                "status": {"startTime": "2026-11-30T04:00:00Z", "conditions": conditions},
            }
        ]
        for p in pods:
            p["metadata"]["labels"] = {"job-name": job}
        observed = k8s.observe_jobs(
            PIPELINE, [("trial-0001", 0)], jobs, pods, lambda n, a: store.lookup("ml", PIPELINE, n, a)
        )
        return Observations(observed)

    try:
        assert exchange(port, REPORT) == (202, {"accepted": True})
        pruned = reconcile(
            spec, status, seen([], [pod(0, "Running", RUNNING), pod(1, "Running", RUNNING)]), T0
        )
        carry_out(executor, stop_actions(pruned))
        assert exchange(port, {**REPORT, "epoch": 2, "step": 180}) == (200, {"stop": True})
        complete = [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-30T04:00:09Z"}]
        finished = seen(
            complete, [pod(0, "Succeeded", done(0, json.dumps(LATE))), pod(1, "Succeeded", done(0))]
        )
        later = reconcile(spec, pruned.status, finished, T0 + timedelta(seconds=10))
        return pruned, later
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.mark.parametrize("launch", ["cold", "warm"])
def test_a_pruned_user_loop_is_asked_to_stop_and_both_executors_decide_alike(
    tmp_path: Path, launch: str, forkserver: ForkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruned at step 90: asked to stop (the local stop file, the endpoint's {"stop": true}), not
    killed; it stops by itself and writes a result, which leaves it Pruned and no longer stopping."""
    spec, status = user_loop_tuning()
    local = stopped_locally(tmp_path, spec, status, launch, forkserver, monkeypatch)
    kubernetes = stopped_on_kubernetes(spec, status)
    assert [stop_outcome(d) for d in local] == [stop_outcome(d) for d in kubernetes]
    pruned, later = (stop_outcome(d) for d in local)
    assert pruned == {
        "trial": ("Pruned", "Pruned", True, [0.1], [90], None),
        "stops": [("RequestStop", "trial-0001", 0)],
        "requeue": 60.0,
    }
    assert later == {"trial": ("Pruned", "Pruned", None, [0.1], [90], None), "stops": [], "requeue": None}
