"""`{{params.x}}` in training.command: what counts as a reference, and how values are written in."""

from __future__ import annotations

import shlex

import pytest

from conveyor.operator.command_template import TemplateError, malformed, references, render


def test_references_in_order_of_first_use() -> None:
    argv = ["python", "t.py", "--a={{params.b.c}}", "{{ params.x }}", "{{params.b.c}}"]
    assert references(argv) == ["b.c", "x"]


@pytest.mark.parametrize("text", ["{{param.x}}", "{{ x }}", "{{params.}}", "{{params.a b}}"])
def test_what_is_not_a_reference_is_malformed(text: str) -> None:
    assert malformed(["run", f"--v={text}"]) == [text]
    with pytest.raises(TemplateError, match="is not a parameter reference"):
        render(["run", text], {"x": 1})


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.001, "0.001"), (64, "64"), (True, "true"), (False, "false"), ("adamw", "adamw"), (1e-05, "1e-05")],
)
def test_values_are_written_in_json_form(value: object, text: str) -> None:
    assert render(["{{params.p}}", "--p={{params.p}}"], {"p": value}) == [text, f"--p={text}"]


def test_an_embedded_value_cannot_break_out_of_a_shell_script() -> None:
    hostile = "x'; rm -rf / #"
    (script,) = render(["echo {{params.p}}"], {"p": hostile})
    assert shlex.split(script) == ["echo", hostile]


def test_a_name_without_a_value_is_named() -> None:
    with pytest.raises(TemplateError, match=r"\{\{params.y\}\} names no tuning parameter.*has: x"):
        render(["{{params.x}}", "{{params.y}}"], {"x": 1})


def test_a_command_without_placeholders_is_unchanged() -> None:
    argv = ["python", "train.py", "--epochs", "3", "{not a placeholder}"]
    assert render(argv, {}) == argv
