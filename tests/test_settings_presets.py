"""Retry presets live once, in the core, and only ever shorten what the settings say."""

from __future__ import annotations

import pytest

from batch_ops import ClientSettings, ConfigurationError
from batch_ops.settings import RETRY_PRESETS


@pytest.mark.parametrize("preset", sorted(RETRY_PRESETS))
def test_a_preset_caps_the_budgets_and_never_raises_them(preset: str) -> None:
    roomy = ClientSettings(api_key="k").with_retries(preset)
    for name, ceiling in RETRY_PRESETS[preset].items():
        assert getattr(roomy, name) == ceiling
    tight = {name: ceiling / 2 if isinstance(ceiling, float) else 0 for name, ceiling in RETRY_PRESETS[preset].items()}
    assert ClientSettings(api_key="k", **tight).with_retries(preset).model_dump(include=set(tight)) == tight


def test_an_unknown_preset_is_named() -> None:
    with pytest.raises(ConfigurationError, match="No retry preset 'patient'; the presets are interactive, probe"):
        ClientSettings().with_retries("patient")


@pytest.mark.parametrize("name", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1.0])
def test_a_timeout_that_would_fail_every_call_is_refused(name: str, value: float) -> None:
    # The Prefect block refused these; the core and the Airflow connection took them, and every call
    # then timed out at once. Now the settings refuse them, naming the field.
    with pytest.raises(ConfigurationError, match=f"{name}: Input should be greater than 0"):
        ClientSettings(**{name: value})
