"""`conveyor run -f pipeline.yaml`: the whole pipeline on this machine with local processes.

Prepare, tune, train, evaluate, ensemble, then serve until Ctrl-C (`--no-serve` stops after the
ensemble). A live view shows the stage, the trials and the best so far. Ctrl-C stops every child
process; the same command again resumes where it stopped.

User code: `spec.code.path` is relative to the manifest's directory. It goes on this process's path,
where its entrypoints are imported and checked before anything starts (as `conveyor validate` does),
and into the environment of every process the run starts (`CONVEYOR_CODE`, `PYTHONPATH`), serving
included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a pipeline on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-f", "--filename", required=True, help="TrainingPipeline manifest (YAML)")
    parser.add_argument("--root", type=Path, help="artifact directory (default: ./runs/<name>)")
    parser.add_argument("--no-serve", action="store_true", help="stop after evaluation and the ensemble")
    parser.add_argument("--port", type=int, help="serving port (default: a free one)")
    parser.add_argument("--fresh", action="store_true", help="discard a previous run's status and artifacts")
    parser.add_argument("--plain", action="store_true", help="no live view (logs progress lines instead)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="start every process as a fresh interpreter (torchrun agents) instead of from warm workers",
    )
    parser.set_defaults(handler=handle)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def handle(args: argparse.Namespace) -> int:
    import shutil

    from rich.console import Console
    from rich.live import Live

    from conveyor.operator import views
    from conveyor.operator.api.resource import ManifestError, load_manifest
    from conveyor.operator.api.status import PipelineStatus
    from conveyor.operator.localrun import LocalRun, default_root, is_finished

    console = Console(stderr=True)
    try:
        pipelines = load_manifest(Path(args.filename))
    except ManifestError as error:
        console.print(f"[red]{args.filename} is not a valid TrainingPipeline:[/red]\n{error}")
        return 2
    except OSError as error:
        console.print(f"[red]cannot read {args.filename}: {error}[/red]")
        return 2
    if len(pipelines) != 1:
        console.print(f"[red]{args.filename} holds {len(pipelines)} pipelines; conveyor run takes one[/red]")
        return 2
    from conveyor.commands.validate import code_problems, use_code
    from conveyor.sdk import env as sdk_env

    try:
        pipeline = use_code(pipelines[0], Path(args.filename).resolve().parent)
    except ValueError as error:
        console.print(f"[red]{args.filename}: {error}[/red]")
        return 2
    code = pipeline.spec.code.path
    if code is not None:
        os.environ[sdk_env.CODE] = code
        os.environ["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [os.environ.get("PYTHONPATH")])])
    problems = code_problems(pipeline)
    if problems:
        console.print(f"[red]{args.filename}: the pipeline's code is not usable:[/red]")
        for problem in problems:
            console.print(problem, markup=False, highlight=False)
        return 2
    name = pipeline.metadata.name or "pipeline"
    root = args.root or default_root(pipeline)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    # SIGTERM (kill, timeout, a supervisor) stops the children like Ctrl-C does: they run in their own
    # sessions, so nobody else would.
    signal.signal(signal.SIGTERM, _interrupt)
    run = LocalRun.create(pipeline, root, serve=not args.no_serve, warm=not args.cold)
    run.executor.serving_port = args.port
    metric = pipeline.spec.task.metric
    status = PipelineStatus()
    try:
        if args.plain or not console.is_terminal:
            last: list[str] = []

            def report(current: PipelineStatus) -> None:
                line = f"{current.phase} {current.progress or ''} {current.best_objective or ''}".strip()
                if [line] != last:
                    last[:] = [line]
                    console.print(line)

            status = run.run(on_update=report)
        else:
            with Live(console=console, refresh_per_second=4, transient=False) as live:

                def refresh(current: PipelineStatus) -> None:
                    live.update(views.live(name, current, metric, run.executor.messages))

                status = run.run(on_update=refresh)
        for part in views.summary(name, status, str(run.root)):
            console.print(part)
        if is_finished(status):
            return 0 if status.phase == "Succeeded" else 1
        console.print("Serving until Ctrl-C.")
        run.run(until=lambda _: False)
        return 0
    except KeyboardInterrupt:
        console.print("\nStopping every child process; run the same command again to resume.")
        return 130
    finally:
        run.shutdown()
        sys.stderr.flush()
