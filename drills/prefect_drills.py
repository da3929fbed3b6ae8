"""Suite ``prefect_drills``: drills run under a real Prefect server (``prefect_test_harness``: a
server subprocess on a throwaway SQLite database), with PREFECT_HOME in a throwaway directory.

* ``prefect-faults`` (2): one async flow awaits ten ``run_batch`` subflows at once against a
  server injecting 429s, 500s, dropped connections and failed requests: the flow completes,
  the server holds exactly ten batches, all completed, every request answered exactly once.
* ``bad-input-prefect`` (6b): bad files and parameters through the Prefect tasks and flow:
  each fails with an error naming the problem and the fix; nothing is uploaded or created.
* ``security-prefect`` (7b): the canary key is in no flow or task run (parameters, states,
  results), log, artifact or event read back through the Prefect client, nor in any file
  under PREFECT_HOME (persisted results) or the server's database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills._common import (
    CANARY,
    CHAT,
    Drill,
    access_counts,
    audit_server,
    chat_lines,
    oracle,
    scan_tree,
    sqlite_scan,
    write_jsonl,
)

__all__ = ["run"]

FAULTS = {"http_429": 0.07, "http_500": 0.07, "drop": 0.06, "fail_requests": 0.05}


def _configure(home: Path) -> None:
    # Before Prefect is imported: it reads its settings once.
    os.environ.update({
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Results are persisted, so the security drill can look inside them.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.25",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    })
    for key in [k for k in os.environ if k.startswith("OPENAI")]:
        del os.environ[key]


def run(names: list[str], work: Path) -> list[Drill]:
    home = work / "prefect_home"
    home.mkdir(parents=True, exist_ok=True)
    _configure(home)
    from prefect.testing.utilities import prefect_test_harness

    titles = {"prefect-faults": "faults during a Prefect flow", "bad-input-prefect": "bad input through Prefect",
              "security-prefect": "Prefect security"}
    results: list[Drill] = []
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

        # The harness put the server's database in a temporary directory of its own.
        db_url = str(PREFECT_API_DATABASE_CONNECTION_URL.value() or "")
        db = Path(db_url.split("///", 1)[1]) if "///" in db_url else None
        bodies: dict[str, Callable[[Drill], None]] = {
            "prefect-faults": lambda d: asyncio.run(prefect_faults(d, work / "faults")),
            "bad-input-prefect": lambda d: asyncio.run(bad_input_prefect(d, work / "bad_input")),
            "security-prefect": lambda d: asyncio.run(security_prefect(
                d, work / "security", home=home, db=db, after_faults="prefect-faults" in names)),
        }
        for name in names:
            print(f"-- {name}", flush=True)
            results.append(Drill(name, titles[name]).run(bodies[name]))
    return results


async def _result(state: Any) -> Any:
    value = state.result(raise_on_failure=False)
    return await value if inspect.isawaitable(value) else value


# ---------------------------------------------------------------------------------------------
# 2. faults during a flow
# ---------------------------------------------------------------------------------------------


async def prefect_faults(d: Drill, work: Path) -> None:
    """Ten ``run_batch`` subflows awaited concurrently through injected faults."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from batch_ops.prefect import OpenAIBatchCredentials
    from batch_ops.server import serve_in_background
    from drills._prefect_flows import ten_batches

    paths = [str(write_jsonl(work / f"b{i}.jsonl", chat_lines(f"pf{i}", 40))) for i in range(10)]
    with serve_in_background(api_key=CANARY, seed=9, request_latency=0.005, access_log=True, log_level="info",
                             **FAULTS) as url:
        creds = OpenAIBatchCredentials(api_key=CANARY, base_url=str(url))
        state = await ten_batches(paths, creds, return_state=True)
        d.check(state.is_completed(), f"the flow completes (state {state.type.value}: {state.message})")
        results = await _result(state) if state.is_completed() else []
        audit = await asyncio.to_thread(audit_server, url)
        ids = {b.id for b in audit.batches}
        d.check(len(audit.batches) == 10, f"the server holds exactly 10 batches (holds {len(audit.batches)})")
        d.check(audit.statuses == {"completed": 10}, f"every batch completed ({audit.statuses})")
        d.check(audit.requests == 400 and audit.completed + audit.failed == 400 and not audit.problems,
                f"400 requests, each answered exactly once: {audit.problems}")
        d.check(audit.failed > 0, "some requests failed by injection (the fault was live)")
        got = {r.batch_id for r in results}
        d.check(len(results) == 10 and got == ids, f"the flow returns the server's ten batches ({len(got)} distinct)")
        d.check(all(r.status.value == "completed" and r.request_counts.total == 40 for r in results),
                "each BatchResult: completed, 40 requests")
        async with get_client() as client:
            parent = state.state_details.flow_run_id
            subs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        kinds = sorted({s.state.type.value for s in subs if s.state})
        d.check(len(subs) == 10 and kinds == ["COMPLETED"], f"ten run_batch subflow runs, all completed ({kinds})")
        d.figure("batches", "10/10 completed, 0 duplicates, 10 subflows awaited concurrently")
        d.figure("requests", f"400 answered once ({audit.completed} ok, {audit.failed} failed by injection)")
        statuses = access_counts(url.log_path)
        d.figure("faults", f"{statuses.get('429', 0)}x429 + {statuses.get('500', 0)}x500 in "
                           f"{sum(statuses.values())} logged calls, plus drops (6%)")


