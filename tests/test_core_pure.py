"""Core decisions without I/O: models, settings, retry policy, poller and the client's plans."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from batch_ops import Batch, BatchList, BatchStatus, ClientSettings, CreateBatchRequest, Usage, _plans
from batch_ops._http import RetryPolicy, parse_retry_after
from batch_ops._plans import Reply, Send, Sleep
from batch_ops.dialects import OPENAI
from batch_ops.errors import (
    APIConnectionError,
    BadRequestError,
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    ConfigurationError,
    InputValidationError,
    RequestFailuresError,
)
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY
from batch_ops.outcomes import outcome_error
from batch_ops.polling import BatchPoller

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def _batch(**fields: object) -> Batch:
    base: dict[str, object] = {
        "id": "batch_1", "endpoint": "/v1/chat/completions", "input_file_id": "file-1",
        "status": "in_progress", "created_at": 1_700_000_000,
    }
    base.update(fields)
    return Batch.model_validate(base)


# --- models ---------------------------------------------------------------------------------


def test_list_example_from_the_published_docs_parses() -> None:
    """The seed's list example carries batches as JSON strings with a trailing comma."""
    item = (
        '{\n "id": "batch_abc123",\n "object": "batch",\n "endpoint": "/v1/completions",\n'
        ' "errors": null,\n "input_file_id": "file-abc123",\n "completion_window": "24h",\n'
        ' "status": "completed",\n "output_file_id": "file-cvaTdG",\n "error_file_id": "file-HOWS94",\n'
        ' "created_at": 1711471533,\n "request_counts": {\n "total": 100,\n "completed": 95,\n "failed": 5\n },\n'
        ' "usage": {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 500,'
        ' "output_tokens_details": {"reasoning_tokens": 300}, "total_tokens": 2000},\n'
        ' "metadata": {\n "customer_id": "user_123456789",\n "batch_description": "Nightly eval job",\n }\n}\n'
    )
    page = BatchList.model_validate({"data": [item], "first_id": "batch_abc123", "last_id": "batch_abc456",
                                     "has_more": False, "object": "list"})
    b = page.data[0]
    assert b.status is BatchStatus.COMPLETED
    assert b.request_counts.failed == 5
    assert b.usage is not None and b.usage.input_tokens_details.cached_tokens == 1024
    assert b.metadata == {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}


def test_seed_documents_are_where_we_expect() -> None:
    # Keeps the test above honest: the quirk it copies is in the seeds.
    if not SEEDS.is_dir():
        pytest.skip("shared/seeds not beside this checkout")
    text = "".join(p.read_text() for p in SEEDS.iterdir())
    assert '"data" : [' in text and "Nightly eval job" in text


def test_azure_style_status_and_iso_timestamps_normalise() -> None:
    b = _batch(status="Finalizing", created_at="2024-03-26T16:45:33Z", completed_at="2024-03-26T17:45:33+00:00")
    assert b.status is BatchStatus.FINALIZING
    assert b.created_at == 1711471533
    assert b.completed_at == 1711471533 + 3600
    assert BatchStatus.parse("InProgress") is BatchStatus.IN_PROGRESS
    assert BatchStatus.parse("Canceled") is BatchStatus.CANCELLED


def test_unknown_fields_are_kept_and_empty_error_file_id_is_absent() -> None:
    b = _batch(error_file_id="", brand_new={"x": 1})
    assert b.error_file_id is None
    assert b.model_extra == {"brand_new": {"x": 1}}
    assert json.loads(b.model_dump_json())["brand_new"] == {"x": 1}


@pytest.mark.parametrize("status", list(BatchStatus))
def test_terminal_statuses(status: BatchStatus) -> None:
    assert status.is_terminal == (status.value in {"completed", "failed", "expired", "cancelled"})


def test_usage_sums() -> None:
    a = Usage.model_validate({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                              "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
    total = a + a
    assert (total.input_tokens, total.input_tokens_details.cached_tokens, total.output_tokens_details.reasoning_tokens,
            total.total_tokens) == (20, 8, 4, 30)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"endpoint": "/v1/chat"}, "unsupported endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "17 metadata pairs"),
        ({"metadata": {"k" * 65: "v"}}, "65 characters"),
        ({"metadata": {"k": "v" * 513}}, "513 characters"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 100}}, "3600"),
        ({"output_expires_after": {"anchor": "expires_at", "seconds": 7200}}, "anchor"),
    ],
)
def test_create_batch_request_rejects(fields: dict[str, object], needle: str) -> None:
    body: dict[str, object] = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", **fields}
    with pytest.raises(ValidationError, match=needle):
        CreateBatchRequest.model_validate(body)


def test_create_batch_request_accepts_the_limits() -> None:
    ok = CreateBatchRequest(
        input_file_id="file-1", endpoint="/v1/videos",
        metadata={f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)},
        output_expires_after={"anchor": "created_at", "seconds": 2_592_000},  # type: ignore[arg-type]
    )
    assert ok.to_wire()["output_expires_after"] == {"anchor": "created_at", "seconds": 2592000}


# --- settings --------------------------------------------------------------------------------


