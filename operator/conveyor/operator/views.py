"""How a pipeline looks to a person: rich renderables built from `status` alone.

The same views serve the live display of `conveyor run`, `conveyor status` on a local run directory
and `conveyor status NAME` against a cluster, so what people see never depends on where it ran.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from conveyor.operator.api.status import STAGES, PipelineStatus, TrialStatus, parse_time
from conveyor.operator.engine.promotion import gate_message

STATE_STYLES = {
    "Succeeded": "green",
    "Running": "cyan",
    "Pending": "dim",
    "Failed": "red",
    "Pruned": "yellow",
    "Suspended": "magenta",
    "Skipped": "dim",
}
MAX_TRIAL_ROWS = 20


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def styled(state: str | None) -> Text:
    return Text(state or "-", style=STATE_STYLES.get(state or "", ""))


def header(name: str, status: PipelineStatus) -> Text:
    text = Text()
    text.append(f"{name} ", style="bold")
    text.append(status.phase, style=STATE_STYLES.get(status.phase, "bold cyan"))
    if status.progress:
        text.append(f"  {status.progress}")
    if status.best_objective:
        text.append(f"  best {status.best_objective}", style="green")
    if status.reason and status.phase in ("Failed", "Succeeded"):
        text.append(f"  ({status.reason})")
    return text


def stages_table(status: PipelineStatus) -> Table:
    table = Table(title="Stages", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("stage", "state", "took", "note"):
        table.add_column(column)
    for name in STAGES:
        stage = status.stages.get(name)
        if stage is None:
            continue
        table.add_row(
            name,
            styled(stage.state),
            took(stage.start_time, stage.completion_time),
            stage.message or stage.reason or "",
        )
    return table


def took(start: str | None, end: str | None) -> str:
    begin, finish = parse_time(start), parse_time(end)
    if begin is None:
        return "-"
    seconds = int(((finish or datetime.now(UTC)) - begin).total_seconds())
    text = f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return text if finish else f"{text}…"


def _trial_rows(trials: list[TrialStatus]) -> list[TrialStatus]:
    """Running trials first, then the rest by number, the newest kept when there are many."""
    running = [t for t in trials if t.state == "Running"]
    others = [t for t in trials if t.state != "Running"]
    return (running + others[-(MAX_TRIAL_ROWS - len(running)) :])[:MAX_TRIAL_ROWS]


def trials_table(status: PipelineStatus, metric: str) -> Table:
    trials = status.trials
    names = sorted({k for t in trials for k in t.params})
    table = Table(title=f"Trials ({len(trials)})", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("trial")
    for name in names:
        table.add_column(name.split(".")[-1], justify="right")
    table.add_column("epoch", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("state")
    best = status.best_trial.name if status.best_trial else None
    for trial in _trial_rows(trials):
        latest = next((v for v in reversed(trial.values) if v is not None), None)
        value = trial.value if trial.value is not None else latest
        epoch = f"{trial.epoch or 0}/{trial.epochs}" if trial.epochs else fmt(trial.epoch)
        label = Text(trial.name, style="bold green" if trial.name == best else "")
        table.add_row(
            label,
            *(fmt(trial.params.get(n)) for n in names),
            epoch,
            score(value),
            styled(trial.state),
        )
    return table


def metrics_table(status: PipelineStatus) -> Table | None:
    evaluation = status.evaluation
    if evaluation is None or not (evaluation.model or evaluation.ensemble):
        return None
    columns = {"model": evaluation.model or {}, "ensemble": evaluation.ensemble or {}}
    columns = {k: v for k, v in columns.items() if v}
    table = Table(title="Test metrics", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for metric in sorted({m for values in columns.values() for m in values}):
        table.add_row(metric, *(fmt(values.get(metric)) for values in columns.values()))
    return table


def summary(name: str, status: PipelineStatus, root: str | None = None) -> list[RenderableType]:
    """The end-of-run view: metrics, the gate, where the plots are, the endpoint."""
    parts: list[RenderableType] = [header(name, status)]
    if status.phase == "Failed" and status.message:
        parts.append(Text(status.message, style="red"))
    table = metrics_table(status)
    if table is not None:
        parts.append(table)
    gate = status.gate
    if gate is not None:
        style = "bold green" if gate.passed else "bold red"
        parts.append(Text.assemble("Gate: ", Text(gate_message(gate), style=style)))
    artifacts = status.artifacts
    if artifacts is not None:
        base = root or artifacts.root or ""
        for label, path in (
            ("Report (model)", artifacts.model_report),
            ("Report (ensemble)", artifacts.ensemble_report),
        ):
            if path:
                parts.append(Text(f"{label}: {base.rstrip('/')}/{path}"))
    if status.serving is not None and status.serving.url:
        ready = "ready" if status.serving.ready else "starting"
        parts.append(
            Text.assemble("Serving: ", (status.serving.url, "bold"), f" ({status.serving.model}, {ready})")
        )
    return parts


def live(name: str, status: PipelineStatus, metric: str, notes: list[str] | None = None) -> Group:
    """The view refreshed while a pipeline runs."""
    parts: list[RenderableType] = [header(name, status), stages_table(status)]
    if status.trials:
        parts.append(trials_table(status, metric))
    if status.best_trial is not None:
        best = status.best_trial
        params = ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
        parts.append(Text(f"Best so far: {best.name} {metric}={score(best.value)}  {params}", style="green"))
    for note in (notes or [])[-3:]:
        parts.append(Text(note, style="dim"))
    return Group(*parts)
