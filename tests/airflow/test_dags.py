"""The Airflow provider end to end in ``dag.test()``: operator, trigger (run inline), sensor, XCom.

Every test runs a DAG from tests/airflow/dags against a local Batch API server over loopback;
the official ``openai`` SDK checks what the server really holds.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from batch_ops.airflow.operators import idempotency_key

CHAT = "/v1/chat/completions"
RESULT_KEYS = {"batch_id", "status", "input_file_id", "output_file_id", "error_file_id", "request_counts", "usage",
               "batch_ids", "chain_request_counts", "chain_usage", "estimate", "cost"}


def deployment() -> str | None:
    """This test Airflow's deployment identity (made by the first operator that ran): part of every key."""
    from airflow.models.variable import Variable as VariableRow
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(VariableRow).filter(VariableRow.key == "batch_ops_deployment_id").first()
        return None if row is None else str(row.val)


def task_batches(client: Any, dr: Any, task_id: str = "batch", map_index: int = -1) -> list[Any]:
    """The server's batches created by one task instance (any try), oldest first."""
    base = idempotency_key(dag_id=dr.dag_id, task_id=task_id, run_id=dr.run_id, map_index=map_index,
                           deployment=deployment())
    found = [
        b for b in client.batches.list(limit=100).data
        # Attempt keys are <key>@<requests' fingerprint>[.<n>] (before fingerprints: <key>[.<n>]).
        if (b.metadata or {}).get("batch_ops_idempotency_key", "").split("@")[0].split(".")[0] == base
    ]
    return sorted(found, key=lambda b: (b.created_at, b.metadata["batch_ops_idempotency_key"]))


def all_xcom_text(dr: Any) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id).with_only_columns(XComModel.value)
        ).all()
    return json.dumps([r[0] for r in rows], default=str)


def test_success_passes_both_file_ids_and_renders_templates(
    make_server, use_server, run_dag, af, tmp_path: Path, oracle, capfd, api_key: str
) -> None:
    with make_server(fail_requests=0.5, seed=7) as url:
        use_server(url)
        path = af.write_requests(tmp_path / "requests.jsonl", 20)
        dr = run_dag("bo_success", {"input_path": str(path)})

        assert af.state(dr, "batch") == "success"
        result = af.xcom(dr, "batch")
        assert set(result) == RESULT_KEYS
        assert result["status"] == "completed"
        assert result["output_file_id"] and result["error_file_id"]
        counts = result["request_counts"]
        assert counts["total"] == 20 and counts["completed"] > 0 and counts["failed"] > 0
        assert result["usage"]["total_tokens"] > 0
        # Downstream got both ids through XCom; the batch id and the link were pushed too.
        assert af.xcom(dr, "read_output") == {k: result[k] for k in ("output_file_id", "error_file_id")}
        assert af.xcom(dr, "batch", key="batch_id") == result["batch_id"]
        assert af.xcom(dr, "batch", key="_link_OpenAIBatchLink") == f"{url}/batches/{result['batch_id']}"

        # Templated endpoint, metadata and output_expires_after reached the server rendered.
        held = oracle(url).batches.retrieve(result["batch_id"])
        assert held.endpoint == CHAT
        assert held.metadata["run"] == dr.run_id and held.metadata["dag"] == "bo_success"

    # The API key is in no XCom and in no log line.
    captured = capfd.readouterr()
    assert api_key not in captured.out + captured.err
    assert api_key not in all_xcom_text(dr)


def test_request_failures_fail_the_task_when_the_policy_says_so(
    make_server, use_server, run_dag, af, tmp_path: Path, capfd
) -> None:
    with make_server(fail_requests=0.5, seed=3) as url:
        use_server(url)
        dr = run_dag("bo_policy", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 20))})
    assert af.state(dr, "batch") == "failed"
    salvaged = af.xcom(dr, "salvage")
    assert salvaged["status"] == "completed" and salvaged["error_file_id"]
    assert salvaged["request_counts"]["failed"] > 0
    assert "RequestFailuresError" in capfd.readouterr().out


