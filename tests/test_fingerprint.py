"""Same idempotency key, other requests: a new chain, never the stale batch (issue 22, item 2).

Over real HTTP against the local server; the official ``openai`` SDK reads what the server holds.
The money rules hold for a regenerated file with the same requests (another order, spacing, key
order, name, escapes, a BOM, request dicts instead of a file): re-attach, no upload, no create.
The access log counts what was sent: creates, uploads, downloads.
"""

from __future__ import annotations

import json
import logging
import re
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops import AsyncBatchClient, BatchClient, Source, SubmitSpec
from batch_ops.identity.fingerprint import fingerprint_file, fingerprint_requests
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY, KEY_MAX_LENGTH

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[Any]]


def requests(n: int, *, prefix: str = "question") -> list[dict[str, Any]]:
    return [{"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
             "body": {"model": "m", "messages": [{"role": "user", "content": f"{prefix} {i} (café)"}]}}
            for i in range(n)]


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
    return path


def regenerate(path: Path, items: list[dict[str, Any]]) -> Path:
    """The same requests as another program would write them: reversed, keys in another order,
    other spacing, non-ASCII as ``\\u`` escapes, CRLF endings, a byte-order mark."""
    lines = []
    for r in reversed(items):
        shuffled = {k: r[k] for k in sorted(r, reverse=True)}
        lines.append(json.dumps(shuffled, indent=None, separators=(" ,", " : "), ensure_ascii=True))
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    return path


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="local", base_url=str(url), max_retries=3)


def input_text(url: str, batch_id: str) -> str:
    with sdk(url) as client:
        return client.files.content(client.batches.retrieve(batch_id).input_file_id).text


def calls(url: Any) -> dict[str, int]:
    """Creates, uploads and downloads the server answered so far (its access log)."""
    text = Path(url.log_path).read_text(errors="replace")
    return {
        "creates": len(re.findall(r'"POST /v1/batches HTTP/[\d.]+" 200', text)),
        "uploads": len(re.findall(r'"POST /v1/files HTTP/[\d.]+" 200', text)),
        "downloads": len(re.findall(r'"GET /v1/files/[^/\s]+/content HTTP/[\d.]+" 200', text)),
    }


def logged(**options: Any) -> dict[str, Any]:
    return {"access_log": True, "log_level": "info", **options}


def submit(client: BatchClient, source: Any, key: str, **kw: Any) -> Any:
    return client.submit_spec(source, SubmitSpec.of(endpoint=CHAT, idempotency_key=key, **kw))


# ---------------------------------------------------------------------------------------------
# the fingerprint itself
# ---------------------------------------------------------------------------------------------


def test_the_fingerprint_is_of_content_not_bytes_order_or_source(tmp_path: Path) -> None:
    items = requests(30)
    plain = fingerprint_file(write(tmp_path / "a.jsonl", items))
    assert fingerprint_file(regenerate(tmp_path / "b.jsonl", items)) == plain
    assert fingerprint_requests(items) == plain
    assert fingerprint_requests(reversed(items)) == plain
    changed = [*items[:-1], {**items[-1], "body": {**items[-1]["body"], "temperature": 0}}]
    assert fingerprint_requests(changed) != plain
    assert fingerprint_requests(items[:-1]) != plain
    # Two equal lines do not cancel out (XOR would): the count and the sum both see them.
    assert fingerprint_requests([items[0], items[0], items[1]]) != fingerprint_requests([items[1]])


def test_fingerprinting_streams_whatever_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(40_000):  # ~6 MB, 40,000 lines
            fh.write(json.dumps({"custom_id": f"c-{i}", "body": {"input": "x" * 100}}) + "\n")
    tracemalloc.start()
    try:
        fp = fingerprint_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fp.requests == 40_000
    assert peak < 256 * 1024, f"peak {peak:,} bytes: memory must not grow with the file"


def test_keys_leave_room_for_the_fingerprint() -> None:
    assert KEY_MAX_LENGTH - 1 == 491


# ---------------------------------------------------------------------------------------------
# the submission core
# ---------------------------------------------------------------------------------------------


