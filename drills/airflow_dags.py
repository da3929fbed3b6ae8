"""Suite ``airflow_dags``: drills run with ``airflow dags test`` in a throwaway, migrated AIRFLOW_HOME.

* ``airflow-faults`` (1): ten deferrable ``OpenAIBatchOperator`` tasks against a server that
  answers 7 % of calls 429, 7 % 500, drops 6 % (half before, half after handling) and fails
  5 % of requests: the run succeeds, the server holds exactly ten batches, all completed, and
  every request is answered exactly once (in the output or the error file).
* ``bad-input`` (6): more than twenty kinds of bad input through the core client and through
  the operator (its constructor, and ``execute`` inside a real ``dags test`` run): each fails
  with an error naming the problem and the fix, and the server sees no upload and no batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills._common import (
    CANARY,
    CHAT,
    AirflowHome,
    Drill,
    access_counts,
    audit_server,
    chat_lines,
    oracle,
    write_jsonl,
)

__all__ = ["run"]

FAULTS = {"http_429": 0.07, "http_500": 0.07, "drop": 0.06, "fail_requests": 0.05}


def run(names: list[str], work: Path) -> list[Drill]:
    home = AirflowHome(work)
    # This process imports Airflow too (operator constructors): point it at the same home first.
    os.environ.update({k: v for k, v in home.env.items() if k.startswith("AIRFLOW")})
    home.migrate()
    drills: dict[str, tuple[str, Callable[[Drill], None]]] = {
        "airflow-faults": ("faults during an Airflow DAG run", lambda d: airflow_faults(d, home, work)),
        "bad-input": ("bad-input matrix", lambda d: bad_input(d, home, work / "bad_input")),
    }
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        title, body = drills[name]
        results.append(Drill(name, title).run(body))
    return results


# ---------------------------------------------------------------------------------------------
# 1. faults during a DAG run
# ---------------------------------------------------------------------------------------------


def airflow_faults(d: Drill, home: AirflowHome, work: Path) -> None:
    """Ten batches through ``airflow dags test`` against a faulty server: success, no duplicate,
    every request accounted for, and the key in none of the run's output."""
    from batch_ops.server import serve_in_background

    with serve_in_background(api_key=CANARY, seed=8, request_latency=0.005, access_log=True,
                             log_level="info", **FAULTS) as url:
        home.connection("drill_faults", url)
        proc = home.cli("dags", "test", "drill_faults", timeout=240)
        output = proc.stdout + proc.stderr
        (work / "drill_faults.log").write_text(output)
        d.check(proc.returncode == 0 and "state=success" in output,
                f"`airflow dags test drill_faults` succeeds (exit {proc.returncode}):\n{output[-1500:]}")
        d.check(CANARY not in output, "the key appears nowhere in the run's output (task logs included)")
        errors = [line for line in output.splitlines() if "[error" in line or "Unclosed" in line]
        d.check(not errors, f"the run logged no errors ({len(errors)}: {errors[:3]})")

        audit = audit_server(url)
        ids = {b.id for b in audit.batches}
        d.check(len(audit.batches) == 10, f"the server holds exactly 10 batches (holds {len(audit.batches)})")
        d.check(audit.statuses == {"completed": 10}, f"every batch completed ({audit.statuses})")
        d.check(audit.requests == 400, f"400 requests submitted ({audit.requests})")
        d.check(audit.completed + audit.failed == 400 and not audit.problems,
                f"every request answered exactly once: {audit.problems}")
        d.check(audit.failed > 0, "some requests failed by injection and are in error files (the fault was live)")

        (run_id,) = home.query("select run_id from dag_run where dag_id = 'drill_faults'")[0]
        results = [json.loads(v) for (v,) in home.query(
            "select value from xcom where dag_id = 'drill_faults' and run_id = ? and key = 'return_value'", run_id)]
        got = {r["batch_id"] for r in results}
        d.check(len(results) == 10 and got == ids,
                f"each task's XCom names its own batch, and they are the server's ten ({len(got)} distinct)")
        d.check(all(r["status"] == "completed" and r["request_counts"]["total"] == 40 for r in results),
                "each XCom result says completed, 40 requests")
        statuses = access_counts(url.log_path)
        calls = sum(statuses.values())
        inputs = 10
        outputs = sum(1 for b in audit.batches if b.output_file_id) + sum(1 for b in audit.batches if b.error_file_id)
        orphans = audit.files - inputs - outputs
        d.figure("batches", "10/10 completed, 0 duplicates")
        d.figure("requests", f"400 answered once ({audit.completed} ok, {audit.failed} failed by injection)")
        d.figure("faults", f"{statuses.get('429', 0)}x429 + {statuses.get('500', 0)}x500 in {calls} logged "
                           f"calls, plus drops (6%)")
        if orphans:
            d.figure("orphan uploads", f"{orphans} (upload answers lost by drop-after-handling; see report)")