def test_expired_batch_fails_the_task_but_passes_partial_output_on(
    make_server, use_server, run_dag, af, tmp_path: Path, capfd
) -> None:
    with make_server(concurrency=1, request_latency=0.25, expire_after=1.5) as url:
        use_server(url)
        dr = run_dag("bo_outcome", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 12))})
    assert af.state(dr, "batch") == "failed"
    salvaged = af.xcom(dr, "salvage")
    assert salvaged["status"] == "expired"
    assert salvaged["output_file_id"], "the completed part of an expired batch must reach downstream"
    assert 0 < salvaged["request_counts"]["completed"] < 12
    assert "BatchExpiredError" in capfd.readouterr().out


def _cancel_first_batch(client: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        running = [b for b in client.batches.list(limit=10).data if b.status == "in_progress"]
        if running:
            client.batches.cancel(running[0].id)
            return
        time.sleep(0.05)


def test_cancelled_batch_fails_the_task_with_its_own_error(
    make_server, use_server, run_dag, af, tmp_path: Path, oracle, capfd
) -> None:
    with make_server(concurrency=1, request_latency=0.2) as url:
        use_server(url)
        stop = threading.Event()
        canceller = threading.Thread(target=_cancel_first_batch, args=(oracle(url), stop), daemon=True)
        canceller.start()
        try:
            dr = run_dag("bo_outcome", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 40))})
        finally:
            stop.set()
            canceller.join(5)
    assert af.state(dr, "batch") == "failed"
    salvaged = af.xcom(dr, "salvage")
    assert salvaged["status"] == "cancelled"
    assert "BatchCancelledError" in capfd.readouterr().out


def test_timeout_fails_the_task_and_cancels_when_asked(
    make_server, use_server, run_dag, af, tmp_path: Path, oracle, capfd
) -> None:
    with make_server(concurrency=1, request_latency=0.2) as url:
        use_server(url)
        started = time.monotonic()
        dr = run_dag("bo_timeout", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 40))})
        assert time.monotonic() - started < 30
        assert af.state(dr, "batch") == "failed"
        (held,) = task_batches(oracle(url), dr)
        assert held.status in ("cancelling", "cancelled")  # cancel_on_timeout=True
    out = capfd.readouterr().out
    assert "BatchTimeoutError" in out and "cancel requested" in out


def test_timeout_on_the_worker_leaves_the_batch_running(
    make_server, use_server, run_dag, af, tmp_path: Path, oracle, capfd
) -> None:
    with make_server(concurrency=1, request_latency=0.2) as url:
        use_server(url)
        dr = run_dag("bo_timeout_sync", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 40))})
        assert af.state(dr, "batch") == "failed"
        (held,) = task_batches(oracle(url), dr)
        assert held.status == "in_progress"  # cancel_on_timeout=False: a retry could re-attach
    assert "BatchTimeoutError" in capfd.readouterr().out


def test_retry_reattaches_to_the_batch_of_the_first_try(
    server_url, use_server, run_dag, af, tmp_path: Path, oracle
) -> None:
    use_server(server_url)
    requests_file = tmp_path / "priced.jsonl"  # a model genai-prices knows, so that there is an estimate to show
    requests_file.write_text("".join(json.dumps({
        "custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": f"q {i}"}]}})
        + "\n" for i in range(5)))
    dr = run_dag("bo_retry", {"input_path": str(requests_file)})
    assert af.state(dr, "batch") == "success"
    assert af.try_number(dr, "batch") == 2
    held = task_batches(oracle(server_url), dr)
    assert len(held) == 1, "a retry must not create (and bill) a second batch"
    result = af.xcom(dr, "batch")
    assert result["batch_id"] == held[0].id
    # The re-attaching try made no estimate before an upload, yet the run still shows one beside its bill.
    estimate, cost = result["estimate"], result["cost"]
    assert estimate is not None and cost is not None, result
    assert estimate["requests"] == held[0].request_counts.total and estimate["upper_usd"] >= cost["cost_usd"] > 0