# ---------------------------------------------------------------------------------------------
# 6b. bad input through Prefect
# ---------------------------------------------------------------------------------------------


async def bad_input_prefect(d: Drill, work: Path) -> None:
    """Bad files and parameters through ``upload_batch_file``, ``create_batch`` and ``run_batch``."""
    from batch_ops.prefect import OpenAIBatchCredentials, run_batch
    from batch_ops.server import serve_in_background
    from drills._prefect_flows import bad_inputs

    good = chat_lines("q", 3)
    files = {
        "duplicate custom_id": write_jsonl(work / "dup.jsonl", [good[0], good[1], {**good[2], "custom_id": "q-0"}]),
        "url mismatch": write_jsonl(work / "url.jsonl", [good[0], {**good[1], "url": "/v1/embeddings"}]),
        "malformed JSON line": write_jsonl(work / "bad.jsonl", [good[0], "{oops"]),
        "empty file": write_jsonl(work / "empty.jsonl", []),
        "nonexistent path": work / "does_not_exist.jsonl",
    }
    words = {
        "duplicate custom_id": ("line 3", "duplicate_custom_id"), "url mismatch": ("line 2", "url_mismatch"),
        "malformed JSON line": ("line 2", "invalid_json_line"), "empty file": ("empty_file",),
        "nonexistent path": ("does_not_exist.jsonl", "file_not_found"),
    }
    params: dict[str, dict[str, Any]] = {
        "completion_window 48h": {"completion_window": "48h"},
        "15 metadata keys (batch_ops adds 2)": {"metadata": {f"k{i}": "v" for i in range(15)}},
        "513-char metadata value": {"metadata": {"k": "v" * 513}},
        "output_expires_after 100 s": {"output_expires_after": {"anchor": "created_at", "seconds": 100}},
        "unknown endpoint": {"endpoint": "/v1/chat"},
    }
    with serve_in_background(api_key=CANARY) as url:
        creds = OpenAIBatchCredentials(api_key=CANARY, base_url=str(url))
        sdk = oracle(url)
        seen = await bad_inputs({k: str(v) for k, v in files.items()}, params, creds)
        expect = {f"upload, {k}": v for k, v in words.items()}
        expect.update({
            "create, completion_window 48h": ("completion_window", "24h"),
            "create, 15 metadata keys (batch_ops adds 2)": ("metadata", "14"),
            "create, 513-char metadata value": ("513", "512"),
            "create, output_expires_after 100 s": ("output_expires_after", "3600"),
            "create, unknown endpoint": ("endpoint",),
        })
        unclear = []
        for name, want in expect.items():
            msg = seen.get(name, "not run")
            ok = msg.startswith(("InputValidationError", "ConfigurationError")) and all(w in msg for w in want) \
                and "fix" in msg.lower()
            if not ok:
                unclear.append(name)
            d.check(ok, f"Prefect, {name}: a batch_ops error naming {want} and the fix: {msg[:300]!r}")
        both = await run_batch(input_path=str(files["empty file"]), requests=good, endpoint=CHAT, credentials=creds,
                               return_state=True)
        d.check(both.is_failed() and "exactly one of" in (both.message or "") + str(await _result(both)),
                "run_batch with both input_path and requests fails, naming the fix")
        held = (len(list(sdk.files.list())), len(list(sdk.batches.list())))
        d.check(held == (0, 0), f"nothing uploaded, no batch created (files, batches = {held})")
        sdk.close()
    d.figure("cases", f"{len(expect) + 1} through tasks and run_batch; 0 uploads, 0 batches")
    if unclear:
        d.figure("unclear", ", ".join(unclear))


# ---------------------------------------------------------------------------------------------
# 7b. security
# ---------------------------------------------------------------------------------------------


