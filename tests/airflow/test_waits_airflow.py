"""The Airflow operator and sensor wait as every other wait does (issue 23, item 2).

* One default wait timeout: 25 hours (the operator's was 48 h, the sensor's Airflow's 7 days),
  still overridable, also through ``default_args``.
* ``cancel_on_timeout`` is core's: a deferred wait cancels in the triggerer (core's wait) and the
  task raises core's error; a timeout event from a trigger deferred by an earlier batch_ops (no
  ``cancel_on_timeout`` in its kwargs) is honoured when the task resumes.
* The job operator's trigger and the sensor's poke drive core's wait-for-many and single poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pendulum
import pytest

from batch_ops import BatchClient, BatchStatus, BatchTimeoutError, NotFoundError
from batch_ops.airflow import OpenAIBatchOperator, OpenAIBatchSensor
from batch_ops.airflow.jobs import OpenAIBatchJobTrigger
from batch_ops.airflow.triggers import OpenAIBatchTrigger, timeout_event

EMBED = "/v1/embeddings"
REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]
TWENTY_FIVE_HOURS = 25 * 3600.0


class TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_the_operator_and_the_sensor_wait_25_hours_by_default() -> None:
    from airflow.sdk import DAG

    assert OpenAIBatchOperator(task_id="o", endpoint=EMBED, input_file_id="f").timeout == TWENTY_FIVE_HOURS
    assert OpenAIBatchSensor(task_id="s", batch_id="b").timeout == TWENTY_FIVE_HOURS
    assert OpenAIBatchSensor(task_id="s", batch_id="b", timeout=60).timeout == 60
    with DAG("waits", start_date=pendulum.datetime(2026, 1, 1), schedule=None, default_args={"timeout": 5}):
        assert OpenAIBatchSensor(task_id="s", batch_id="b").timeout == 5  # default_args still set it


async def _first_event(trigger: Any) -> dict[str, Any]:
    events: AsyncIterator[Any] = trigger.run()
    event = await anext(events)
    await events.aclose()
    return dict(event.payload)


def test_a_deferred_wait_cancels_in_the_triggerer_and_the_task_raises_cores_error(make_server, use_server) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, BatchClient(api_key="sk-test", base_url=url) as c:
        use_server(url)
        kept, gone = (c.submit(REQUESTS, endpoint=EMBED).id for _ in range(2))
        events = {batch_id: asyncio.run(_first_event(OpenAIBatchTrigger(
            conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.05, timeout=0.5,
            cancel_on_timeout=batch_id == gone))) for batch_id in (kept, gone)}
        statuses = {b: c.batches.retrieve(b).status for b in (kept, gone)}

    assert events[gone]["event"] == "timeout" and events[gone]["cancel"] == "requested"
    assert statuses[gone] in (BatchStatus.CANCELLING, BatchStatus.CANCELLED) and not statuses[kept].is_terminal
    operator = OpenAIBatchOperator(task_id="o", endpoint=EMBED, input_file_id="f", cancel_on_timeout=True)
    with pytest.raises(BatchTimeoutError, match=r"cancel requested \(cancel_on_timeout=True\)"):
        operator.execute_complete({"ti": TaskInstance()}, events[gone])


def test_a_timeout_from_a_trigger_deferred_before_the_upgrade_still_cancels(make_server, use_server) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, BatchClient(api_key="sk-test", base_url=url) as c:
        use_server(url)
        batch_id = c.submit(REQUESTS, endpoint=EMBED).id
        old_event = timeout_event(batch_id, deadline=time.time(), last=None)  # as an earlier trigger sent it
        old_event.pop("cancel_on_timeout", None)
        operator = OpenAIBatchOperator(task_id="o", endpoint=EMBED, input_file_id="f", cancel_on_timeout=True)
        with pytest.raises(BatchTimeoutError, match="cancel requested"):
            operator.execute_complete({"ti": TaskInstance()}, old_event)
        status = c.batches.retrieve(batch_id).status
    assert status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


def test_the_sensor_pokes_through_cores_single_poll(make_server, use_server) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, BatchClient(api_key="sk-test", base_url=url) as c:
        use_server(url)
        running = c.submit(REQUESTS, endpoint=EMBED).id
        assert OpenAIBatchSensor(task_id="s", batch_id=running, deferrable=False).poke({"ti": TaskInstance()}) is False
        with pytest.raises(NotFoundError):  # permanent: waiting will not help
            OpenAIBatchSensor(task_id="s", batch_id="batch_nope", deferrable=False).poke({"ti": TaskInstance()})


def test_the_job_trigger_maps_cores_wait_for_many_to_its_events(make_server, use_server) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, BatchClient(api_key="sk-test", base_url=url) as c:
        use_server(url)
        running = c.submit(REQUESTS, endpoint=EMBED).id

        def event(**kwargs: Any) -> dict[str, Any]:
            return asyncio.run(_first_event(OpenAIBatchJobTrigger(conn_id="openai_batch_default", poll_interval=0.05,
                                                                  **kwargs)))

        woke = event(batch_ids=[running], wake_at=time.time() + 0.3, deadline=time.time() + 30)
        timed_out = event(batch_ids=[running], deadline=time.time() + 0.3)
        failed = event(batch_ids=[running, "batch_nope"], deadline=time.time() + 30)
    assert woke == {"event": "wake"} and timed_out == {"event": "timeout"}
    assert failed["event"] == "error" and "NotFoundError" in failed["message"]