def test_retry_after_a_failed_batch_creates_a_new_one(
    make_server, use_server, run_dag, af, requests_file: Path, oracle
) -> None:
    with make_server(token_limit_failures=1) as url:
        use_server(url)
        dr = run_dag("bo_retry_failed", {"input_path": str(requests_file)})
        assert af.state(dr, "batch") == "success"
        assert af.try_number(dr, "batch") == 2
        first, second = task_batches(oracle(url), dr)
    assert first.status == "failed" and first.errors.data[0].code == "token_limit_exceeded"
    assert second.status == "completed"
    assert af.xcom(dr, "batch")["batch_id"] == second.id


def test_invalid_file_fails_before_anything_is_uploaded(
    make_server, use_server, run_dag, af, tmp_path: Path, oracle, capfd
) -> None:
    bad = af.write_requests(tmp_path / "bad.jsonl", 3)
    bad.write_text(bad.read_text() + bad.read_text().splitlines()[0] + "\n")  # a duplicate custom_id
    with make_server() as url:
        use_server(url)
        dr = run_dag("bo_invalid", {"input_path": str(bad)})
        client = oracle(url)
        assert client.files.list().data == [] and client.batches.list().data == []
    assert af.state(dr, "batch") == "failed"
    assert af.try_number(dr, "batch") == 1, "a bad file stays bad: no retries spent on it"
    out = capfd.readouterr().out
    assert "duplicate_custom_id" in out and "line 4" in out


def test_sensor_waits_for_a_batch_created_without_waiting(
    make_server, use_server, run_dag, af, tmp_path: Path
) -> None:
    # The batch takes ~2 s, so the sensors find it running: one defers, one pokes, one reschedules.
    with make_server(concurrency=1, request_latency=0.2) as url:
        use_server(url)
        dr = run_dag("bo_sensor", {"input_path": str(af.write_requests(tmp_path / "r.jsonl", 10))})
    created = af.xcom(dr, "create")
    assert set(created) == RESULT_KEYS and created["status"] in ("validating", "in_progress")
    for task_id in ("wait_deferred", "wait_poke", "wait_reschedule"):
        assert af.state(dr, task_id) == "success"
        result = af.xcom(dr, task_id)
        assert result["batch_id"] == created["batch_id"]
        assert result["status"] == "completed" and result["output_file_id"]


def test_mapped_over_request_files(server_url, use_server, run_dag, af, tmp_path: Path, oracle) -> None:
    use_server(server_url)
    paths = [str(af.write_requests(tmp_path / f"part-{n}.jsonl", n, prefix=f"p{n}")) for n in (2, 3, 4)]
    dr = run_dag("bo_mapped", {"input_paths": paths})
    results = [af.xcom(dr, "batch", map_index=i) for i in range(3)]
    assert [af.state(dr, "batch", map_index=i) for i in range(3)] == ["success"] * 3
    assert [r["request_counts"]["total"] for r in results] == [2, 3, 4]
    assert len({r["batch_id"] for r in results}) == 3
    # Each map index has its own idempotency key.
    for i, result in enumerate(results):
        assert [b.id for b in task_batches(oracle(server_url), dr, map_index=i)] == [result["batch_id"]]


def test_requests_from_xcom_and_literal_requests_untouched_by_jinja(
    server_url, use_server, run_dag, af, oracle
) -> None:
    use_server(server_url)
    dr = run_dag("bo_requests", {"n": 3})
    assert af.state(dr, "from_xcom") == "success" and af.state(dr, "literal") == "success"
    assert af.xcom(dr, "from_xcom")["request_counts"]["total"] == 3
    output_id = af.xcom(dr, "literal")["output_file_id"]
    content = oracle(server_url).files.content(output_id).text
    assert "keep {{ ds }}" in content, "request content must not be rendered as a template"
