"""What a person sees of a pipeline: the live view and the end-of-run summary, rendered to text from a
status alone, for a pipeline that is tuning, one that finished, one that failed and one serving."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from conveyor.operator import views
from conveyor.operator.api.status import (
    ArtifactsStatus,
    BestTrial,
    EvaluationStatus,
    GateStatus,
    PipelineStatus,
    ServingStatus,
    StagesStatus,
    StageStatus,
    TrialStatus,
    rfc3339,
)

T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def text(*renderables: RenderableType) -> str:
    """What a terminal 140 columns wide shows, trailing blanks dropped."""
    console = Console(record=True, width=140, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def cells(shown: str) -> list[list[str]]:
    """The cells of every table row (lines with column separators), one list per row."""
    rows = [line for line in shown.splitlines() if "│" in line or "┃" in line]
    return [[cell.strip() for cell in re.split("[│┃]", row)] for row in rows]


def at(seconds: float) -> str:
    return rfc3339(T0 + timedelta(seconds=seconds))


def trial(number: int, state: str, **fields: object) -> TrialStatus:
    fields.update(name=f"trial-{number:04d}", number=number, state=state)
    return TrialStatus.model_validate(fields)


def tuning_status() -> PipelineStatus:
    return PipelineStatus(
        phase="Tuning",
        progress="trials 2/12",
        best_objective="accuracy=0.9731",
        stages=StagesStatus(
            prepare=StageStatus(state="Succeeded", start_time=at(0), completion_time=at(65)),
            tune=StageStatus(state="Running", start_time=at(65), message="2 of 12 trials"),
        ),
        trials=[
            trial(0, "Succeeded", params={"optimizer.learningRate": 0.003, "training.batchSize": 64},
                  epoch=10, epochs=10, values=[0.9, 0.9731], value=0.9731),
            trial(1, "Running", params={"optimizer.learningRate": 0.0123456, "training.batchSize": 32},
                  epoch=3, epochs=10, values=[0.5, None, 0.8125]),
            trial(2, "Pruned", params={"optimizer.learningRate": 0.1, "training.batchSize": 128}),
        ],
        best_trial=BestTrial(name="trial-0000", number=0, value=0.9731,
                             params={"optimizer.learningRate": 0.003, "training.batchSize": 64}),
    )


def test_live_view_of_a_tuning_pipeline() -> None:
    notes = ["a", "b", "Pruned: trial-0002", "Started"]
    shown = text(views.live("digits", tuning_status(), "accuracy", notes))
    lines = shown.splitlines()
    assert lines[0] == "digits Tuning  trials 2/12  best accuracy=0.9731"
    assert "prepare" in shown and "1m05s" in shown  # a finished stage shows how long it took
    tune = next(line for line in lines if line.startswith("tune"))
    assert "Running" in tune and "…" in tune and "2 of 12 trials" in tune  # still running: no end yet
    assert "train " not in shown  # stages not reached are left out
    assert "Trials (3)" in shown
    header, *rows = [row for row in cells(shown) if row[0].startswith("trial")]
    assert header == ["trial", "learningRate", "batchSize", "epoch", "accuracy", "state"]  # by dotted name
    assert [r[0] for r in rows] == ["trial-0001", "trial-0000", "trial-0002"]  # running first
    assert rows[0] == ["trial-0001", "0.01235", "32", "3/10", "0.8125", "Running"]  # latest value so far
    assert rows[1] == ["trial-0000", "0.003", "64", "10/10", "0.9731", "Succeeded"]
    assert rows[2] == ["trial-0002", "0.1", "128", "-", "-", "Pruned"]
    best = "Best so far: trial-0000 accuracy=0.9731  optimizer.learningRate=0.003, training.batchSize=64"
    assert best in lines
    assert lines[-4:] == [best, "b", "Pruned: trial-0002", "Started"]  # the last 3 notes


def test_live_view_before_any_trial() -> None:
    shown = text(views.live("digits", PipelineStatus(phase="Preparing"), "accuracy"))
    assert shown.splitlines()[0] == "digits Preparing"
    assert "Trials" not in shown and "Best so far" not in shown


def test_many_trials_show_the_running_ones_and_the_newest() -> None:
    trials = [trial(n, "Succeeded", value=0.5) for n in range(30)] + [trial(30, "Running")]
    trials[3] = trial(3, "Running")
    shown = text(views.trials_table(PipelineStatus(trials=trials), "accuracy"))
    names = [line.split()[0] for line in shown.splitlines() if line.startswith("trial-")]
    assert len(names) == views.MAX_TRIAL_ROWS
    assert names[:2] == ["trial-0003", "trial-0030"]
    assert names[2:] == [f"trial-{n:04d}" for n in range(12, 30)]
    assert "Trials (31)" in shown


def finished_status() -> PipelineStatus:
    return PipelineStatus(
        phase="Succeeded",
        reason="Completed",
        best_objective="accuracy=0.9731",
        evaluation=EvaluationStatus(
            model={"accuracy": 0.9712, "loss": 0.0923}, ensemble={"accuracy": 0.9801}
        ),
        gate=GateStatus(metric="accuracy", min=0.95, value=0.9801, candidate="ensemble", passed=True),
        artifacts=ArtifactsStatus(root="pvc://conveyor-artifacts/digits/", model_report="model/report.html",
                                  ensemble_report="ensemble/report.html"),
    )


def test_summary_of_a_finished_pipeline() -> None:
    lines = text(*views.summary("digits", finished_status())).splitlines()
    assert lines[0] == "digits Succeeded  best accuracy=0.9731  (Completed)"
    assert "Test metrics" in lines
    assert cells("\n".join(lines)) == [
        ["metric", "model", "ensemble"],
        ["accuracy", "0.9712", "0.9801"],
        ["loss", "0.0923", "-"],  # no ensemble value: a dash
    ]
    assert "Gate: ensemble test accuracy 0.9801 passes the gate (accuracy >= 0.95)" in lines
    assert "Report (model): pvc://conveyor-artifacts/digits/model/report.html" in lines
    assert "Report (ensemble): pvc://conveyor-artifacts/digits/ensemble/report.html" in lines
    assert not any(line.startswith("Serving") for line in lines)


def test_summary_paths_under_the_local_run_directory() -> None:
    shown = text(*views.summary("digits", finished_status(), root="/home/me/runs/digits"))
    assert "Report (model): /home/me/runs/digits/model/report.html" in shown


def test_summary_of_a_failed_pipeline_says_why() -> None:
    status = PipelineStatus(
        phase="Failed",
        reason="GateFailed",
        message="accuracy 0.61 is below the gate's min 0.95",
        evaluation=EvaluationStatus(model={"accuracy": 0.61}),
        gate=GateStatus(metric="accuracy", min=0.95, max=0.99, value=0.61, passed=False),
    )
    lines = text(*views.summary("digits", status)).splitlines()
    assert lines[0] == "digits Failed  (GateFailed)"
    assert lines[1] == "accuracy 0.61 is below the gate's min 0.95"
    assert cells("\n".join(lines)) == [["metric", "model"], ["accuracy", "0.61"]]  # no ensemble column
    assert "Gate: model test accuracy 0.6100 fails the gate (accuracy >= 0.95 and <= 0.99)" in lines


@pytest.mark.parametrize(("ready", "word"), [(True, "ready"), (False, "starting")])
def test_summary_of_a_serving_pipeline_gives_the_endpoint(ready: bool, word: str) -> None:
    status = PipelineStatus(
        phase="Serving", serving=ServingStatus(url="http://127.0.0.1:8080", ready=ready, model="ensemble")
    )
    lines = text(*views.summary("digits", status)).splitlines()
    assert lines[0] == "digits Serving"  # the reason is shown for finished pipelines only
    assert f"Serving: http://127.0.0.1:8080 (ensemble, {word})" in lines
    assert "Test metrics" not in lines and not any(line.startswith("Gate") for line in lines)


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [
        (None, None, "-"),
        (at(0), at(42), "42s"),
        (at(0), at(3725), "62m05s"),
        (at(0), None, "…"),  # running: the time so far, marked unfinished
    ],
)
def test_took(start: str | None, end: str | None, shown: str) -> None:
    assert views.took(start, end).endswith(shown)


@pytest.mark.parametrize(
    ("value", "shown"), [(None, "-"), (0.0123456, "0.01235"), (64, "64"), (1e-5, "1e-05"), ("adam", "adam")]
)
def test_fmt(value: object, shown: str) -> None:
    assert views.fmt(value) == shown
