"""``batch-ops serve`` is built from ``ServerOptions``: every field is a flag, round-trips through the
command line, shows its default and is documented; nothing is listed by hand a second time."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from batch_ops.server import ServerOptions
from batch_ops.server.options import build_command

ROOT = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(ServerOptions)


def _flag(f: dataclasses.Field[Any]) -> str:
    return f.metadata["flag"].option(f.name)


def _other_value(f: dataclasses.Field[Any], webhook_secret: str) -> Any:
    """A valid value of option ``f`` other than its default."""
    flag, default = f.metadata["flag"], f.default
    special = {"engine": "replay", "log_level": "info", "webhook_secret": webhook_secret,
               "upstream_url": "http://127.0.0.1:9/v1", "data_dir": "/tmp/elsewhere", "host": "0.0.0.0",
               "wire": "together", "invalid_kind": "mixed"}
    if f.name in special:
        return special[f.name]
    if flag.rate:
        return 0.1
    hint = typing.get_type_hints(ServerOptions)[f.name]
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    if kind is bool:
        return not default
    if typing.get_origin(kind) is tuple:
        return ("one.jsonl", "two.jsonl") if f.name == "replay_files" else ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    if kind is int:
        return (default or 0) + 1
    if kind is float:
        return (default or 0.0) + 0.5
    return f"sk-{f.name}" if flag.env else f"value-of-{f.name}"


def test_every_option_round_trips_through_the_command_line(webhook_secret: str) -> None:
    options = ServerOptions(**{f.name: _other_value(f, webhook_secret) for f in FIELDS})
    assert all(getattr(options, f.name) != f.default for f in FIELDS)

    argv, env = options.to_argv(), options.to_env()

    assert not [value for value in env.values() if value in " ".join(argv)], "a secret went on the command line"
    assert ServerOptions.from_argv(argv, environ=env) == options
    assert ServerOptions.from_argv([], environ={}) == ServerOptions()  # no flag: the dataclass's defaults


def test_every_option_is_a_flag_with_its_help_default_and_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        ServerOptions.from_argv(["--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    unfolded = " ".join(text.split())  # click wraps the help column
    for f in FIELDS:
        flag = f.metadata["flag"]
        assert _flag(f) in text, f.name
        assert " ".join(flag.help.split()) in unfolded, f.name
        if flag.env:
            assert f"[env var: {flag.env}]" in unfolded, f.name
        elif f.default not in (None, ()):
            shown_default = ("no-" if f.default is False else "") + _flag(f)[2:] if isinstance(f.default, bool) \
                else str(f.default)
            assert f"[default: {shown_default}]" in unfolded, f.name
    headings = [line for line in text.splitlines() if line and not line[0].isspace()]
    assert headings[1:] == ["Options:", "Network:", "Engine:", "Faults (RATE is a share from 0 to 1):",
                            "Webhooks (signed events when a batch ends, as OpenAI sends them):", "Logging:"]
    assert "--eval-sample" in text


@pytest.mark.parametrize(("argv", "error"), [
    (["--http-429", "2"], "Invalid value for '--http-429': 2 is not a share between 0 and 1"),
    (["--engine", "nope"], "Invalid value for '--engine': 'nope' is not one of 'echo', 'replay', 'upstream'"),
    (["--log-level", "loud"], "Invalid value for '--log-level'"),
    (["--port", "x"], "Invalid value for '--port'"),
    (["--colour"], "No such option"),
])
def test_a_refused_flag_says_why_in_clicks_words(argv: list[str], error: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        ServerOptions.from_argv(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: batch-ops serve [OPTIONS]\nTry 'batch-ops serve --help' for help.\n\nError: ")
    assert error in err


def test_the_docs_list_every_flag() -> None:
    page = (ROOT / "docs" / "server.md").read_text()
    missing = [_flag(f) for f in FIELDS if f"`{_flag(f)}" not in page]
    assert not missing, f"docs/server.md's options table lacks {missing}"


def test_build_parser_still_imports_with_a_warning() -> None:
    import batch_ops.server.options as options

    with pytest.warns(DeprecationWarning, match="build_command"):
        assert options.build_parser is build_command