# ---------------------------------------------------------------------------------------------
# 6. bad input
# ---------------------------------------------------------------------------------------------


def _line(i: int, **change: Any) -> dict[str, Any]:
    line: dict[str, Any] = chat_lines("q", i + 1)[i]
    for key, value in change.items():
        if value is None:
            line.pop(key, None)
        else:
            line[key] = value
    return line


def _files(base: Path) -> dict[str, Path]:
    """One request file per kind of bad file content (plus a good one)."""
    good = chat_lines("q", 3)
    emb = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": ["x"] * 25_001}} for i in range(2)]
    files = {
        "good": write_jsonl(base / "good.jsonl", good),
        "malformed_json": write_jsonl(base / "malformed.jsonl", [good[0], '{"custom_id": "q-1", "method": "POST"',
                                                                good[2]]),
        "blank_line": write_jsonl(base / "blank.jsonl", [good[0], "", good[2]]),
        "duplicate_custom_id": write_jsonl(base / "dup.jsonl", [good[0], good[1], _line(2, custom_id="q-0")]),
        "missing_custom_id": write_jsonl(base / "noid.jsonl", [good[0], _line(1, custom_id=None)]),
        "url_mismatch": write_jsonl(base / "url.jsonl", [good[0], _line(1, url="/v1/embeddings")]),
        "wrong_method": write_jsonl(base / "method.jsonl", [good[0], _line(1, method="GET")]),
        "missing_body": write_jsonl(base / "nobody.jsonl", [good[0], _line(1, body=None)]),
        "model_mismatch": write_jsonl(base / "model.jsonl", [good[0], _line(1, body={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})]),
        "not_an_object": write_jsonl(base / "array.jsonl", [good[0], "[1, 2, 3]"]),
        "empty_file": write_jsonl(base / "empty.jsonl", []),
        "too_many_lines": write_jsonl(base / "big.jsonl", chat_lines("big", 50_001)),
        "too_many_embedding_inputs": write_jsonl(base / "emb.jsonl", emb),
    }
    (base / "utf8.jsonl").write_bytes(json.dumps(good[0]).encode() + b'\n{"custom_id": "\xff"}\n')
    files["not_utf8"] = base / "utf8.jsonl"
    files["nonexistent_path"] = base / "does_not_exist.jsonl"
    return files


#: (case, what to call, words the message must contain). ``f`` are the request files.
def _client_cases(f: dict[str, Path]) -> list[tuple[str, Callable[[Any], Any], tuple[str, ...]]]:
    def submit(path: Path, endpoint: str = CHAT, **kw: Any) -> Callable[[Any], Any]:
        return lambda c: c.submit(path, endpoint=endpoint, **kw)

    good = f["good"]
    meta17 = {f"k{i}": "v" for i in range(17)}
    meta16 = {f"k{i}": "v" for i in range(16)}
    return [
        ("malformed JSON line", submit(f["malformed_json"]), ("line 2", "invalid_json_line")),
        ("blank line", submit(f["blank_line"]), ("line 2", "empty")),
        ("duplicate custom_id", submit(f["duplicate_custom_id"]), ("line 3", "duplicate_custom_id")),
        ("missing custom_id", submit(f["missing_custom_id"]), ("line 2", "missing_custom_id")),
        ("url mismatch", submit(f["url_mismatch"]), ("line 2", "url_mismatch")),
        ("wrong method", submit(f["wrong_method"]), ("line 2", "invalid_method")),
        ("missing body", submit(f["missing_body"]), ("line 2", "missing_body")),
        ("model mismatch", submit(f["model_mismatch"]), ("line 2", "model_mismatch")),
        ("line not an object", submit(f["not_an_object"]), ("line 2", "array")),
        ("not UTF-8", submit(f["not_utf8"]), ("line 2", "UTF-8")),
        ("empty file", submit(f["empty_file"]), ("empty_file",)),
        ("50,001 lines", submit(f["too_many_lines"]), ("too_many_tasks", "50,000")),
        ("embeddings > 50,000 inputs", submit(f["too_many_embedding_inputs"], "/v1/embeddings"),
         ("too_many_embedding_inputs",)),
        ("nonexistent path", submit(f["nonexistent_path"]), ("does_not_exist.jsonl", "file_not_found")),
        ("unknown endpoint", submit(good, "/v1/chat"), ("endpoint", "/v1/chat/completions")),
        ("completion_window 48h", submit(good, completion_window="48h"), ("completion_window", "24h")),
        ("17 metadata keys", submit(good, metadata=meta17), ("17", "16")),
        ("16 metadata keys (no room for the idempotency key)", submit(good, metadata=meta16), ("15",)),
        ("65-char metadata key", submit(good, metadata={"k" * 65: "v"}), ("65", "64")),
        ("513-char metadata value", submit(good, metadata={"k": "v" * 513}), ("513", "512")),
        ("non-string metadata value", submit(good, metadata={"k": 1}), ("metadata", "str")),
        ("output_expires_after 100 s", submit(good, output_expires_after={"anchor": "created_at", "seconds": 100}),
         ("output_expires_after", "3600")),
        ("output_expires_after 3,000,000 s",
         submit(good, output_expires_after={"anchor": "created_at", "seconds": 3_000_000}),
         ("output_expires_after", "2592000")),
        ("output_expires_after wrong anchor", submit(good, output_expires_after={"anchor": "now", "seconds": 7200}),
         ("anchor", "created_at")),
        ("list limit 0", lambda c: c.batches.list(limit=0), ("limit", "1")),
        ("list limit 101", lambda c: c.batches.list(limit=101), ("limit", "100")),
        ("create from an unknown file id", lambda c: c.batches.create(input_file_id="file-nope", endpoint=CHAT),
         ("file-nope",)),
    ]


