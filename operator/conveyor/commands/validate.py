"""`conveyor validate -f FILE...`: check manifests with the rules the API server applies (same messages),
then the user's code they name.

For a pipeline with user code, validation goes one step further than the API server can: with
`spec.code.path` (relative to the manifest) on the path, it imports every entrypoint and checks that it
takes the arguments Conveyor passes (`conveyor.trainer.usercode`), and, where torch is installed, runs
the trainer's preflight checks (`conveyor.trainer.preflight`: the data yields what the model takes) —
the mistakes a first trial would otherwise find minutes later, named with their fix now.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

# Each entrypoint field, the arguments Conveyor calls it with (names only for messages), and where it is.
ENTRYPOINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model.entrypoint", ("options", "info")),
    ("data.entrypoint", ("split",)),
    ("training.entrypoint", ("config",)),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate TrainingPipeline manifests",
        description="Validate manifests and the code they name; prints OK or one line per problem "
        "(field path: message).",
    )
    parser.add_argument(
        "-f", "--filename", action="append", required=True, help="manifest (YAML); repeatable"
    )
    parser.add_argument("extra", nargs="*", metavar="FILE", help="more manifests")
    parser.set_defaults(handler=handle)


def use_code(pipeline: Any, manifest_dir: Path) -> Any:
    """`pipeline` with `spec.code.path` resolved against `manifest_dir`, that directory first on
    `sys.path` of this process; raises ValueError naming the field when it is no directory."""
    from conveyor.operator.localrun import resolve_code

    pipeline = resolve_code(pipeline, manifest_dir)
    path = pipeline.spec.code.path
    if path is not None and path not in sys.path:
        sys.path.insert(0, path)
    return pipeline


def code_problems(pipeline: Any) -> list[str]:
    """What is wrong with the user's code a (valid, code path resolved) pipeline names, each naming
    the field and the fix: entrypoints that cannot be imported or called, then the preflight checks."""
    from conveyor.trainer.config import ConfigError
    from conveyor.trainer.usercode import entrypoint

    if not uses_code(pipeline):
        return []
    spec = pipeline.spec
    problems: list[str] = []
    for field, arguments in ENTRYPOINTS:
        section, _, _ = field.partition(".")
        reference = getattr(getattr(spec, section), "entrypoint", None)
        if reference is None:
            continue
        try:
            entrypoint(reference, f"spec.{field}", arguments)
        except ConfigError as error:
            problems.append(str(error))
    if problems or not _importable("torch") or not _importable("conveyor.trainer.preflight"):
        return problems
    from conveyor.trainer import preflight

    try:
        preflight.check(spec.trainer_config())
    except ConfigError as error:
        problems.append(str(error))
    except Exception as error:  # the user's code raised: its own words and where
        from conveyor.trainer.usercode import last_lines

        problems.append(f"preflight: your code raised:\n{last_lines(error)}")
    return problems


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def uses_code(pipeline: Any) -> bool:
    """Whether the pipeline names any entrypoint (its code is imported and checked)."""
    spec = pipeline.spec
    return any(getattr(getattr(spec, f.partition(".")[0]), "entrypoint", None) for f, _ in ENTRYPOINTS)


def handle(args: argparse.Namespace) -> int:
    from conveyor.operator.api.resource import ManifestError, load_manifest

    failed = False
    for path in [*args.filename, *args.extra]:
        try:
            pipelines = load_manifest(path) if path != "-" else load_manifest(sys.stdin.read())
        except FileNotFoundError:
            print(f"{path}: no such file", file=sys.stderr)
            failed = True
            continue
        except ManifestError as error:
            for field, message in error.problems:
                print(f"{path}: {field}: {message}" if field else f"{path}: {message}", file=sys.stderr)
            failed = True
            continue
        manifest_dir = Path(path).resolve().parent if path != "-" else Path.cwd()
        problems: list[str] = []
        for pipeline in pipelines:
            try:
                pipeline = use_code(pipeline, manifest_dir)
            except ValueError as error:
                problems.append(str(error))
                continue
            problems.extend(code_problems(pipeline))
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        if not problems:
            names = ", ".join(p.name for p in pipelines)
            print(f"{path}: OK ({names})")
    return 1 if failed else 0
