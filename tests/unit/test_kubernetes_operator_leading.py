"""The operator's work queue under leader election (conveyor.operator.kubernetes.operator.Controller):
a standby queues nothing, a leader does, and one that stops leading drops its queue, its timers and
what it learnt at once, shows 0 on `conveyor_operator_leader`, and refuses to write from a step that
was already in flight (the fence). No API server is involved: these are the controller's own states."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.kubernetes.executor import Api
from conveyor.operator.kubernetes.operator import Controller, Fenced, OperatorConfig


def controller() -> Controller:
    return Controller(Api(client=None), OperatorConfig(namespaces=("ml",), workers=2))


def leader_gauge(made: Controller) -> float:
    value = made.metrics.registry.get_sample_value("conveyor_operator_leader")
    assert value is not None
    return value


def test_standby_queues_nothing_and_a_leader_does() -> None:
    async def scenario() -> None:
        made = controller()
        await made.start()
        assert not made.leading and leader_gauge(made) == 0
        made.enqueue(("ml", "a"))
        assert made.queue is None and not made.queued

        made.lead()
        assert made.leading and leader_gauge(made) == 1
        made.enqueue(("ml", "a"), delay=60)  # a requeue timer
        made.unseen[("ml", "b")] = {"metadata": {"name": "b"}}
        made.statuses[("ml", "c")] = PipelineStatus()
        made.metrics.record(("ml", "c"), None, made.statuses[("ml", "c")])
        assert (
            made.timers
            and made.metrics.registry.get_sample_value("conveyor_pipelines", {"phase": "Pending"}) == 1
        )

        workers = list(made.tasks)
        made.abdicate()
        assert not made.leading and leader_gauge(made) == 0
        assert not (made.timers or made.unseen or made.statuses or made.queued or made.tasks)
        assert made.metrics.registry.get_sample_value("conveyor_pipelines", {"phase": "Pending"}) == 0
        await asyncio.gather(*workers, return_exceptions=True)
        assert all(task.cancelled() for task in workers)
        made.enqueue(("ml", "a"))
        assert made.queue is None

        made.lead()  # leading again later: a fresh queue and workers
        assert made.leading and len(made.tasks) == 2
        await made.stop()
        assert not made.leading

    asyncio.run(scenario())


def test_a_step_in_flight_stops_at_the_fence() -> None:
    made = controller()
    made.check_fence()  # without leader election the fence is always open
    made.fence = lambda: False
    with pytest.raises(Fenced):
        made.check_fence()
    assert made.wait_quiet(0.0)  # no step in a thread
