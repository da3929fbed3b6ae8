"""Connections, the hook, and provider registration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch_ops import ConfigurationError
from batch_ops.airflow import OpenAIBatchHook
from batch_ops.airflow.provider import get_provider_info


def conn_env(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_openai_batch_connection(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    conn_env(monkeypatch, "c1", conn_type="openaibatch", host="http://127.0.0.1:9/v1", password=api_key,
             extra={"organization": "org-1", "project": "proj-1", "max_retries": "2"})
    settings = OpenAIBatchHook(conn_id="c1").get_settings()
    assert settings.base_url == "http://127.0.0.1:9/v1"
    assert (settings.organization, settings.project, settings.max_retries) == ("org-1", "proj-1", 2)
    assert settings.require_key() == api_key and api_key not in repr(settings)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("api.openai.com", "https://api.openai.com/v1"), ("https://x.openai.azure.com/openai", None),
     ("", "https://api.openai.com/v1")],
)
def test_base_url_from_host(monkeypatch: pytest.MonkeyPatch, host: str, expected: str | None) -> None:
    conn_env(monkeypatch, "c2", conn_type="openaibatch", host=host, password="k")
    assert OpenAIBatchHook(conn_id="c2").get_settings().base_url == (expected or host)


def test_azure_api_version_from_extra_and_old_style_prefixed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connection saved before 0.2: the old type name, and the form's old prefixed extra keys.
    conn_env(monkeypatch, "c3", conn_type="openai_batch", host="https://x.openai.azure.com/openai", password="k",
             extra={"extra__openai_batch__api_version": "2024-10-21", "project": ""})
    settings = OpenAIBatchHook(conn_id="c3").get_settings()
    assert settings.is_azure and settings.api_version == "2024-10-21" and settings.project is None


def test_official_openai_connection_works(server_url, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_env(monkeypatch, "openai_default", conn_type="openai", password="sk-official",
             extra={"openai_client_kwargs": {"base_url": str(server_url), "organization": "org-9"}})
    hook = OpenAIBatchHook(conn_id="openai_default")
    assert hook.get_settings().organization == "org-9"
    with hook.get_client() as client:
        client.batches.list(limit=1)  # really reaches the server


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"conn_type": "openaibatch", "host": "http://h/v1"}, "has no API key"),
        ({"conn_type": "openaibatch", "host": "http://h/v1", "password": "k", "extra": {"colour": "red"}},
         "unknown extra field(s) colour"),
        ({"conn_type": "openai", "password": "k", "extra": {"auth_type": "workload_identity"}}, "not supported"),
    ],
)
def test_unusable_connections_say_why(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], message: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BAD", json.dumps(conn))
    with pytest.raises(ConfigurationError, match="'bad'") as raised:
        OpenAIBatchHook(conn_id="bad").get_settings()
    assert message in str(raised.value)


def test_a_bad_value_is_named_not_shown(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    # A key pasted into the wrong field must not end up in the error message.
    conn_env(monkeypatch, "c4", conn_type="openaibatch", host="http://h/v1", password="k",
             extra={"timeout": api_key})
    with pytest.raises(ConfigurationError, match="timeout") as raised:
        OpenAIBatchHook(conn_id="c4").get_settings()
    assert api_key not in str(raised.value)


async def test_async_lookup_matches_the_sync_one(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_env(monkeypatch, "c5", conn_type="openaibatch", host="http://127.0.0.1:9/v1", password="k",
             extra={"project": "p"})
    hook = OpenAIBatchHook(conn_id="c5")
    assert await hook.aget_settings() == hook.get_settings()


def test_test_connection_button(server_url, use_server) -> None:
    use_server(server_url)
    assert OpenAIBatchHook().test_connection()[0] is True
    use_server("http://127.0.0.1:9/v1", max_retries=0)
    ok, message = OpenAIBatchHook().test_connection()
    assert not ok and message


def test_test_connection_gives_up_within_seconds_on_an_unreachable_server(use_server) -> None:
    import time

    from batch_ops.server.background import free_port

    use_server(f"http://127.0.0.1:{free_port()}/v1")  # the connection's own retries: the default 6
    started = time.monotonic()
    ok, message = OpenAIBatchHook().test_connection()
    took = time.monotonic() - started
    assert not ok and "APIConnectionError" in message
    assert took < 8, f"the Test button waited {took:.1f} s"


def test_provider_info_matches_airflows_schema() -> None:
    import jsonschema
    from airflow import providers_manager

    schema_path = Path(providers_manager.__file__).with_name("provider_info.schema.json")
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_airflow_finds_the_provider_and_its_connection_type() -> None:
    from airflow.providers_manager import ProvidersManager
    try:
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
    except ImportError:  # Airflow < 3.2: one providers manager for everything
        ProvidersManagerTaskRuntime = ProvidersManager

    manager = ProvidersManager()
    assert "openai-batch-ops" in manager.providers
    hooks = ProvidersManagerTaskRuntime().hooks
    assert hooks["openaibatch"].hook_class_name == "batch_ops.airflow.hooks.OpenAIBatchHook"
    assert hooks["openai_batch"].hook_class_name == "batch_ops.airflow.hooks.LegacyOpenAIBatchHook"  # old name
    # The form's extra fields: declared in the provider info (Airflow >= 3.2), or built by the hook with
    # Flask-AppBuilder's widgets (older Airflow, when the FAB provider is installed; else no form fields).
    import importlib.util

    from airflow import __version__ as airflow_version
    from packaging.version import Version

    if Version(airflow_version) >= Version("3.2") or importlib.util.find_spec("flask_appbuilder"):
        assert "extra__openaibatch__api_version" in manager.connection_form_widgets
        assert manager.field_behaviours["openaibatch"]["relabeling"]["password"] == "API Key"


def test_provider_info_is_valid_and_complete() -> None:
    """Airflow's own schema accepts it; the documentation link, a how-to per operator and the logo
    point at pages that exist; the connection type's name is the one the docs use."""
    import airflow
    import jsonschema
    from airflow.providers_manager import ProvidersManager

    from batch_ops.airflow.provider import DOCS_URL, HOWTO_PAGES

    root = Path(__file__).resolve().parents[2]
    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    (integration,) = info["integrations"]
    assert len(integration["how-to-guide"]) == 4 == len(HOWTO_PAGES)
    for path in [*integration["how-to-guide"], integration["logo"]]:
        assert path.startswith("/docs/") and (root / path.removeprefix("/")).is_file(), path
    # Airflow (>= 3.2) reads the documentation link from the distribution's Documentation project URL.
    data = ProvidersManager().providers["openai-batch-ops"].data
    assert (data.get("documentation-url") or DOCS_URL).strip() == DOCS_URL  # 3.1 keeps the space after the comma
    assert f"site_url: {DOCS_URL}" in (root / "mkdocs.yml").read_text()
    hook_name = info["connection-types"][0]["hook-name"]
    assert f"**{hook_name}**" in (root / "docs" / "airflow.md").read_text()
    for op in ("OpenAIBatchOperator", "OpenAIBatchSensor", "OpenAIBatchJobOperator", "OpenAIBatchOrphanSweepOperator"):
        assert any(op in (root / "docs" / "howto" / f"{page}.md").read_text() for page in HOWTO_PAGES), op


