"""`conveyor run`: the engine driven by the local executor, with status kept in the run directory.

Locally, `<root>/status.json` plays the part of the resource's status on Kubernetes: the loop reads it,
observes the workloads it names, asks the engine for the next actions, writes it back (atomically,
only when it changed) and carries the actions out, as the operator does. Running the same command
again therefore resumes: finished trials are not run again, and interrupted workloads restart from
their checkpoints.

The engine decides workloads from the spec alone; what only the run knows is filled in here before the
executor starts them: the pipeline's name and the user's code directory (`spec.code.path`, resolved
against the manifest's directory by `resolve_code`), which reach every process through the workload
contract (`CONVEYOR_PIPELINE`, `CONVEYOR_CODE`; the trainer puts the directory on its path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from conveyor.operator.api.resource import TrainingPipeline
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import active_workloads, reconcile
from conveyor.operator.engine.actions import Action, StartWorkload
from conveyor.operator.executors.local import LocalExecutor
from conveyor.operator.executors.protocol import carry_out
from conveyor.trainer.artifacts import write_json_atomic

STATUS_FILE = "status.json"
MANIFEST_FILE = "pipeline.json"
POLL_SECONDS = 0.3


def default_root(pipeline: TrainingPipeline, runs: Path = Path("runs")) -> Path:
    return runs / (pipeline.metadata.name or "pipeline")


def load_status(root: Path) -> PipelineStatus:
    path = root / STATUS_FILE
    if not path.exists():
        return PipelineStatus()
    return PipelineStatus.model_validate_json(path.read_text())


def save_status(root: Path, status: PipelineStatus) -> None:
    write_json_atomic(root / STATUS_FILE, status.to_wire())


def resolve_code(pipeline: TrainingPipeline, manifest_dir: Path) -> TrainingPipeline:
    """`pipeline` with `spec.code.path` made absolute (it is relative to the manifest's directory);
    raises ValueError naming the field when it is not a directory."""
    code = pipeline.spec.code
    if code.path is None:
        return pipeline
    path = (manifest_dir / code.path).resolve()
    if not path.is_dir():
        raise ValueError(
            f"spec.code.path: {path} is not a directory; give the directory of your code, relative to "
            "the manifest"
        )
    spec = pipeline.spec.model_copy(update={"code": code.model_copy(update={"path": str(path)})})
    return pipeline.model_copy(update={"spec": spec})


def load_pipeline(root: Path) -> TrainingPipeline:
    """The manifest a run directory was started with (for `conveyor status`)."""
    return TrainingPipeline.model_validate(json.loads((root / MANIFEST_FILE).read_text()))


def is_finished(status: PipelineStatus) -> bool:
    return status.phase in ("Succeeded", "Failed")


def is_serving(status: PipelineStatus) -> bool:
    return status.phase == "Serving" and status.serving is not None and status.serving.ready


@dataclass
class LocalRun:
    """One pipeline on this machine: spec, status on disk, executor."""

    pipeline: TrainingPipeline
    root: Path
    executor: LocalExecutor

    @classmethod
    def create(
        cls, pipeline: TrainingPipeline, root: Path, serve: bool = True, warm: bool = True
    ) -> LocalRun:
        spec = pipeline.spec if serve else pipeline.spec.model_copy(update={"serving": None})
        pipeline = resolve_code(pipeline.model_copy(update={"spec": spec}), Path.cwd())
        pipeline.metadata.generation = pipeline.metadata.generation or 1
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            root / MANIFEST_FILE, pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        return cls(pipeline, root, LocalExecutor(root, warm=warm, model_name=pipeline.metadata.name))

    @property
    def spec(self) -> TrainingPipelineSpec:
        return self.pipeline.spec

    def situate(self, actions: Sequence[Action]) -> list[Action]:
        """The engine's actions with the workloads' pipeline name and code directory filled in."""
        name, code = self.pipeline.metadata.name or "pipeline", self.spec.code.path
        return [
            StartWorkload(replace(a.workload, pipeline=name, code=code))
            if isinstance(a, StartWorkload)
            else a
            for a in actions
        ]

    def step(self, status: PipelineStatus) -> PipelineStatus:
        """One reconcile: observe, decide, persist, act, then tell waiting trials they were judged."""
        observations = self.executor.observe(active_workloads(status), status.serving is not None)
        decision = reconcile(
            self.spec, status, observations, datetime.now(UTC), generation=self.pipeline.metadata.generation
        )
        if decision.status != status:
            save_status(self.root, decision.status)
        carry_out(self.executor, self.situate(decision.actions))
        self.executor.deliver_verdicts(observations)
        return decision.status

    def run(
        self,
        on_update: Callable[[PipelineStatus], None] = lambda _: None,
        until: Callable[[PipelineStatus], bool] = lambda s: is_finished(s) or is_serving(s),
    ) -> PipelineStatus:
        """Reconcile until `until(status)`; the caller stops children (see `shutdown`)."""
        status = load_status(self.root)
        while True:
            status = self.step(status)
            on_update(status)
            if until(status):
                return status
            time.sleep(POLL_SECONDS)

    def shutdown(self) -> None:
        self.executor.shutdown()