def test_same_key_changed_requests_starts_a_new_chain_and_never_returns_the_stale_batch(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "in.jsonl", requests(5))
    with make_server(**logged()) as url, BatchClient(api_key="local", base_url=url) as client:
        first = submit(client, path, "nightly")
        stale = client.batches.wait(first.batch.id, poll_interval=0.05)
        assert stale.status.value == "completed"

        write(path, requests(5, prefix="fixed question"))  # the input was fixed; the task is cleared
        with caplog.at_level(logging.WARNING, logger="batch_ops"):
            batch = client.submit(path, endpoint=CHAT, idempotency_key="nightly")
        assert batch.id != stale.id, "the stale batch (other requests) was returned"
        assert not first.notices
        assert "fixed question 0" in input_text(url, batch.id) and "question 0" not in input_text(
            url, batch.id).replace("fixed question 0", "")
        assert calls(url)["creates"] == 2
        new_fp = fingerprint_file(path)
        assert batch.metadata[IDEMPOTENCY_METADATA_KEY] == f"nightly@{new_fp.value}"
        # Logged plainly: the key, both fingerprints' short forms, the old batch, left alone.
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "'nightly'" in warning and stale.id in warning and "left alone" in warning
        assert first.fingerprint[:8] in warning and new_fp.short in warning
        # The old batch is left alone (not cancelled) and the new one runs to its own results.
        assert client.batches.retrieve(stale.id).status.value == "completed"
        done = client.batches.wait(batch.id, poll_interval=0.05)
        answers = [r.custom_id for r in client.results(done)]
        assert sorted(answers) == [f"q-{i}" for i in range(5)]

        # The same fixed requests again: the new chain, re-attached; nothing sent, no notice.
        again = submit(client, path, "nightly")
        assert again.batch.id == batch.id and again.step.action == "done" and not again.notices
        assert calls(url)["creates"] == 2 and calls(url)["uploads"] == 2
        # The key's newest chain is the new one; the old one is still there by its fingerprint.
        assert client.batches.chain("nightly").batch_ids == [batch.id]
        assert client.batches.chain("nightly", fingerprint=first.fingerprint).batch_ids == [stale.id]