def test_airflow_providers_list_shows_batch_ops() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "providers", "list", "-o", "json"], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = re.search(r"^\[\s*\{", proc.stdout, re.M)  # older Airflow logs lines that start with "[" first
    assert start is not None, proc.stdout[-2000:]
    listing, _ = json.JSONDecoder().raw_decode(proc.stdout[start.start():])
    names = {p["package_name"] for p in listing}
    assert "openai-batch-ops" in names


def test_provider_info_loads_without_airflow() -> None:
    # The providers manager reads it while Airflow itself is starting; core never loads Airflow.
    code = "import sys, batch_ops, batch_ops.airflow.provider; assert 'airflow' not in sys.modules, 'loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_connection_without_host_reaches_its_providers_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty host is the provider's own API root; a bare host takes the provider's version path."""
    from types import SimpleNamespace

    from batch_ops.airflow.hooks import settings_from_connection
    from batch_ops.dialects import DIALECTS, Dialect

    class Vendor(Dialect):
        name = "vendortest"
        default_base_url = "https://api.vendor.test/v1beta"

    monkeypatch.setitem(DIALECTS, "vendortest", Vendor())

    def conn(host: str | None) -> SimpleNamespace:
        return SimpleNamespace(conn_id="v", conn_type="openaibatch", host=host, schema=None, port=None,
                               password="vk-1", extra='{"provider": "vendortest"}')

    assert settings_from_connection(conn(None)).base_url == "https://api.vendor.test/v1beta"
    assert settings_from_connection(conn("proxy.internal")).base_url == "https://proxy.internal/v1beta"
    openai = SimpleNamespace(conn_id="o", conn_type="openaibatch", host="", schema=None, port=None,
                             password="sk-1", extra=None)
    assert settings_from_connection(openai).base_url == "https://api.openai.com/v1"
