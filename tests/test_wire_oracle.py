"""The end-to-end judge itself: ``wire_oracle`` (tests/conftest.py) lists batches oldest first.

The money tests compare a chain's batch ids, in order, with what the provider's SDK lists; a batch
API pages newest first and stamps creation in whole seconds, so a retry made within a second of its
first try must still come out second.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

MakeServer = Callable[..., AbstractContextManager[Any]]


def test_batches_made_in_the_same_second_come_out_in_the_order_they_were_made(
        make_server: MakeServer, wire_oracle: Any) -> None:
    with make_server() as url:
        anthropic = wire_oracle.anthropic(url)
        made = [anthropic.messages.batches.create(requests=[{  # type: ignore[list-item]
            "custom_id": f"q-{i}", "params": {"model": "claude-a", "max_tokens": 8,
                                              "messages": [{"role": "user", "content": "hi"}]}}]).id
                for i in range(5)]
        openai = wire_oracle.openai(url)
        line = {"custom_id": "q", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
        upload = openai.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
        made_openai = [openai.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                             completion_window="24h").id for _ in range(5)]
        # Five creates take well under a second here: most of them share one created_at.
        assert [b for b, _ in wire_oracle.batches("anthropic", url)] == made
        assert [b for b, _ in wire_oracle.batches("openai", url)] == made_openai