async def _all(read: Callable[..., Any]) -> list[Any]:
    """Every item of a Prefect ``read_*`` call, page by page (the API caps a page at 200)."""
    items: list[Any] = []
    while True:
        page = await read(limit=200, offset=len(items))
        items.extend(page)
        if len(page) < 200:
            return items


def _dump(items: Any) -> str:
    return json.dumps([i.model_dump(mode="json") if hasattr(i, "model_dump") else i for i in items], default=str)


async def security_prefect(d: Drill, work: Path, *, home: Path, db: Path | None, after_faults: bool) -> None:
    """Everything Prefect kept about runs that used the key, searched for it."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter

    from batch_ops.prefect import OpenAIBatchCredentials, run_batch
    from batch_ops.server import serve_in_background
    from drills._prefect_flows import secure

    # Runs of its own, so the drill stands alone: a good batch, and a key the server rejects.
    with serve_in_background(api_key=CANARY, fail_requests=0.2, seed=4) as url, \
            serve_in_background(api_key="sk-the-server-wants-another") as other:
        path = write_jsonl(work / "in.jsonl", chat_lines("sec", 10))
        good = await secure(str(path), OpenAIBatchCredentials(api_key=CANARY, base_url=str(url)), return_state=True)
        d.check(good.is_completed(), f"the flow with the key completes ({good.type.value})")
        os.environ["OPENAI_API_KEY"] = CANARY  # the environment route too
        os.environ["OPENAI_BASE_URL"] = str(other)
        try:
            rejected = await run_batch(input_path=str(path), endpoint=CHAT, return_state=True)
        finally:
            del os.environ["OPENAI_API_KEY"], os.environ["OPENAI_BASE_URL"]
        d.check(rejected.is_failed(), f"a run with a key the server rejects fails ({rejected.type.value})")
        audit = await asyncio.to_thread(audit_server, url)
        d.check(len(audit.batches) == 1 and audit.statuses == {"completed": 1} and audit.requests == 10
                and audit.completed + audit.failed == 10 and not audit.problems,
                f"its batch completed, every request accounted for ({audit.statuses}, {audit.problems})")
        refused = await asyncio.to_thread(lambda: len(list(oracle(other, "sk-the-server-wants-another").files.list())))
        d.check(refused == 0, f"the rejected run uploaded nothing ({refused} files)")

    await asyncio.sleep(1.5)  # events and logs are written asynchronously
    found: dict[str, int] = {}
    leaks: list[str] = []
    async with get_client() as client:
        flow_runs = await _all(client.read_flow_runs)
        task_runs = await _all(client.read_task_runs)
        logs = await _all(client.read_logs)
        artifacts = await _all(client.read_artifacts)
        events: list[Any] = []
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        page_ = await client.read_events(filter=EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        while True:
            events.extend(page_.events)
            if not page_.next_page:
                break
            page_ = await client.read_events_page(str(page_.next_page))
        results = []
        for fr in flow_runs:
            if fr.state is not None and fr.state.data is not None:
                results.append(await _result(fr.state))
        for name, items in (("flow runs (parameters, states)", flow_runs), ("task runs", task_runs),
                            ("logs", logs), ("artifacts", artifacts), ("events", events)):
            found[name] = len(items)
            if CANARY in _dump(items):
                leaks.append(name)
        found["flow-run results"] = len(results)
        if CANARY in json.dumps([r.model_dump(mode="json") if hasattr(r, "model_dump") else repr(r)
                                 for r in results], default=str):
            leaks.append("flow-run results")
        params = _dump([fr.parameters for fr in flow_runs])
        d.check('"credentials"' in params, "the flow runs' stored parameters include the credentials block "
                                           "(so the search would find the key if it were stored)")
    files, hits = await asyncio.to_thread(scan_tree, home, CANARY)
    found["files under PREFECT_HOME (persisted results)"] = files
    if hits:
        leaks.append(f"PREFECT_HOME files {hits[:5]}")
    if db is not None and await asyncio.to_thread(db.exists):
        cells, where = await asyncio.to_thread(sqlite_scan, db, CANARY)
        found["database cells"] = cells
        if where:
            leaks.append(f"database columns {where}")
    else:
        d.note(f"Prefect database not found at {db}; searched through the API only")
    d.check(found.get("logs", 0) > 0 and found.get("events", 0) > 0 and found.get("artifacts", 0) > 0,
            f"there was something to search ({found})")
    d.check(not leaks, f"the key is in none of: {', '.join(found)} (found in: {leaks})")
    d.figure("searched", ", ".join(f"{v} {k}" for k, v in found.items()))
    d.figure("leaks", "0" if not leaks else "; ".join(leaks))
    if after_faults:
        d.note("includes the ten-batch flow of prefect-faults")
