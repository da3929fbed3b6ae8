"""Settings follow the provider: which environment variables hold the key and the API root, and the
API root when none is given. A key is only ever read for, and sent to, its own vendor.

The providers here are dialects registered for the test (data, as every dialect is); the real
ones (Anthropic, Gemini, ...) are checked in their own tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from batch_ops import ClientSettings, ConfigurationError
from batch_ops.dialects import DIALECTS, Dialect


class _Vendor(Dialect):
    name = "vendortest"
    title = "Vendor Test Batches"
    default_base_url = "https://api.vendor.test/v2"
    key_env = ("VENDOR_TEST_API_KEY",)
    base_url_env = (("VENDOR_TEST_BASE_URL", "/v2"),)


@pytest.fixture
def vendor(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Vendor]:
    dialect = _Vendor()
    monkeypatch.setitem(DIALECTS, dialect.name, dialect)
    yield dialect


def test_the_provider_chooses_the_key_variable(vendor: _Vendor) -> None:
    env = {"OPENAI_API_KEY": "sk-openai-secret", "BATCH_OPS_PROVIDER": "vendortest"}
    settings = ClientSettings.from_env(env)
    # The OpenAI key is not the vendor's: never read for it (it would be sent to another company).
    assert settings.api_key is None and settings.provider == "vendortest"
    with pytest.raises(ConfigurationError, match="No API key for Vendor Test Batches: set VENDOR_TEST_API_KEY"):
        settings.require_key()
    settings = ClientSettings.from_env({**env, "VENDOR_TEST_API_KEY": "vk-1"})
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "vk-1"
    # An override of the provider decides as the environment does.
    assert ClientSettings.from_env({"VENDOR_TEST_API_KEY": "vk-2"}, provider="vendortest").api_key is not None
    assert ClientSettings.from_env({"VENDOR_TEST_API_KEY": "vk-2"}).api_key is None


def test_the_provider_chooses_the_api_root(vendor: _Vendor) -> None:
    assert ClientSettings(provider="vendortest").base_url == "https://api.vendor.test/v2"
    assert ClientSettings(provider="vendortest", base_url="").base_url == "https://api.vendor.test/v2"
    assert ClientSettings(provider="vendortest", base_url="http://127.0.0.1:9/v2").base_url == "http://127.0.0.1:9/v2"
    # An SDK's variable names the host; ours includes the version.
    env = {"BATCH_OPS_PROVIDER": "vendortest", "VENDOR_TEST_BASE_URL": "http://127.0.0.1:9/",
           "OPENAI_BASE_URL": "http://openai.invalid/v1"}
    assert ClientSettings.from_env(env).base_url == "http://127.0.0.1:9/v2"
    # OpenAI's stay as they were.
    assert ClientSettings().base_url == "https://api.openai.com/v1"
    openai = ClientSettings.from_env({"OPENAI_API_KEY": "sk-1", "OPENAI_BASE_URL": "http://h/v1"})
    assert openai.base_url == "http://h/v1" and openai.api_key is not None
    azure = ClientSettings.from_env({"AZURE_OPENAI_API_KEY": "az-1", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/",
                                     "OPENAI_API_VERSION": "2024-10-21"})
    assert azure.dialect.name == "azure" and azure.base_url == "https://r.openai.azure.com/openai"


def test_an_unknown_provider_in_the_environment_is_named() -> None:
    with pytest.raises(ConfigurationError, match="unknown provider 'nope'"):
        ClientSettings.from_env({"BATCH_OPS_PROVIDER": "nope"})


def test_the_cli_reads_the_providers_key_only() -> None:
    """``batch-ops --provider azure``: the key comes from the provider's variables; the message names them."""
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k and not k.startswith(("OPENAI_", "AZURE_"))}
    done = subprocess.run([sys.executable, "-m", "batch_ops.cli", "--provider", "azure", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert "No API key for Azure OpenAI global batch: set OPENAI_API_KEY or AZURE_OPENAI_API_KEY" in done.stderr
    done = subprocess.run([sys.executable, "-m", "batch_ops.cli", "--provider", "nope", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown provider 'nope'" in done.stderr