def test_submission_says_a_new_chain_was_started(make_server: MakeServer, tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", requests(3))
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        first = submit(client, path, "k")
        changed = submit(client, requests(4), "k")
        assert changed.created and changed.new_chain and changed.step.number == 0
        assert [c.batch_ids for c in changed.replaced] == [[first.batch.id]]
        assert changed.fingerprint != first.fingerprint
        assert "other requests" in changed.step.reason
        assert len(changed.notices) == 1 and first.batch.id in changed.notices[0]


def test_a_regenerated_file_with_the_same_requests_re_attaches_with_no_upload_and_no_create(
    make_server: MakeServer, tmp_path: Path
) -> None:
    items = requests(6)
    with make_server(**logged(concurrency=1, request_latency=0.3)) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        first = submit(client, write(tmp_path / "in.jsonl", items), "regen")
        before = calls(url)
        # Running: every spelling of the same requests attaches to it.
        for source in (regenerate(tmp_path / "other-name.jsonl", items), list(reversed(items)),
                       Source.of(regenerate(tmp_path / "again.jsonl", items))):
            again = submit(client, source, "regen")
            assert again.batch.id == first.batch.id and again.step.action == "attach" and not again.created
            assert again.fingerprint == first.fingerprint and not again.notices
        client.batches.wait(first.batch.id, poll_interval=0.05)
        # Finished: stopped at the accepted outcome.
        done = submit(client, regenerate(tmp_path / "later.jsonl", items), "regen")
        assert done.step.action == "done" and done.batch.id == first.batch.id
        after = calls(url)
        assert after["creates"] == before["creates"] == 1, "a regenerated file paid again"
        assert after["uploads"] == before["uploads"] == 1, "a regenerated file was uploaded again"


def test_a_then_b_then_a_attaches_to_a_s_chain_again(make_server: MakeServer, tmp_path: Path) -> None:
    a, b = requests(4), requests(4, prefix="other")
    with make_server(**logged()) as url, BatchClient(api_key="local", base_url=url) as client:
        first = submit(client, write(tmp_path / "a.jsonl", a), "aba")
        client.batches.wait(first.batch.id, poll_interval=0.05)
        second = submit(client, write(tmp_path / "b.jsonl", b), "aba")
        assert second.created and second.new_chain and second.batch.id != first.batch.id
        client.batches.wait(second.batch.id, poll_interval=0.05)
        sent = calls(url)
        third = submit(client, regenerate(tmp_path / "a2.jsonl", a), "aba")
        # A's requests were paid for in A's chain: its batch, not B's and not a new one.
        assert third.batch.id == first.batch.id and third.step.action == "done" and not third.created
        assert not third.new_chain and not third.notices
        fourth = submit(client, b, "aba")
        assert fourth.batch.id == second.batch.id and fourth.step.action == "done"
        assert calls(url) == sent, "A again (or B again) sent a create, an upload or a download"


def test_a_retry_after_failures_carries_only_unfinished_requests_in_the_same_chain(
    make_server: MakeServer, tmp_path: Path
) -> None:
    items = requests(20)
    with make_server(fail_requests=0.3, seed=3) as url, BatchClient(api_key="local", base_url=url) as client:
        subs = []
        for attempt in range(12):
            # Each retry regenerates the file (another order, other spacing): still the same work.
            path = regenerate(tmp_path / f"try-{attempt}.jsonl", items) if attempt % 2 else write(
                tmp_path / f"try-{attempt}.jsonl", items)
            sub = submit(client, path, "retry", fail_on_request_failures=True)
            subs.append(sub)
            if sub.step.action == "done":
                break
            client.batches.wait(sub.batch.id, poll_interval=0.05)
        chain = subs[-1].chain
        assert len(chain.attempts) >= 2 and not any(s.new_chain for s in subs)
        fp = subs[0].fingerprint
        assert [a.batch.metadata[IDEMPOTENCY_METADATA_KEY] for a in chain.attempts] == [
            "retry@" + fp + (f".{a.number}" if a.number else "") for a in chain.attempts]
        for prev, nxt in zip(chain.attempts, chain.attempts[1:], strict=False):
            assert nxt.batch.request_counts.total == prev.batch.request_counts.failed
        with sdk(url) as oracle:
            paid = sum(x.request_counts.completed for x in oracle.batches.list(limit=100) if x.request_counts)
        assert paid == 20, "a request that succeeded was paid for again"


def test_an_uploaded_file_is_matched_by_id_then_by_content(make_server: MakeServer, tmp_path: Path) -> None:
    items = requests(3)
    with make_server(**logged()) as url, BatchClient(api_key="local", base_url=url) as client:
        uploaded = client.files.upload(write(tmp_path / "in.jsonl", items))
        first = submit(client, Source(file_id=uploaded.id), "by-id")
        assert first.created and first.fingerprint == fingerprint_requests(items).value
        client.batches.wait(first.batch.id, poll_interval=0.05)
        sent = calls(url)
        # The same file id: the same requests, known without downloading anything.
        same = submit(client, Source(file_id=uploaded.id), "by-id")
        assert same.batch.id == first.batch.id and calls(url) == sent
        # The same requests uploaded again (another id, another order): downloaded once, re-attached.
        again = client.files.upload(regenerate(tmp_path / "again.jsonl", items))
        reuploaded = submit(client, Source(file_id=again.id), "by-id")
        assert reuploaded.batch.id == first.batch.id and not reuploaded.created
        assert calls(url)["creates"] == sent["creates"] and calls(url)["downloads"] == sent["downloads"] + 1
        # Other requests in an uploaded file: a new chain, created from that file.
        other = client.files.upload(write(tmp_path / "other.jsonl", requests(3, prefix="fixed")))
        changed = submit(client, Source(file_id=other.id), "by-id")
        assert changed.created and changed.new_chain and changed.batch.input_file_id == other.id


def _create_raw(client: BatchClient, file_id: str, value: str) -> Any:
    with sdk(client.settings.base_url) as oracle:
        return oracle.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                                     metadata={IDEMPOTENCY_METADATA_KEY: value})


