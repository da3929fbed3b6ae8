"""Helpers for the server tests: request files, the official SDK, waiting, reading results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import openai
import pytest

CHAT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class Kit:
    """Small steps every server test repeats, written once."""

    CHAT = CHAT

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    @staticmethod
    def sdk(url: str, *, key: str = "sk-local", retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=url, api_key=key, max_retries=retries, timeout=30)

    @staticmethod
    def chat_line(i: int, *, prefix: str = "q", model: str = "gpt-4o-mini", url: str = CHAT) -> dict[str, Any]:
        return {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
        }

    def write(self, lines: Iterable[dict[str, Any] | str], name: str = "in.jsonl") -> Path:
        path = self.tmp / name
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        return path

    def chat_file(self, n: int, *, prefix: str = "q", name: str = "in.jsonl") -> Path:
        return self.write((self.chat_line(i, prefix=prefix) for i in range(n)), name)

    def submit(self, client: openai.OpenAI, path: Path, *, endpoint: str = CHAT, **kw: Any) -> Any:
        with path.open("rb") as fh:
            uploaded = client.files.create(file=fh, purpose="batch")
        return client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            **kw,
        )

    @staticmethod
    def wait(
        client: openai.OpenAI,
        batch_id: str,
        *,
        timeout: float = 60.0,
        until: Iterable[str] = TERMINAL,
        seen: list[str] | None = None,
    ) -> Any:
        """Poll every 20 ms until the batch reaches one of ``until``; record each status seen."""
        wanted = set(until)
        deadline = time.monotonic() + timeout
        while True:
            batch = client.batches.retrieve(batch_id)
            if seen is not None and (not seen or seen[-1] != batch.status):
                seen.append(batch.status)
            if batch.status in wanted:
                return batch
            assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
            time.sleep(0.02)

    @staticmethod
    def lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]

    def results(self, client: openai.OpenAI, batch: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.lines(client, batch.output_file_id), self.lines(client, batch.error_file_id)


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)