def _names_fix(message: str) -> bool:
    return any(w in message.lower() for w in ("fix", "use ", "pass ", "set ", "put ", "check "))


def bad_input(d: Drill, home: AirflowHome, work: Path) -> None:
    """Every bad input fails before any upload, naming the problem and the fix."""
    from batch_ops import BatchClient
    from batch_ops.errors import BatchOpsError
    from batch_ops.server import serve_in_background

    files = _files(work)
    with serve_in_background(api_key=CANARY) as url:
        sdk = oracle(url)

        def held() -> tuple[int, int]:
            return len(list(sdk.files.list())), len(list(sdk.batches.list(limit=100)))

        # -- the core client ---------------------------------------------------------------------
        cases = 0
        bad_cases: list[str] = []
        with BatchClient(api_key=CANARY, base_url=url) as client:
            for name, call, words in _client_cases(files):
                cases += 1
                before = held()
                try:
                    call(client)
                except BatchOpsError as exc:
                    msg = str(exc)
                    ok = all(w in msg for w in words) and (_names_fix(msg) or name.startswith("create from"))
                    d.check(ok, f"client, {name}: {type(exc).__name__} names the problem {words} and the fix: "
                                f"{msg[:300]!r}")
                    if not ok:
                        bad_cases.append(name)
                except Exception as exc:
                    bad_cases.append(name)
                    d.check(False, f"client, {name}: raised {type(exc).__name__} outside batch_ops's error tree: "
                                   f"{str(exc)[:200]!r}")
                else:
                    bad_cases.append(name)
                    d.check(False, f"client, {name}: no error")
                d.check(held() == before, f"client, {name}: nothing uploaded, no batch created ({before} -> {held()})")
        # Configuration, not input: no key at all, and a malformed base URL.
        settings_cases: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
            ("no API key", {"base_url": str(url)}, ("OPENAI_API_KEY",)),
            ("malformed base URL", {"api_key": CANARY, "base_url": "ftp://127.0.0.1/v1"}, ("base_url", "http")),
        ]
        for name, settings, words in settings_cases:
            cases += 1
            saved = os.environ.pop("OPENAI_API_KEY", None)
            try:
                BatchClient(**settings)
            except BatchOpsError as exc:
                d.check(all(w in str(exc) for w in words), f"client, {name}: {str(exc)[:200]!r}")
            except Exception as exc:
                bad_cases.append(name)
                d.check(False, f"client, {name}: raised {type(exc).__name__} outside batch_ops's error tree: "
                               f"{str(exc)[:200]!r}")
            else:
                bad_cases.append(name)
                d.check(False, f"client, {name}: no error")
            finally:
                if saved is not None:
                    os.environ["OPENAI_API_KEY"] = saved

        # -- the operator's constructor (DAG parse time) ------------------------------------------
        from batch_ops.airflow import OpenAIBatchOperator

        ctor_cases: list[tuple[str, dict[str, Any], str]] = [
            ("two inputs", {"input_path": "a.jsonl", "input_file_id": "file-1"}, "exactly one of"),
            ("no input", {}, "exactly one of"),
            ("poll_interval 0", {"input_path": "a.jsonl", "poll_interval": 0}, "poll_interval"),
            ("negative timeout", {"input_path": "a.jsonl", "timeout": -5}, "timeout"),
            ("fail_on a running status", {"input_path": "a.jsonl", "fail_on": ["in_progress"]}, "terminal"),
        ]
        for name, kwargs, word in ctor_cases:
            cases += 1
            try:
                OpenAIBatchOperator(task_id="t", endpoint=CHAT, **kwargs)
            except (ValueError, BatchOpsError) as exc:
                d.check(word in str(exc), f"operator constructor, {name}: {str(exc)[:200]!r}")
            else:
                d.check(False, f"operator constructor, {name}: accepted")

        # -- the operator's execute, in a real `airflow dags test` run ----------------------------
        op_cases = _operator_cases(files)
        case_file = write_jsonl(work / "cases.json", [])
        case_file.write_text(json.dumps([{"task_id": c, "kwargs": kw, **extra} for c, kw, _, extra in op_cases]))
        failures_file = work / "failures.jsonl"
        home.connection("drill_bad_input", url)
        home.connection("drill_no_key", url, key=None)
        before = held()
        proc = home.cli("dags", "test", "drill_bad_input", timeout=240, env={
            "BATCH_OPS_DRILL_CASES": str(case_file), "BATCH_OPS_DRILL_FAILURES": str(failures_file)})
        output = proc.stdout + proc.stderr
        (work / "dags_test.log").write_text(output)
        failed = {}
        if failures_file.exists():
            for line in failures_file.read_text().splitlines():
                rec = json.loads(line)
                failed[rec["task_id"]] = rec
        d.check(proc.returncode != 0 and "state=failed" in output, "the bad-input DAG run fails (as it must)")
        for task_id, _, words, _ in op_cases:
            cases += 1
            rec = failed.get(task_id)
            if rec is None:
                d.check(False, f"operator execute, {task_id}: the task did not fail")
                continue
            msg = rec["message"]
            d.check(all(w in msg for w in words) and _names_fix(msg),
                    f"operator execute, {task_id}: {rec['type']} names {words} and the fix: {msg[:300]!r}")
        d.check(held() == before == (0, 0), f"operator: nothing uploaded, no batch created ({held()})")
        d.check(CANARY not in output, "the key is not in the bad-input run's output")
        sdk.close()
    d.figure("cases", f"{cases} ({len(_client_cases(files)) + 2} client, {len(ctor_cases)} operator constructor, "
                      f"{len(op_cases)} operator execute)")
    d.figure("uploads/batches", "0/0 after every case")
    if bad_cases:
        d.figure("unclear", ", ".join(bad_cases))


