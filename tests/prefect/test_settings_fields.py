"""The credentials block is ``ClientSettings`` as a Prefect block: every field, secrets kept secret.

A setting added to ``ClientSettings`` and forgotten in the block fails the first test, naming it.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import SecretStr

from batch_ops import ClientSettings
from batch_ops.prefect import OpenAIBatchCredentials


def _types(annotation: Any) -> set[Any]:
    """The types a field holds, ``None`` left out."""
    return {t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)}


def test_every_client_setting_is_a_block_field_of_the_same_type() -> None:
    block = OpenAIBatchCredentials.model_fields
    missing = [name for name in ClientSettings.model_fields if name not in block]
    assert not missing, (
        f"ClientSettings fields missing from the Prefect block: {missing}. Add each to OpenAIBatchCredentials "
        "(batch_ops/prefect/credentials.py) as `name: <type> | None = _setting(\"name\")`."
    )
    extra = [name for name in block if name not in ClientSettings.model_fields]
    assert not extra, f"Block fields that are no ClientSettings field: {extra}"
    for name, info in ClientSettings.model_fields.items():
        assert _types(block[name].annotation) == _types(info.annotation), name
        # Empty means "from the environment or the default"; only the key is required (see the block).
        assert block[name].is_required() == (name == "api_key"), name


def test_secrets_stay_secret_in_the_block(settings_samples: Any) -> None:
    secrets = settings_samples.secret_fields()
    assert secrets, "ClientSettings has no SecretStr field any more?"
    assert OpenAIBatchCredentials.model_json_schema()["secret_fields"] == secrets  # obfuscated in the UI
    block = OpenAIBatchCredentials(**settings_samples.samples())
    for name in secrets:
        assert isinstance(getattr(block, name), SecretStr)
        assert settings_samples.sample(name) not in repr(block)


def test_every_block_field_reaches_the_settings(settings_samples: Any) -> None:
    expected = settings_samples.samples()
    settings = OpenAIBatchCredentials(**expected).get_settings()
    lost = settings_samples.lost(settings, expected)
    assert not lost, f"OpenAIBatchCredentials.get_settings() dropped {sorted(lost)}"


def test_a_stored_unsaved_block_keeps_every_setting_but_the_secrets(
    settings_samples: Any, monkeypatch: Any
) -> None:
    """A flow run's parameters keep an unsaved block with its secrets obfuscated; the cancellation
    hook rebuilds the settings from them (the key then comes from the environment)."""
    from batch_ops.prefect.credentials import settings_from_parameters

    expected = settings_samples.samples()
    stored = OpenAIBatchCredentials(**expected).model_dump(mode="json")
    secrets = settings_samples.secret_fields()
    assert all(str(stored[name]).strip("*") == "" for name in secrets), stored  # what Prefect stores
    from batch_ops.dialects import dialect_named

    key_env = dialect_named(expected["provider"]).key_env  # the sample provider's own variable holds its key
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", *key_env, "BATCH_OPS_EVENTS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(key_env[0], "sk-from-the-environment")

    settings = settings_from_parameters(stored)

    lost = settings_samples.lost(settings, {k: v for k, v in expected.items() if k not in secrets})
    assert not lost, f"settings rebuilt from stored parameters dropped {sorted(lost)}"
    assert settings.require_key() == "sk-from-the-environment"
