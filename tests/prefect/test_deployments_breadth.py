"""The breadth of issues 24-26 where Prefect runs it: served deployments on a ``prefect server start`` of
this module's own (the stack of test_deployments.py, its breadth half: ``run_stack(..., breadth=True)``).

* the other providers (Anthropic, Gemini; a saved credentials block each): a served flow retried after
  a failed and after an expired batch pays only for the rest, and cancelling a run cancels its batch —
  the provider's official SDK is the judge of what the server holds;
* structured outputs: a served ``run_batch`` with a response schema repairs only the invalid answers, and a
  budget the repair round would cross refuses that round with nothing uploaded;
* ``python flows/eval_matrix.py`` served as users serve it: three models, a judge batch, the report.

A module of its own so that pytest-xdist (``--dist loadfile``) runs it beside test_deployments.py, each
Prefect server with half the runs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from batch_ops import BatchClient
from batch_ops.server import ServerURL


def _stack_module() -> ModuleType:
    """test_deployments.py, where the stack is built (pytest's importlib mode puts no test folder on sys.path,
    so it is loaded from its path, under a name of its own)."""
    name = "batch_ops_tests_deployments_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_deployments.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module's names through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


_deployments = _stack_module()
PROVIDER_MODELS: dict[str, str] = _deployments.PROVIDER_MODELS
PROVIDER_SCENARIOS: dict[str, Any] = _deployments.PROVIDER_SCENARIOS
Stack = _deployments.Stack
run_stack = _deployments.run_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, batch_server: ServerURL, secret: str,
          make_requests: Any, webhook_secret: str) -> Iterator[Stack]:
    with run_stack(tmp_path_factory, batch_server, secret, make_requests, webhook_secret, breadth=True) as s:
        yield s


def test_served_structured_outputs_repair_only_the_invalid(stack: Stack) -> None:
    """A served deployment runs ``run_batch`` with a pydantic model and ``repair_rounds=1`` against a server
    that spoils a fifth of the answers: the repair batch carries exactly the invalid requests (counted on the
    server), and every answer arrives typed through ``read_batch_results``."""
    proc = stack.procs["serve-structured"]
    state = stack.final_state(stack.run_id("structured"), proc=proc)
    assert state["type"] == "COMPLETED", f"{state.get('message')}\n{stack.logs()}"
    with BatchClient(api_key=stack.secret, base_url=stack.structured_batch_url) as client:
        # Oldest first: pages come newest first, and creation times have whole seconds.
        batches = sorted(reversed(list(client.batches.iter_all(limit=100))), key=lambda b: b.created_at)
        assert len(batches) == 2, batches  # the batch, and its one repair round
        first, repair = batches
        invalid = [line for line in client.results(first, response_schema=CITY_SCHEMA) if line.invalid is not None]
        final = client.results(client.batches.chain(
            (first.metadata or {})["batch_ops_idempotency_key"].split("@")[0]), response_schema=CITY_SCHEMA)
        typed = [line.parsed for line in final]
    assert invalid and repair.request_counts.total == len(invalid), (len(invalid), repair)  # paid == needed
    assert len(typed) == 20 and all(isinstance(p, dict) and set(p) == {"name", "population", "tags"} for p in typed)
    assert (repair.metadata or {})["batch_ops_idempotency_key"].endswith(".1")  # the chain's next attempt
    logs = proc.tail(200_000)
    assert "Repair round 1:" in logs and f"carrying {len(invalid)} requests" in logs


def test_served_repair_round_refused_by_the_budget_keeps_the_paid_answers(stack: Stack) -> None:
    """The same served ``run_batch`` with ``max_cost_usd`` just above attempt 0's upper bound: the repair round
    would cross it, so it is refused before anything of it is uploaded (counted on the server); the run still
    completes, its result names the refusal with its numbers, and the paid answers arrive (valid typed, invalid
    marked) with the bill under the budget."""
    proc = stack.procs["serve-structured"]
    state = stack.final_state(stack.run_id("structured-budget"), proc=proc)
    assert state["type"] == "COMPLETED", f"{state.get('message')}\n{stack.logs()}"
    calls = httpx.get(stack.structured_budget_url.removesuffix("/v1") + "/healthz").json()["calls"]
    assert calls.get("POST /v1/files") == 1 and calls.get("POST /v1/batches") == 1, calls  # no repair upload
    written = json.loads((stack.work / "structured-budget.json").read_text())
    result = written["result"]
    (refused,) = result["structured"]["rounds"]
    invalid = sum(refused["invalid"].values())
    assert invalid > 0 and refused["batch_id"] is None and result["batch_ids"] == [result["batch_id"]]
    assert refused["refused"].startswith("Budget: attempt 1 would cost up to $"), refused
    assert "Nothing was uploaded" in refused["refused"]
    assert sum(p is not None for p in written["parsed"]) == 20 - invalid
    assert sum(i is not None for i in written["invalid"]) == invalid
    assert result["cost"]["cost_usd"] <= result["estimate"]["upper_usd"] <= _deployments.STRUCTURED_TIGHT_BUDGET


CITY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
               "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                              "tags": {"type": "array", "items": {"type": "string"}}}}


def test_served_eval_matrix_example(stack: Stack) -> None:
    """``python flows/eval_matrix.py`` serves the matrix; a run of its deployment runs three models' batches and
    three judge batches (six ``run_batch`` subflows, at once), writes the HTML report and publishes its artifacts."""
    run = stack.run_id("matrix")
    proc = stack.procs["serve-eval-matrix"]
    state = stack.final_state(run, proc=proc, timeout=180)
    assert state["type"] == "COMPLETED", f"eval matrix run ended {state['type']}: {state.get('message')}\n{proc.tail()}"
    subflows = stack.subflow_runs(run)
    assert len(subflows) == 6 and {s["state"]["type"] for s in subflows} == {"COMPLETED"}, subflows
    reports = list((stack.work / "matrix-eval" / "matrix" / "runs").glob("*/report.html"))
    assert len(reports) == 1 and reports[0].read_text().count("<svg") == 3
    found = stack.call("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run]}}})
    found.raise_for_status()
    kinds = {a["key"]: a["type"] for a in found.json() if a.get("key", "").startswith("eval-matrix")}
    # A link artifact is stored as markdown holding the link (Prefect 3).
    assert kinds.get("eval-matrix") == "markdown" and "eval-matrix-report" in kinds, kinds
    link = next(a for a in found.json() if a.get("key") == "eval-matrix-report")
    assert reports[0].resolve().as_uri() in link["data"] and stack.secret not in json.dumps(found.json())


@pytest.mark.parametrize("scenario", ["failures", "expiring"])
@pytest.mark.parametrize("provider", list(PROVIDER_MODELS))
def test_a_served_flow_retried_after_a_failed_or_expired_batch_pays_only_for_the_rest(
        stack: Stack, wire_oracle: Any, provider: str, scenario: str) -> None:
    """A served flow runs ``run_batch`` on Anthropic's or Gemini's batch API (a saved block each); the batch
    has request failures (``fail_on_request_failures``) or expires half done, the flow run is retried, and
    each retry's batch carries only what had not succeeded. The provider's own SDK is the judge: over
    every batch on the server, each custom id succeeded exactly once; the results come back joined by
    custom id, every one answered."""
    name = f"{provider}-{scenario}"
    proc, url = stack.procs["serve-providers"], stack.provider_urls[provider][scenario]
    state = stack.final_state(stack.run_id(name), proc=proc, timeout=150)
    batches = wire_oracle.batches(provider, url)
    assert state["type"] == "COMPLETED", f"{state.get('message')}\n{batches}\n{stack.logs()}"
    run = stack.call("GET", f"/flow_runs/{stack.run_id(name)}").json()
    assert run["run_count"] >= 2, f"{name}: the outcome called for a retry: {batches}"
    n = PROVIDER_SCENARIOS[scenario][0]
    ids = [f"{scenario[:2]}-{i}" for i in range(n)]
    paid = wire_oracle.paid(provider, url)
    assert paid == dict.fromkeys(ids, 1), f"{name}: paid for {sum(paid.values())}, needed {n}: {paid}\n{batches}"
    written = json.loads((stack.work / f"{name}.json").read_text())
    assert 2 <= len(batches) <= run["run_count"] and written["batch_ids"] == [b for b, _ in batches], batches
    assert sorted(written["joined"]) == sorted(ids)
    assert all(ok and text for ok, text in written["joined"].values()), written["joined"]


@pytest.mark.parametrize("provider", list(PROVIDER_MODELS))
def test_cancelling_a_served_flow_run_cancels_its_batch_on_every_provider(
        stack: Stack, wire_oracle: Any, provider: str) -> None:
    """A user cancels the served flow run while its ``run_batch`` subflow waits on Anthropic's or Gemini's
    batch: the batch is cancelled on the wire (the provider's SDK says so) and the run ends CANCELLED."""
    name = f"{provider}-kill"
    run_id, proc, url = stack.run_id(name), stack.procs["serve-providers"], stack.provider_urls[provider]["kill"]
    deadline = time.monotonic() + 120
    while not (batches := wire_oracle.batches(provider, url)):
        assert proc.alive() and time.monotonic() < deadline, f"no batch of {name}:\n{stack.logs()}"
        time.sleep(0.25)
    stack.call("POST", f"/flow_runs/{run_id}/set_state", json={
        "state": {"type": "CANCELLING"}, "force": True}).raise_for_status()
    deadline = time.monotonic() + 60
    while not wire_oracle.cancel_seen(provider, (batches := wire_oracle.batches(provider, url))[0][1]):
        assert time.monotonic() < deadline, f"{name}: the batch was not cancelled: {batches}\n{stack.logs()}"
        time.sleep(0.25)
    assert len(batches) == 1, batches
    assert stack.final_state(run_id, proc=proc, timeout=60)["type"] == "CANCELLED"
