"""`conveyor run`'s loop with a fake executor: where a run lives, what it records, that status.json is
written only when the status changed, and that a new run on the same directory resumes from it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from conveyor.operator import localrun
from conveyor.operator.api.resource import TrainingPipeline, parse
from conveyor.operator.api.status import PipelineStatus, ServingStatus
from conveyor.operator.engine import Observations, WorkloadObservation
from conveyor.operator.localrun import LocalRun
from conveyor.operator.workloads import Workload
from tests.helpers.manifests import reference_document

SUCCEEDED = {"status": "succeeded", "metrics": {}}  # a workload's result.json


class Executor:
    """Stands in for the local executor: workloads named in `instant` succeed as soon as they start;
    the others run until the test says otherwise."""

    def __init__(self, instant: Iterable[str] = ()) -> None:
        self.instant = set(instant)
        self.seen: dict[str, WorkloadObservation] = {}
        self.started: list[str] = []
        self.stopped = False
        self.verdicts: list[tuple[list[str], list[str]]] = []  # (workloads observed, started by then)

    def observe(self, *_: Any) -> Observations:
        return Observations(workloads=dict(self.seen))

    def start(self, workload: Workload) -> None:
        self.started.append(workload.name)
        self.seen[workload.name] = (
            WorkloadObservation("succeeded", workload.attempt, result=SUCCEEDED)
            if workload.name in self.instant
            else WorkloadObservation("running", workload.attempt)
        )

    def stop(self, name: str, attempt: int) -> None:
        pass

    def deliver_verdicts(self, observations: Observations) -> None:
        self.verdicts.append((sorted(observations.workloads), list(self.started)))

    def start_serving(self, model: str, serving: Any) -> None:
        pass

    def stop_serving(self) -> None:
        pass

    def emit(self, type: str, reason: str, message: str) -> None:
        pass

    def delete_pipeline(self) -> None:
        pass

    def shutdown(self) -> None:
        self.stopped = True


def pipeline(**metadata: Any) -> TrainingPipeline:
    document = reference_document()
    document["metadata"].update(metadata)
    return parse(document)


def local_run(root: Path, executor: Executor, serve: bool = True) -> LocalRun:
    run = LocalRun.create(pipeline(), root, serve=serve)
    run.executor = executor  # type: ignore[assignment]
    return run


def on_disk(root: Path) -> PipelineStatus:
    return PipelineStatus.model_validate_json((root / localrun.STATUS_FILE).read_text())


def test_default_root_is_named_after_the_pipeline() -> None:
    assert localrun.default_root(pipeline()) == Path("runs/digits")
    assert localrun.default_root(pipeline(), Path("/srv/runs")) == Path("/srv/runs/digits")
    assert localrun.default_root(pipeline(name=None)) == Path("runs/pipeline")


@pytest.mark.parametrize(
    ("status", "finished", "serving"),
    [
        (PipelineStatus(), False, False),
        (PipelineStatus(phase="Tuning"), False, False),
        (PipelineStatus(phase="Succeeded"), True, False),
        (PipelineStatus(phase="Failed"), True, False),
        (PipelineStatus(phase="Serving", serving=ServingStatus(ready=True)), False, True),
        (PipelineStatus(phase="Serving", serving=ServingStatus(ready=False)), False, False),
        (PipelineStatus(phase="Serving"), False, False),
        (PipelineStatus(phase="Suspended", serving=ServingStatus(ready=True)), False, False),
    ],
    ids=["new", "tuning", "succeeded", "failed", "serving", "server starting", "no server", "suspended"],
)
def test_finished_and_serving(status: PipelineStatus, finished: bool, serving: bool) -> None:
    assert localrun.is_finished(status) is finished
    assert localrun.is_serving(status) is serving


def test_a_new_directory_has_a_fresh_status_and_a_saved_one_loads_back(tmp_path: Path) -> None:
    assert localrun.load_status(tmp_path) == PipelineStatus()
    status = PipelineStatus(phase="Tuning", progress="trials 3/12")
    localrun.save_status(tmp_path, status)
    assert localrun.load_status(tmp_path) == status


def test_create_records_the_manifest_it_runs(tmp_path: Path) -> None:
    run = LocalRun.create(pipeline(), tmp_path / "run")
    assert run.root.is_absolute()
    assert run.pipeline.metadata.generation == 1
    assert localrun.load_pipeline(run.root) == run.pipeline
    assert run.spec.serving is not None
    no_serving = LocalRun.create(pipeline(), tmp_path / "batch", serve=False)
    assert no_serving.spec.serving is None and localrun.load_pipeline(no_serving.root).spec.serving is None


def test_a_step_decides_saves_and_acts(tmp_path: Path) -> None:
    executor = Executor()
    run = local_run(tmp_path, executor)
    status = run.step(localrun.load_status(run.root))
    assert status.phase == "Preparing" and status.observed_generation == 1
    assert executor.started == ["prepare"]
    assert on_disk(run.root) == status


def test_verdicts_on_what_a_step_observed_are_delivered_after_its_actions(tmp_path: Path) -> None:
    executor = Executor(instant=["prepare"])
    run = local_run(tmp_path, executor)
    status = run.step(localrun.load_status(run.root))
    run.step(status)
    trials = ["trial-0000", "trial-0001", "trial-0002"]
    assert executor.verdicts == [([], ["prepare"]), (["prepare"], ["prepare", *trials])]


def test_status_is_written_only_when_it_changed(tmp_path: Path) -> None:
    executor = Executor()
    run = local_run(tmp_path, executor)
    status = run.step(run.step(PipelineStatus()))  # prepare started, then seen running
    prepare = status.workload("prepare")
    assert prepare is not None and prepare.state == "Running"
    path = run.root / localrun.STATUS_FILE
    path.write_text("untouched")

    assert run.step(status) == status  # still running: nothing new
    assert path.read_text() == "untouched"

    executor.seen["prepare"] = WorkloadObservation("succeeded", 0, result=SUCCEEDED)
    moved_on = run.step(status)
    assert moved_on.phase == "Tuning"
    assert on_disk(run.root) == moved_on
    assert executor.started == ["prepare", "trial-0000", "trial-0001", "trial-0002"]  # parallelism 3


def test_run_reconciles_until_asked_to_stop_and_reports_every_status(tmp_path: Path) -> None:
    run = local_run(tmp_path, Executor(instant={"prepare"}))
    phases: list[str] = []
    status = run.run(on_update=lambda s: phases.append(s.phase), until=lambda s: s.phase == "Tuning")
    assert phases == ["Preparing", "Tuning"]
    assert on_disk(run.root) == status


def test_a_new_run_on_the_same_directory_resumes_from_its_status(tmp_path: Path) -> None:
    first = local_run(tmp_path, Executor(instant={"prepare"}))
    interrupted = first.run(until=lambda s: s.phase == "Tuning")
    first.shutdown()
    assert first.executor.stopped  # type: ignore[attr-defined]

    executor = Executor()  # a new process: it started nothing
    again = local_run(tmp_path, executor)
    resumed = again.run(until=lambda _: True)
    assert resumed.phase == "Tuning"
    assert resumed.stages.prepare == interrupted.stages.prepare  # prepared once, not again
    assert [t.name for t in resumed.trials] == [t.name for t in interrupted.trials]
    assert "prepare" not in executor.started


def test_code_path_is_resolved_against_the_manifests_directory(tmp_path: Path) -> None:
    (tmp_path / "project" / "src").mkdir(parents=True)
    document = reference_document()
    document["spec"]["code"] = {"path": "src"}
    resolved = localrun.resolve_code(parse(document), tmp_path / "project")
    assert resolved.spec.code.path == str(tmp_path / "project" / "src")
    assert localrun.resolve_code(resolved, Path("/elsewhere")) == resolved  # absolute stays
    with pytest.raises(ValueError, match=r"spec.code.path: .*missing is not a directory"):
        document["spec"]["code"] = {"path": "missing"}
        localrun.resolve_code(parse(document), tmp_path / "project")


class Recording(Executor):
    def __init__(self) -> None:
        super().__init__()
        self.workloads: list[Workload] = []

    def start(self, workload: Workload) -> None:
        self.workloads.append(workload)
        super().start(workload)


def test_started_workloads_know_the_pipeline_and_the_code(tmp_path: Path) -> None:
    """The engine decides from the spec alone; the run fills in the pipeline's name and the code
    directory, which the workload contract turns into CONVEYOR_PIPELINE and CONVEYOR_CODE."""
    (tmp_path / "src").mkdir()
    document = reference_document()
    document["spec"]["code"] = {"path": str(tmp_path / "src")}
    run = LocalRun.create(parse(document), tmp_path / "run")
    executor = Recording()
    run.executor = executor  # type: ignore[assignment]
    run.step(PipelineStatus())
    (prepare,) = executor.workloads
    assert (prepare.name, prepare.pipeline, prepare.code) == ("prepare", "digits", str(tmp_path / "src"))
    plain = LocalRun.create(pipeline(), tmp_path / "plain")
    plain.executor = executor  # type: ignore[assignment]
    plain.step(PipelineStatus())
    assert executor.workloads[-1].code is None and executor.workloads[-1].pipeline == "digits"
