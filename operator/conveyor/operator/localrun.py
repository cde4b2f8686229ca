"""`conveyor run`: the engine driven by the local executor, with status kept in the run directory.

Locally, `<root>/status.json` plays the part of the resource's status on Kubernetes: the loop reads it,
observes the workloads it names, asks the engine for the next actions, writes it back (atomically,
only when it changed) and carries the actions out, as the operator does. Running the same command
again therefore resumes: finished trials are not run again, and interrupted workloads restart from
their checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from conveyor.operator.api.resource import TrainingPipeline
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import active_workloads, reconcile
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
        pipeline = pipeline.model_copy(update={"spec": spec})
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

    def step(self, status: PipelineStatus) -> PipelineStatus:
        """One reconcile: observe, decide, persist, act."""
        observations = self.executor.observe(active_workloads(status), status.serving is not None)
        decision = reconcile(
            self.spec, status, observations, datetime.now(UTC), generation=self.pipeline.metadata.generation
        )
        if decision.status != status:
            save_status(self.root, decision.status)
        carry_out(self.executor, decision.actions)
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
