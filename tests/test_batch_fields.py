"""One list of a batch's fields: the model's. The local server and ``batch-ops status`` follow it.

Before, ``server/store.py`` and ``cli/render.py`` each kept a hand-written copy of ``Batch``'s
fields (issue 23): a field added to the model would have been missing from the server's answers
and from the CLI's view. These tests read the model's fields, so a new field is checked the day
it is added.
"""

from __future__ import annotations

import httpx
from rich.console import Console

from batch_ops.cli.render import batch_view
from batch_ops.models import Batch
from batch_ops.server import ServerURL

#: Batch's timestamps: the fields OpenAI names ``*_at``.
TIMESTAMPS = [name for name in Batch.model_fields if name.endswith("_at")]


def test_the_server_sends_every_field_of_the_model_in_its_order(server_url: ServerURL) -> None:
    with httpx.Client(base_url=server_url, headers={"Authorization": "Bearer sk-test"}, timeout=30) as http:
        line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}\n'
        file_id = http.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", line)}).json()["id"]
        created = http.post("/batches", json={"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                              "completion_window": "24h"})
        fetched = http.get(f"/batches/{created.json()['id']}")
        listed = http.get("/batches", params={"limit": 1})
    for answer in (created.json(), fetched.json(), listed.json()["data"][0]):
        assert list(answer)[: len(Batch.model_fields)] == list(Batch.model_fields)
        Batch.model_validate(answer)


def test_the_status_view_shows_every_timestamp_of_the_model_in_the_order_a_batch_passes_them() -> None:
    assert len(TIMESTAMPS) >= 9  # created, in progress, finalizing, completed, failed, expired, cancelling, ...
    batch = Batch.model_validate({"id": "batch_1", "input_file_id": "file-1", "status": "cancelled",
                                  **{name: 1_700_000_000 + 60 * i for i, name in enumerate(TIMESTAMPS)}})
    console = Console(record=True, width=200, color_system=None)
    console.print(batch_view(batch))
    labels = [line.split("  ")[0].strip() for line in console.export_text().splitlines()]
    shown = [label for label in labels if f"{label.replace(' ', '_')}_at" in TIMESTAMPS]
    # Every step in the model's order; the deadline (expires_at), not a step, last.
    expected = [name for name in TIMESTAMPS if name != "expires_at"] + ["expires_at"]
    assert shown == [name.removesuffix("_at").replace("_", " ") for name in expected]


def test_every_timestamp_of_the_model_is_read_from_either_wire_form() -> None:
    # Epoch seconds (OpenAI) and ISO-8601 strings (some Azure versions) alike: the model's
    # timestamp validator must name every *_at field.
    iso = {name: "2023-11-14T22:13:20Z" for name in TIMESTAMPS}
    batch = Batch.model_validate({"id": "b", "input_file_id": "f", "status": "completed", **iso})
    assert {name: getattr(batch, name) for name in TIMESTAMPS} == dict.fromkeys(TIMESTAMPS, 1_700_000_000)