def _operator_cases(f: dict[str, Path]) -> list[tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any]]]:
    good = str(f["good"])

    def path(name: str, words: tuple[str, ...], endpoint: str = CHAT) -> tuple[str, dict[str, Any],
                                                                                tuple[str, ...], dict[str, Any]]:
        return (name, {"endpoint": endpoint, "input_path": str(f[name])}, words, {})

    def param(name: str, words: tuple[str, ...], **kw: Any) -> tuple[str, dict[str, Any], tuple[str, ...],
                                                                       dict[str, Any]]:
        return (name, {"endpoint": CHAT, "input_path": good, **kw}, words, {})

    return [
        path("malformed_json", ("line 2", "invalid_json_line")),
        path("blank_line", ("line 2", "empty")),
        path("duplicate_custom_id", ("line 3", "duplicate_custom_id")),
        path("missing_custom_id", ("line 2", "missing_custom_id")),
        path("url_mismatch", ("line 2", "url_mismatch")),
        path("wrong_method", ("line 2", "invalid_method")),
        path("missing_body", ("line 2", "missing_body")),
        path("model_mismatch", ("line 2", "model_mismatch")),
        path("empty_file", ("empty_file",)),
        path("too_many_lines", ("too_many_tasks",)),
        path("too_many_embedding_inputs", ("too_many_embedding_inputs",), "/v1/embeddings"),
        path("nonexistent_path", ("does_not_exist.jsonl", "file_not_found")),
        param("unknown_endpoint", ("endpoint",), endpoint="/v1/chat"),
        param("completion_window_48h", ("completion_window", "24h"), completion_window="48h"),
        param("metadata_17_keys", ("17", "16"), metadata={f"k{i}": "v" for i in range(17)}),
        param("metadata_key_65", ("65", "64"), metadata={"k" * 65: "v"}),
        param("metadata_value_513", ("513", "512"), metadata={"k": "v" * 513}),
        param("metadata_value_int", ("metadata",), metadata={"k": 1}),
        param("expires_100s", ("output_expires_after", "3600"),
              output_expires_after={"anchor": "created_at", "seconds": 100}),
        param("expires_3000000s", ("output_expires_after", "2592000"),
              output_expires_after={"anchor": "created_at", "seconds": 3_000_000}),
        param("expires_wrong_anchor", ("anchor",), output_expires_after={"anchor": "now", "seconds": 7200}),
        ("no_api_key", {"endpoint": CHAT, "input_path": good}, ("no API key", "password"),
         {"conn_id": "drill_no_key"}),
    ]