def test_settings_from_env_and_secret_never_printed() -> None:
    s = ClientSettings.from_env({"OPENAI_API_KEY": "sk-secret-123", "OPENAI_ORG_ID": "org-1",
                                 "OPENAI_PROJECT_ID": "proj-1", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1/"})
    assert s.base_url == "http://127.0.0.1:1/v1"
    assert s.auth_headers() == {"Authorization": "Bearer sk-secret-123", "OpenAI-Organization": "org-1",
                                "OpenAI-Project": "proj-1"}
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))):
        assert "sk-secret-123" not in text


def test_azure_mode_uses_api_key_header_and_version_query() -> None:
    s = ClientSettings.from_env({"AZURE_OPENAI_API_KEY": "az", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/",
                                 "OPENAI_API_VERSION": "2024-10-21"})
    assert s.is_azure
    assert s.base_url == "https://r.openai.azure.com/openai"
    assert s.auth_headers() == {"api-key": "az"}
    assert s.default_params() == {"api-version": "2024-10-21"}


def test_missing_key_names_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        ClientSettings.from_env({}).require_key()


def test_bad_base_url_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        ClientSettings(api_key="k", base_url="api.openai.com/v1")


# --- retry policy ----------------------------------------------------------------------------


def test_retry_policy_retryable_statuses_and_budget() -> None:
    p = RetryPolicy(max_retries=3, max_elapsed=10, initial=1, maximum=4, rng=random.Random(0))
    for status in (408, 409, 429, 500, 502, 503):
        assert p.delay(attempt=0, elapsed=0, status=status) is not None
    for status in (400, 401, 403, 404, 422):
        assert p.delay(attempt=0, elapsed=0, status=status) is None
    assert p.delay(attempt=3, elapsed=0, status=500) is None  # attempts bounded
    assert p.delay(attempt=0, elapsed=9.9, status=429, headers={"retry-after": "5"}) is None  # time bounded
    delays = [p.delay(attempt=a, elapsed=0, connection_error=True) for a in range(3)]
    assert all(d is not None for d in delays)
    assert [0.5 <= delays[0] <= 1, 1 <= delays[1] <= 2, 2 <= delays[2] <= 4] == [True, True, True]  # type: ignore[operator]


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


# --- poller ----------------------------------------------------------------------------------


def test_poller_backs_off_without_progress_and_resets_on_progress() -> None:
    p = BatchPoller(poll_interval=10, max_poll_interval=30, jitter=0)
    p.start(now=0)
    b = _batch(request_counts={"total": 10, "completed": 1})
    assert p.decide(b, now=0).delay == 10
    assert p.decide(b, now=10).delay == 15
    assert p.decide(b, now=25).delay == 22.5
    assert p.decide(b, now=50).delay == 30  # ceiling
    progressed = _batch(request_counts={"total": 10, "completed": 2})
    assert p.decide(progressed, now=80).delay == 10


def test_poller_deadline_is_absolute_and_clips_sleeps() -> None:
    p = BatchPoller(poll_interval=60, timeout=100, jitter=0)
    p.start(now=1000)
    assert p.deadline == 1100
    assert p.decide(_batch(), now=1090).delay == 10  # wakes at the deadline, not 50 s after
    assert p.decide(_batch(), now=1100).action == "timeout"
    resumed = BatchPoller(poll_interval=60, timeout=100, deadline=1100, jitter=0)
    resumed.start(now=1095)  # a resumed waiter keeps the original budget
    assert resumed.deadline == 1100
    assert p.decide(_batch(status="completed"), now=5000).action == "done"  # terminal beats timeout


def test_poller_tolerates_a_bounded_run_of_failures() -> None:
    p = BatchPoller(poll_interval=1, max_consecutive_failures=2, jitter=0)
    p.start(now=0)
    assert p.failed(now=0, retryable=True).action == "wait"
    assert p.failed(now=1, retryable=True).action == "wait"
    assert p.failed(now=2, retryable=True).action == "done"
    p.decide(_batch(), now=3)  # a success resets the count
    assert p.failed(now=4, retryable=True).action == "wait"
    assert p.failed(now=5, retryable=False).action == "done"


def test_first_poll_is_spread() -> None:
    p = BatchPoller(poll_interval=30, rng=random.Random(1))
    delays = {round(p.first_delay(now=0), 3) for _ in range(50)}
    assert len(delays) > 40 and all(0 <= d < 30 for d in delays)


def test_outcome_errors() -> None:
    assert isinstance(outcome_error(_batch(status="failed", errors={"data": [
        {"code": "token_limit_exceeded", "message": "Enqueued token limit reached"}]})), BatchFailedError)
    assert "token_limit_exceeded" in str(outcome_error(_batch(status="failed", errors={"data": [
        {"code": "token_limit_exceeded", "message": "x"}]})))
    assert isinstance(outcome_error(_batch(status="expired")), BatchExpiredError)
    assert isinstance(outcome_error(_batch(status="cancelled")), BatchCancelledError)
    partial = _batch(status="completed", request_counts={"total": 3, "completed": 2, "failed": 1})
    assert outcome_error(partial) is None
    assert isinstance(outcome_error(partial, fail_on_request_failures=True), RequestFailuresError)
    assert outcome_error(_batch(status="expired"), fail_on={"failed"}) is None


