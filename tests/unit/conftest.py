"""Fixtures of the pure unit tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.manifests import reference_document


@pytest.fixture
def reference() -> dict[str, Any]:
    """The reference manifest as a dict the test may change."""
    return reference_document()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, for servers (the progress endpoint) that tests
    talk to over real sockets from the test's thread; stopped and closed afterwards."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()
