"""tests/helpers/operator_bed.unwind_on_sigterm: a benchmark stopped with `kill` unwinds its `with`
blocks (and so stops the control plane it started) instead of dying where it stands."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.operator_bed import unwind_on_sigterm


def test_sigterm_raises_system_exit_inside_and_the_handler_is_restored_after() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, unwind_on_sigterm():
        signal.raise_signal(signal.SIGTERM)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
