"""The ``openaibatch`` connection is ``ClientSettings`` as an Airflow connection: every field is the
host, the password or an extra key, every extra is in the connection form, secrets are masked.

A setting added to ``ClientSettings`` and forgotten by the connection or its form fails here, named.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from batch_ops import ClientSettings
from batch_ops.airflow import OpenAIBatchHook
from batch_ops.airflow.provider import get_provider_info

#: The standard connection fields that hold a setting; every other setting is an extra key.
STANDARD = {"base_url": "host", "api_key": "password"}


def test_every_client_setting_goes_through_a_connection(
    settings_samples: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = settings_samples.samples()
    extra = {name: value for name, value in expected.items() if name not in STANDARD}
    monkeypatch.setenv("AIRFLOW_CONN_EVERY_SETTING", json.dumps({
        "conn_type": "openaibatch", "host": expected["base_url"], "password": expected["api_key"], "extra": extra}))

    settings = OpenAIBatchHook(conn_id="every_setting").get_settings()

    lost = settings_samples.lost(settings, expected)
    assert not lost, f"ClientSettings fields an openaibatch connection does not carry: {sorted(lost)}"


def test_every_extra_is_in_the_connection_form_and_secrets_are_masked(settings_samples: Any) -> None:
    """What Airflow's providers manager registers (the declarative form, Airflow >= 3.2)."""
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    extras = [name for name in ClientSettings.model_fields if name not in STANDARD]
    missing = [name for name in extras if f"extra__openaibatch__{name}" not in widgets]
    assert not missing, f"ClientSettings fields missing from the openaibatch connection form: {missing}"
    for name in settings_samples.secret_fields():
        if name in STANDARD:
            assert STANDARD[name] == "password", name  # Airflow masks the password
        else:
            assert widgets[f"extra__openaibatch__{name}"].is_sensitive, f"{name} is shown in the form"
    behaviour = ProvidersManager().field_behaviours["openaibatch"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key"}


def test_the_older_form_of_the_hook_matches_the_declarative_one() -> None:
    """Airflow 3.0/3.1 build the form from ``get_connection_form_widgets`` (WTForms, without FAB
    through the stand-ins Airflow itself uses for that); it must offer the same fields."""
    script = textwrap.dedent(
        """
        import json, sys
        from unittest import mock
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService as H
        for name in ("wtforms", "wtforms.validators", "flask_babel", "flask_appbuilder",
                     "flask_appbuilder.fieldwidgets"):
            sys.modules[name] = mock.MagicMock()
        with mock.patch("wtforms.StringField", H.MockStringField), \\
                mock.patch("wtforms.IntegerField", H.MockIntegerField), \\
                mock.patch("wtforms.PasswordField", H.MockPasswordField), \\
                mock.patch("flask_babel.lazy_gettext", lambda text: text), \\
                mock.patch("flask_appbuilder.fieldwidgets.BS3TextFieldWidget", H.MockAnyWidget), \\
                mock.patch("flask_appbuilder.fieldwidgets.BS3PasswordFieldWidget", H.MockAnyWidget), \\
                mock.patch("wtforms.validators.Optional", H.MockOptional), \\
                mock.patch("wtforms.validators.any_of", H.MockEnum):
            from batch_ops.airflow import OpenAIBatchHook
            widgets = OpenAIBatchHook.get_connection_form_widgets()
        print(json.dumps({name: w.param.dump() for name, w in widgets.items()}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    older = json.loads(done.stdout.splitlines()[-1])
    declared = get_provider_info()["connection-types"][0]["conn-fields"]
    assert list(older) == list(declared)
    for name, field in declared.items():
        schema = older[name]["schema"]
        assert (schema["title"], older[name]["description"]) == (field["label"], field["description"]), name
        assert schema.get("format") == field["schema"].get("format"), name
        # Airflow's older form knows no "number": a float is typed in a text field.
        assert schema["type"][0] == {"number": "string"}.get(field["schema"]["type"][0], field["schema"]["type"][0])
    assert OpenAIBatchHook.get_ui_field_behaviour()["relabeling"] == {"host": "Base URL", "password": "API Key"}