# --- plans -----------------------------------------------------------------------------------


def _body(key: str = "k1") -> dict[str, object]:
    return OPENAI.create_body(input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "x"}, output_expires_after=None, idempotency_key=key)


def _page(*batches: Batch, has_more: bool = False) -> Reply:
    data = [json.loads(b.model_dump_json()) for b in batches]
    return Reply(status=200, body=json.dumps({"object": "list", "data": data, "has_more": has_more,
                                              "first_id": data[0]["id"] if data else None,
                                              "last_id": data[-1]["id"] if data else None}).encode())


def test_create_after_dropped_connection_looks_up_before_resending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_plans, "clock", lambda: 1_700_000_100.0)
    plan = _plans.create_plan(_body(), key="k1", key_may_exist=False, dialect=OPENAI,
                              policy=RetryPolicy(rng=random.Random(0)),
                              lookback=86400)
    first = next(plan)
    assert isinstance(first, Send) and first.method == "POST"
    sleep = plan.send(Reply(error="RemoteProtocolError: Server disconnected", sent=True))
    assert isinstance(sleep, Sleep)
    lookup = next(plan)
    assert isinstance(lookup, Send) and (lookup.method, lookup.path) == ("GET", "/batches")
    created = _batch(metadata={"job": "x", IDEMPOTENCY_METADATA_KEY: "k1"})
    with pytest.raises(StopIteration) as done:
        plan.send(_page(_batch(id="other"), created))
    assert done.value.value.id == "batch_1"


def test_create_after_429_or_refused_connection_resends_without_lookup() -> None:
    plan = _plans.create_plan(_body(), key="k1", key_may_exist=False, dialect=OPENAI,
                              policy=RetryPolicy(rng=random.Random(0)),
                              lookback=86400)
    next(plan)
    assert isinstance(plan.send(Reply(status=429, headers={"retry-after-ms": "10"})), Sleep)
    assert next(plan).method == "POST"
    assert isinstance(plan.send(Reply(error="ConnectError", sent=False)), Sleep)
    assert next(plan).method == "POST"


def test_create_with_a_given_key_reattaches_without_posting() -> None:
    plan = _plans.create_plan(_body("task-key"), key="task-key", key_may_exist=True, dialect=OPENAI,
                              policy=RetryPolicy(), lookback=86400)
    lookup = next(plan)
    assert lookup.method == "GET"
    with pytest.raises(StopIteration) as done:
        plan.send(_page(_batch(id="batch_prev", metadata={IDEMPOTENCY_METADATA_KEY: "task-key"})))
    assert done.value.value.id == "batch_prev"


def test_create_fails_fast_on_permanent_error() -> None:
    plan = _plans.create_plan(_body(), key="k1", key_may_exist=False, dialect=OPENAI,
                              policy=RetryPolicy(), lookback=86400)
    next(plan)
    with pytest.raises(BadRequestError, match="input_file_id is not a batch file"):
        plan.send(Reply(status=400, body=b'{"error": {"message": "input_file_id is not a batch file", '
                                         b'"type": "invalid_request_error", "param": "input_file_id", "code": null}}'))


def test_transport_errors_become_connection_errors_after_retries() -> None:
    plan = _plans.send_with_retries(Send("GET", "/batches/b"), policy=RetryPolicy(max_retries=1, initial=0.01))
    next(plan)
    plan.send(Reply(error="ReadError", sent=True))
    next(plan)
    with pytest.raises(APIConnectionError, match="ReadError"):
        plan.send(Reply(error="ReadError", sent=True))


def test_metadata_room_for_the_idempotency_key() -> None:
    with pytest.raises(InputValidationError, match="at most 15"):
        OPENAI.create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h",
                           metadata={f"k{i}": "v" for i in range(16)}, output_expires_after=None,
                           idempotency_key="k")


def test_metadata_room_counts_the_owner_pair_as_ours() -> None:
    """An Airflow batch carries its task instance: 15 pairs of the user's are one too many, and the
    message says 15 (not 16) and at most 14."""
    metadata = {**{f"k{i}": "v" for i in range(15)}, "airflow_task_instance": "{}"}
    with pytest.raises(InputValidationError, match="15 pairs of yours") as err:
        OPENAI.create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h",
                           metadata=metadata, output_expires_after=None, idempotency_key="k")
    assert "at most 14 metadata keys of your own" in str(err.value)


@pytest.mark.parametrize("limit", [0, 101, -1, True])
def test_list_limit_checked_client_side(limit: int) -> None:
    with pytest.raises(InputValidationError, match=r"1\.\.100"):
        _plans.list_params(limit=limit, after=None)


# --- import rules ----------------------------------------------------------------------------


def test_importing_core_loads_no_orchestrator_or_server() -> None:
    code = (
        "import sys, batch_ops, batch_ops.client, batch_ops.jsonl, batch_ops.polling\n"
        "bad = [m for m in ('airflow', 'prefect', 'starlette', 'uvicorn', 'batch_ops.server') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
