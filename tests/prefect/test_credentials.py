"""The credentials block: registration, save/load, the environment fallback; and the import rule."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from batch_ops import BatchStatus, InputValidationError
from batch_ops.prefect import OpenAIBatchCredentials, create_batch, run_batch, upload_batch_file

ENDPOINT = "/v1/chat/completions"


def test_block_registers_with_the_documented_command_and_the_package_imports_no_airflow() -> None:
    script = textwrap.dedent(
        """
        import runpy, sys
        import batch_ops.prefect
        loaded = [m for m in ("airflow", "batch_ops.airflow", "batch_ops.server") if m in sys.modules]
        assert not loaded, f"batch_ops.prefect imported {loaded}"
        sys.argv = ["prefect", "block", "register", "-m", "batch_ops.prefect"]
        runpy.run_module("prefect", run_name="__main__")
        """
    )
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered 1 block" in done.stdout
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("openai-batch-credentials")
        schemas = client.read_block_schemas()
    assert block_type.name == "OpenAI Batch Credentials"
    # What collections' credentials carry (prefect-aws, prefect-dbt): the UI shows the logo and the link.
    assert str(block_type.logo_url).endswith("/img/logo.svg") and "openai-batch-ops" in str(block_type.logo_url)
    assert str(block_type.documentation_url).endswith("/prefect/#credentials")
    [schema] = [s for s in schemas if s.block_type_id == block_type.id][-1:]
    assert schema.fields["secret_fields"] == ["api_key", "events_token"]  # both obfuscated in the UI


def test_a_saved_block_loads_with_its_key_and_builds_clients(batch_server: str, secret: str) -> None:
    OpenAIBatchCredentials(api_key=secret, base_url=batch_server, project="p1").save("roundtrip", overwrite=True)

    loaded = OpenAIBatchCredentials.load("roundtrip")
    settings = loaded.get_settings()

    assert settings.require_key() == secret and settings.base_url == batch_server and settings.project == "p1"
    assert secret not in repr(loaded)
    with loaded.get_client() as client:
        assert client.batches.list(limit=1).data is not None  # the key works against the server


def test_the_key_is_required() -> None:
    with pytest.raises(ValidationError, match="api_key"):
        OpenAIBatchCredentials()  # type: ignore[call-arg]


@pytest.mark.asyncio(loop_scope="session")
async def test_without_a_block_the_tasks_read_the_environment(
    batch_server: str, secret: str, make_requests: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", batch_server)

    result = await run_batch(requests=make_requests(2), endpoint=ENDPOINT, poll_interval=0.1)

    assert result.status is BatchStatus.COMPLETED
    # A block's empty fields come from the environment too: only the key here.
    async with OpenAIBatchCredentials(api_key=secret).get_async_client() as client:
        assert client.settings.base_url == batch_server
        assert (await client.batches.retrieve(result.batch_id)).id == result.batch_id


@pytest.mark.asyncio(loop_scope="session")
async def test_metadata_leaving_no_room_for_our_two_keys_is_refused_before_any_create(
    batch_server: str, secret: str, make_requests: Any
) -> None:
    credentials = OpenAIBatchCredentials(api_key=secret, base_url=batch_server)
    async with credentials.get_async_client() as client:
        before = [b.id async for b in client.batches.iter_all()]

    @flow
    async def too_much_metadata() -> None:
        file_id = await upload_batch_file(make_requests(1), endpoint=ENDPOINT, credentials=credentials)
        await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials,
                           metadata={f"k{i}": "v" for i in range(15)})

    with pytest.raises(InputValidationError, match="keep at most 14 metadata keys"):
        await too_much_metadata()
    async with credentials.get_async_client() as client:
        assert [b.id async for b in client.batches.iter_all()] == before


def test_the_block_follows_collection_conventions() -> None:
    import re

    from prefect.blocks.abstract import CredentialsBlock

    from batch_ops._version import DOCS_URL

    assert issubclass(OpenAIBatchCredentials, CredentialsBlock)
    assert OpenAIBatchCredentials.get_block_type_slug() == "openai-batch-credentials"  # saved blocks: never change
    assert str(OpenAIBatchCredentials._logo_url).startswith(DOCS_URL)
    assert str(OpenAIBatchCredentials._documentation_url).startswith(DOCS_URL)
    # The docstring's example loads the block it saved.
    doc = OpenAIBatchCredentials.__doc__ or ""
    saved, loaded = re.findall(r'\.save\("([^"]+)"\)', doc), re.findall(r'\.load\("([^"]+)"\)', doc)
    assert saved and saved == loaded
