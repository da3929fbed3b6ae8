"""The OpenAI-shaped batch APIs of other vendors as dialects (Groq, Together, DeepInfra, Novita, any base URL),
Azure OpenAI's two URL forms, and the local server answering as Together does (``wire="together"``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from batch_ops import BatchClient, ClientSettings, ConfigurationError, InputValidationError
from batch_ops.dialects import DIALECTS, dialect_for
from batch_ops.effects import Reply, Send
from batch_ops.models import BatchStatus
from batch_ops.results import result_records
from batch_ops.server import serve_in_background

CHAT = "/v1/chat/completions"
NEUTRAL = [{"custom_id": f"q-{i}", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"{i}+1?"}]} for i in range(3)]


# -- profiles as data --------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "base_url"), [
    ("openai", "https://api.openai.com/v1"),
    ("groq", "https://api.groq.com/openai/v1"),
    ("together", "https://api.together.xyz/v1"),
    ("deepinfra", "https://api.deepinfra.com/v1/openai"),
    ("novita", "https://api.novita.ai/openai/v1"),
])
def test_a_provider_without_a_base_url_gets_its_own(provider: str, base_url: str) -> None:
    settings = ClientSettings(api_key="k", provider=provider)
    assert settings.base_url == base_url and dialect_for(settings).name == provider
    # A base URL given wins (a proxy, the local server).
    assert ClientSettings(api_key="k", provider=provider, base_url="http://127.0.0.1:1/v1").base_url.endswith(":1/v1")
    assert ClientSettings.from_env({"OPENAI_API_KEY": "k", "BATCH_OPS_PROVIDER": provider}).base_url == base_url


def test_any_base_url_and_azure_need_one() -> None:
    for provider in ("openai_compatible", "azure"):
        with pytest.raises(ConfigurationError, match="give base_url"):
            ClientSettings(api_key="k", provider=provider)
    assert dialect_for(ClientSettings(api_key="k", provider="openai_compatible", base_url="http://gw/v1")).name == \
        "openai_compatible"


def test_groq_takes_windows_up_to_seven_days_chat_only_and_100_mb() -> None:
    groq = DIALECTS["groq"]
    body = groq.create_body(input_file_id="f", endpoint=CHAT, completion_window="7d", metadata=None,
                            output_expires_after=None, idempotency_key="k")
    assert body["completion_window"] == "7d"
    for window in ("48h", "168h", "1d"):
        groq.create_body(input_file_id="f", endpoint=CHAT, completion_window=window, metadata=None,
                         output_expires_after=None, idempotency_key="k")
    with pytest.raises(InputValidationError) as info:
        groq.create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="8d", metadata=None,
                         output_expires_after=None, idempotency_key="k")
    assert [p.param for p in info.value.problems] == ["endpoint", "completion_window"]
    assert "from '24h' to '7d'" in info.value.problems[1].fix
    assert groq.line_rules(CHAT)["max_bytes"] == 100 * 1024 * 1024
    with pytest.raises(InputValidationError):  # OpenAI keeps its one window
        DIALECTS["openai"].create_body(input_file_id="f", endpoint=CHAT, completion_window="7d", metadata=None,
                                       output_expires_after=None, idempotency_key="k")


def test_novita_reads_progress_and_top_level_counts_in_a_batch_and_a_list() -> None:
    novita = DIALECTS["novita"]
    job = {"id": "b1", "object": "batch", "endpoint": CHAT, "input_file_id": "f", "status": "PROGRESS",
           "created_at": "2026-12-05T10:00:00Z", "total": 4, "completed": 1, "failed": 1, "remark": ""}
    send = Send("GET", "/batches/b1")
    batch = novita.parse_batch(Reply(status=200, body=json.dumps(job).encode()), send)
    assert batch.status is BatchStatus.IN_PROGRESS and batch.request_counts.total == 4
    page = novita.parse_batch_list(Reply(status=200, body=json.dumps({"object": "list", "data": [
        {**job, "status": "COMPLETED"}, job]}).encode()), Send("GET", "/batches"))
    assert [b.status for b in page.data] == [BatchStatus.COMPLETED, BatchStatus.IN_PROGRESS]
    assert page.data[1].request_counts.completed == 1
    assert novita.line_shape.method_url is False


# -- Together, against the local server answering as Together does ----------------------------------


@pytest.fixture(scope="module")
def together_url() -> Any:
    with serve_in_background(wire="together") as url:
        yield url


def test_the_server_answers_as_together(together_url: str, tmp_path: Path) -> None:
    line = {"custom_id": "a", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with httpx.Client(base_url=str(together_url), headers={"Authorization": "Bearer k"}) as http:
        refused = http.post("/files", files={"file": ("in.jsonl", path.read_bytes())}, data={"purpose": "batch"})
        assert refused.status_code == 200  # uploads of other purposes are fine; a batch needs batch-api:
        bad = http.post("/batches", json={"input_file_id": refused.json()["id"], "endpoint": CHAT,
                                          "completion_window": "24h"})
        assert bad.status_code == 400 and "batch-api" in bad.text
        uploaded = http.post("/files", files={"file": ("in.jsonl", path.read_bytes())},
                             data={"purpose": "batch-api"}).json()
        created = http.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT,
                                              "completion_window": "24h", "metadata": {"k": "v"}}).json()
        job = created["job"]
        assert set(created) == {"job", "warning"} and uuid.UUID(job["id"])
        assert job["status"] == "VALIDATING" and job["created_at"].endswith("Z") and "metadata" not in job
        listed = http.get("/batches").json()
        assert isinstance(listed, list) and job["id"] in [j["id"] for j in listed]
        assert http.get(f"/batches/{job['id']}").json()["id"] == job["id"]


def test_the_together_dialect_runs_neutral_requests_end_to_end(together_url: str) -> None:
    settings = ClientSettings(api_key="k", provider="together", base_url=together_url)
    with BatchClient(settings=settings) as client:
        batch = client.submit(NEUTRAL, endpoint=CHAT)
        assert uuid.UUID(batch.id) and batch.status is BatchStatus.VALIDATING
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
        assert done.status is BatchStatus.COMPLETED and done.output_file_id
        assert client.files.retrieve(batch.input_file_id).purpose == "batch-api"
        sent = [json.loads(x) for x in Path(str(client.files.download(
            batch.input_file_id, Path(str(together_url.data_dir)) / "sent.jsonl"))).read_text().splitlines()]
        assert [list(x) for x in sent] == [["custom_id", "body"]] * 3  # Together's lines: no method, no url
        records = result_records(client.results(done))
        assert [r["custom_id"] for r in records] == ["q-0", "q-1", "q-2"] and all(r["ok"] and r["text"]
                                                                                 for r in records)
        assert batch.id in [b.id for b in client.batches.list().data]
        with pytest.raises(InputValidationError) as info:  # Together's id rule, before any upload
            client.submit([{**NEUTRAL[0], "custom_id": "x" * 65}], endpoint=CHAT)
        assert info.value.problems[0].rule == "invalid_custom_id"


# -- Azure OpenAI: both URL forms, judged by the openai SDK -----------------------------------------


def _azure_lines(path: Path) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"a{i}", "method": "POST", "url": "/chat/completions",
                                        "body": {"model": "gpt-4o-batch", "messages": [{"role": "user",
                                                                                        "content": "hi"}]}}) + "\n"
                            for i in range(2)))
    return path


def test_azure_api_version_form_with_the_azure_sdk_and_batch_ops(server_url: str, tmp_path: Path) -> None:
    root = str(server_url).removesuffix("/v1")
    path = _azure_lines(tmp_path / "azure.jsonl")
    sdk = openai.AzureOpenAI(api_key="k", api_version="2024-10-21", azure_endpoint=root)
    uploaded = sdk.files.create(file=path.open("rb"), purpose="batch")
    created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h")
    assert sdk.batches.retrieve(created.id).id == created.id
    settings = ClientSettings(api_key="k", base_url=f"{root}/openai", api_version="2024-10-21")
    with BatchClient(settings=settings) as client:
        assert client.dialect.name == "azure"
        done = client.batches.wait(created.id, poll_interval=0.05, timeout=60)
        assert done.status is BatchStatus.COMPLETED
        batch = client.submit(NEUTRAL, endpoint="/chat/completions")  # neutral requests, Azure's spelling
        assert all(r.ok for r in client.results(client.batches.wait(batch.id, poll_interval=0.05, timeout=60)))
    assert sdk.files.content(done.output_file_id).text.count("\n") == 2


def test_azure_v1_form_with_the_openai_sdk_and_batch_ops(server_url: str, tmp_path: Path) -> None:
    base = str(server_url).removesuffix("/v1") + "/openai/v1/"
    path = _azure_lines(tmp_path / "azure.jsonl")
    sdk = openai.OpenAI(api_key="k", base_url=base)
    uploaded = sdk.files.create(file=path.open("rb"), purpose="batch")
    created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    assert created.id in [b.id for b in sdk.batches.list()]
    # batch_ops: Azure's dialect (the api-key header) with the v1 base URL and no api-version.
    with BatchClient(settings=ClientSettings(api_key="k", provider="azure", base_url=base)) as client:
        assert client.dialect.default_params(client.settings) == {}
        done = client.batches.wait(created.id, poll_interval=0.05, timeout=60)
        assert done.status is BatchStatus.COMPLETED
        batch = client.submit(path, endpoint="/chat/completions")
        assert client.batches.wait(batch.id, poll_interval=0.05, timeout=60).request_counts.completed == 2


# -- Together's money: the key rides in the input's file name -----------------------------------------


def test_together_retries_reattach_and_pay_only_for_what_did_not_finish(make_server: Any) -> None:
    from batch_ops import SubmitSpec

    with make_server(wire="together", concurrency=1, request_latency=0.15, expire_after=0.6) as url, \
            BatchClient(settings=ClientSettings(api_key="k", provider="together", base_url=url)) as client:
        requests = [{**NEUTRAL[0], "custom_id": f"q-{i}"} for i in range(10)]
        spec = SubmitSpec.of(endpoint=CHAT, idempotency_key="together-nightly")
        first = client.submit_spec(requests, spec)
        again = client.submit_spec(requests, spec)  # a retried task, while the batch runs: re-attached
        assert first.created and not again.created and again.batch.id == first.batch.id
        ended = client.batches.wait(first.batch.id, poll_interval=0.05, timeout=30)
        assert ended.status is BatchStatus.EXPIRED
        done_first = sum(r.ok for r in client.results(ended))
        assert 0 < done_first < 10
        second = client.submit_spec(requests, spec)
        assert second.created and second.step.number == 1 and second.carried == 10 - done_first
        chain = client.batches.chain("together-nightly")
        assert [a.batch.id for a in chain.attempts] == [first.batch.id, second.batch.id]
        # No metadata on the wire: what told the chain apart is the input's name.
        raw = httpx.get(f"{url}/batches/{first.batch.id}", headers={"Authorization": "Bearer k"}).json()
        assert "metadata" not in raw


def test_together_refuses_a_key_too_long_for_a_file_name() -> None:
    together = DIALECTS["together"]
    with pytest.raises(InputValidationError) as info:
        together.create_body(input_file_id="f", endpoint=CHAT, completion_window="24h", metadata=None,
                             output_expires_after=None, idempotency_key="k" * 300)
    assert info.value.problems[0].rule == "invalid_idempotency_key"
    body = together.create_body(input_file_id="f", endpoint=CHAT, completion_window="24h", metadata={"a": "b"},
                                output_expires_after=None, idempotency_key="k")
    assert "metadata" not in body
