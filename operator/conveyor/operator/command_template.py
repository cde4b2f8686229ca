"""`{{params.<dotted name>}}` in `spec.training.command`: how a trial's values reach an unmodified script.

An argparse script that knows nothing of Conveyor can still be tuned: its command line names the tuning
parameters, e.g. `[python, train.py, --lr, "{{params.optimizer.learningRate}}"]`, and every trial runs it
with its own values written in. Pure functions, used by the manifest rules (every placeholder must name a
tuning parameter, checked before anything runs) and by the workload contract (rendered per trial), so
the two cannot disagree about what a placeholder is.

Values are written in their JSON form (true/false, 0.001, adamw) so a script reads the same text as
`CONVEYOR_PARAMS` holds. An argument that is exactly one placeholder becomes the bare value: the command
runs without a shell, so it is one argv element whatever it contains. A placeholder inside a longer
argument (`--lr={{params.x}}`, or a `bash -c` script) is shell-quoted with `shlex.quote`, so a value
cannot break out of a shell script it lands in.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*params\.([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*\}\}")
ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")


class TemplateError(ValueError):
    """A command whose placeholders cannot be rendered; the message names the placeholder and the fix."""


def references(argv: Sequence[str]) -> list[str]:
    """The parameter names the command refers to, in order of first use."""
    found: list[str] = []
    for part in argv:
        for name in PLACEHOLDER.findall(part):
            if name not in found:
                found.append(name)
    return found


def malformed(argv: Sequence[str]) -> list[str]:
    """`{{...}}` texts that are not `{{params.NAME}}` (a typo such as `{{param.x}}` or `{{ x }}`)."""
    return [
        text for part in argv for text in ANY_PLACEHOLDER.findall(part) if not PLACEHOLDER.fullmatch(text)
    ]


def value_text(value: Any) -> str:
    """A parameter's value as a script reads it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def render(argv: Sequence[str], params: Mapping[str, Any]) -> list[str]:
    """`argv` with every `{{params.NAME}}` replaced by `params[NAME]`; raises TemplateError for a name
    `params` lacks or a `{{...}}` that is not a parameter reference."""
    bad = malformed(argv)
    if bad:
        raise TemplateError(
            f"training.command: {bad[0]!r} is not a parameter reference; write {{{{params.NAME}}}} with "
            "NAME a tuning parameter's name, e.g. {{params.optimizer.learningRate}}"
        )
    missing = [name for name in references(argv) if name not in params]
    if missing:
        known = ", ".join(sorted(params)) or "none"
        raise TemplateError(
            f"training.command: {{{{params.{missing[0]}}}}} names no tuning parameter (this run has: "
            f"{known}); add it to spec.tuning.parameters or write the value"
        )
    rendered: list[str] = []
    for part in argv:
        whole = PLACEHOLDER.fullmatch(part)
        if whole:
            rendered.append(value_text(params[whole.group(1)]))
        else:
            rendered.append(PLACEHOLDER.sub(lambda m: shlex.quote(value_text(params[m.group(1)])), part))
    return rendered
