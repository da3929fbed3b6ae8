"""Azure OpenAI's dialect: endpoints and urls spelled without ``/v1`` (``/chat/completions``), as its
documentation writes them, accepted when the settings are Azure's (``api_version``) and sent that
way; refused before any upload when the settings are OpenAI's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops import BatchClient, InputValidationError

MakeServer = Callable[..., AbstractContextManager[Any]]


def _azure_file(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"a{i}", "method": "POST", "url": "/chat/completions",
                                        "body": {"model": "gpt-4o-batch", "messages": [{"role": "user",
                                                                                        "content": "hi"}]}}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("endpoint", ["/chat/completions", "/v1/chat/completions"])
def test_azure_spelling_is_accepted_and_sent_as_azure_documents_it(make_server: MakeServer, tmp_path: Path,
                                                                    endpoint: str) -> None:
    path = _azure_file(tmp_path / "azure.jsonl")
    with make_server() as url, BatchClient(api_key="azure-key", base_url=url, api_version="2024-10-21") as client:
        batch = client.submit(path, endpoint=endpoint)
        assert batch.endpoint == "/chat/completions"
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=30)
        assert done.status.value == "completed" and done.request_counts.completed == 3
        assert all(r.ok for r in client.results(done, input_path=path))


def test_requests_written_for_azure_carry_azures_url(make_server: MakeServer) -> None:
    requests = [{"custom_id": f"r{i}", "body": {"model": "m", "messages": []}} for i in range(2)]
    with make_server() as url, BatchClient(api_key="azure-key", base_url=url, api_version="2024-10-21") as client:
        batch = client.submit(requests, endpoint="/v1/chat/completions")
        with openai.OpenAI(api_key="k", base_url=str(url)) as sdk:
            lines = [json.loads(x) for x in sdk.files.content(batch.input_file_id).text.splitlines()]
    assert {line["url"] for line in lines} == {"/chat/completions"}
    assert batch.endpoint == "/chat/completions"


def test_azure_spelling_with_openai_settings_is_refused_before_any_upload(make_server: MakeServer,
                                                                        tmp_path: Path) -> None:
    path = _azure_file(tmp_path / "azure.jsonl")
    with make_server() as url, BatchClient(api_key="k", base_url=url) as client:
        with pytest.raises(InputValidationError) as caught:
            client.submit(path, endpoint="/chat/completions")
        assert "endpoint" in str(caught.value)
        with pytest.raises(InputValidationError) as caught:
            client.submit(path, endpoint="/v1/chat/completions")
        assert caught.value.problems[0].rule == "url_mismatch"
        assert client.files.list().data == []