def test_batches_made_before_fingerprints_are_re_attached_when_their_requests_match(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = requests(4)
    with make_server(**logged()) as url, BatchClient(api_key="local", base_url=url) as client:
        legacy = client.files.upload(write(tmp_path / "in.jsonl", items))
        old = client.batches.wait(_create_raw(client, legacy.id, "upgrade").id, poll_interval=0.05)
        sent = calls(url)
        # The same requests (regenerated): upgrade-safe, the old batch, never paid twice.
        same = submit(client, regenerate(tmp_path / "regen.jsonl", items), "upgrade")
        assert same.batch.id == old.id and same.step.action == "done" and not same.notices
        assert same.chain.fingerprint is None  # continued in its own spelling: old workers find it too
        assert calls(url)["creates"] == sent["creates"] and calls(url)["uploads"] == sent["uploads"]
        # Other requests: a new chain, and the old batch named in the warning.
        changed = submit(client, requests(4, prefix="fixed"), "upgrade")
        assert changed.created and changed.new_chain and changed.batch.id != old.id
        assert old.id in changed.notices[0]

        # A key whose old input cannot be read back any more: re-attached as before, with a notice.
        gone = client.files.upload(write(tmp_path / "gone.jsonl", items))
        kept = client.batches.wait(_create_raw(client, gone.id, "unreadable").id, poll_interval=0.05)
        client.files.delete(gone.id)
        with caplog.at_level(logging.WARNING, logger="batch_ops"):
            blind = client.submit(write(tmp_path / "new.jsonl", requests(4, prefix="new")), endpoint=CHAT,
                                  idempotency_key="unreadable")
        assert blind.id == kept.id
        assert "before batch_ops wrote request fingerprints" in caplog.text and kept.id in caplog.text


def test_two_tries_with_different_requests_at_once_each_keep_their_own(make_server: MakeServer,
                                                                       tmp_path: Path) -> None:
    import threading

    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        results: dict[str, Any] = {}
        barrier = threading.Barrier(2)

        def run(name: str, items: list[dict[str, Any]]) -> None:
            barrier.wait()
            results[name] = submit(client, items, "race")

        threads = [threading.Thread(target=run, args=(n, requests(3, prefix=n))) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        a, b = results["a"], results["b"]
        assert a.batch.id != b.batch.id, "two sets of requests collapsed into one batch"
        assert "a 0" in input_text(url, a.batch.id) and "b 0" in input_text(url, b.batch.id)
        assert not a.cancelled and not b.cancelled


async def test_the_async_client_starts_a_new_chain_too(make_server: MakeServer, tmp_path: Path) -> None:
    with make_server() as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            first = await client.submit_spec(write(tmp_path / "a.jsonl", requests(3)),
                                             SubmitSpec(endpoint=CHAT, idempotency_key="async"))
            same = await client.submit_spec(requests(3), SubmitSpec(endpoint=CHAT, idempotency_key="async"))
            changed = await client.submit_spec(requests(2), SubmitSpec(endpoint=CHAT, idempotency_key="async"))
            assert same.batch.id == first.batch.id and not same.created
            assert changed.created and changed.new_chain and changed.batch.id != first.batch.id


def test_the_cli_submits_changed_requests_as_a_new_batch_and_says_so(server_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def submit_cli(path: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OPENAI_API_KEY": "local", "NO_COLOR": "1", "COLUMNS": "400"}
        return subprocess.run([sys.executable, "-m", "batch_ops.cli", "submit", str(path), "--endpoint", CHAT,
                               "--base-url", server_url, "--idempotency-key", "cli-key"],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    path = write(tmp_path / "in.jsonl", requests(2, prefix="cli"))
    first = submit_cli(path)
    assert first.returncode == 0, first.stderr
    old = re.search(r"Created batch (batch_\w+)", first.stderr)
    assert old is not None, first.stderr
    write(path, requests(2, prefix="cli fixed"))
    second = submit_cli(path)
    assert second.returncode == 0, second.stderr
    new = re.search(r"Created batch (batch_\w+)", second.stderr)
    assert new is not None and new.group(1) != old.group(1), second.stderr
    assert "warning: Idempotency key 'cli-key': the requests changed" in " ".join(second.stderr.split())
    assert old.group(1) in second.stderr
