"""Options of the local Batch API server, shared by the CLI, ``create_app`` and ``serve_in_background``.

One frozen dataclass is the single list of knobs. Each field's metadata (:class:`Flag`) holds what
the command line needs beyond its name, type and default: the help text, the metavar, its section
of ``--help``, whether it is a rate or a secret; :func:`build_command` turns the fields into the
click command of ``batch-ops serve`` / ``python -m batch_ops.server``, and ``to_argv()`` turns
options back into flags so ``serve_in_background(**options)`` can start the same server in a
subprocess. Secrets (``api_key``, ``upstream_api_key``, ``webhook_secret``) never travel on the
command line, where ``ps`` would show them: they go through environment variables instead.

Examples:
    >>> opts = ServerOptions(port=9000, http_429=0.25, seed=7, api_key="sk-local")
    >>> opts.to_argv()
    ['--host', '127.0.0.1', '--port', '9000', '--data-dir', '.batch_ops', '--http-429', '0.25', '--seed', '7']
    >>> sorted(opts.to_env())
    ['BATCH_OPS_SERVER_API_KEY']
    >>> "sk-local" in repr(opts)
    False
    >>> ServerOptions.from_argv(["--engine", "replay", "--replay-file", "out.jsonl", "--gzip"]).replay_files
    ('out.jsonl',)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
from click.core import ParameterSource

from batch_ops.server.structured import INVALID_KINDS

__all__ = [
    "API_KEY_ENV",
    "ENGINES",
    "UPSTREAM_API_KEY_ENV",
    "WEBHOOK_SECRET_ENV",
    "Flag",
    "ServerOptions",
    "build_command",
]

ENGINES: tuple[str, ...] = ("echo", "replay", "upstream")
#: The OpenAI-shaped wires the server can answer in (``--wire``).
WIRES: tuple[str, ...] = ("openai", "together")
#: Environment variables that carry the secrets to the server process.
API_KEY_ENV = "BATCH_OPS_SERVER_API_KEY"
UPSTREAM_API_KEY_ENV = "BATCH_OPS_UPSTREAM_API_KEY"
#: The secret the server signs its webhooks with (``whsec_...``); the receiver reads the same
#: variable as the openai SDK does.
WEBHOOK_SECRET_ENV = "OPENAI_WEBHOOK_SECRET"

#: The sections of ``batch-ops serve --help``, in order, by the name a ``Flag`` gives.
SECTIONS: Mapping[str, str] = {
    "network": "Network",
    "engine": "Engine",
    "faults": "Faults (RATE is a share from 0 to 1)",
    "webhooks": "Webhooks (signed events when a batch ends, as OpenAI sends them)",
    "logging": "Logging",
}


@dataclass(frozen=True)
class Flag:
    """How a ``ServerOptions`` field appears on the command line (the field's ``metadata["flag"]``).

    The flag's name (``--data-dir`` for ``data_dir``), its type (``int``, ``float``, ``str``, a
    ``Literal`` of choices, ``bool`` as ``--x/--no-x``, a tuple as a repeatable flag) and its default
    come from the field itself.

    Attributes:
        help: the help text.
        section: its section of ``--help`` (a key of ``SECTIONS``).
        metavar: the value's placeholder, e.g. ``SECONDS``.
        name: the flag when it is not the field's name (``--replay-file`` for ``replay_files``).
        rate: a share from 0 to 1 (checked when parsed).
        env: a secret: the environment variable that carries it instead of a flag (``ps`` shows flags).
        choices: the allowed values of a ``str`` field (a ``Literal`` field has its own).
    """

    help: str
    section: str
    metavar: str | None = None
    name: str | None = None
    rate: bool = False
    env: str | None = None
    choices: tuple[str, ...] = ()

    def option(self, field_name: str) -> str:
        return self.name or "--" + field_name.replace("_", "-")


def _opt(default: Any, help: str, section: str, metavar: str | None = None, **flag: Any) -> Any:
    """A dataclass field with its ``Flag``; secrets stay out of ``repr``."""
    return field(default=default, repr=flag.get("env") is None,
                 metadata={"flag": Flag(help=help, section=section, metavar=metavar, **flag)})


@dataclass(frozen=True)
class ServerOptions:
    """Everything the local server can be told: where it listens, how it answers, which faults it injects.

    Attributes:
        host / port: where uvicorn listens (loopback by default: the server has no TLS).
        data_dir: SQLite database and file contents live here; reuse it to resume after a crash.
        engine: ``echo`` (deterministic answers), ``replay`` (answers from recorded output files)
            or ``upstream`` (forwards to an OpenAI-compatible server at ``upstream_url``).
        replay_files: recorded output/error files for the replay engine.
        wire: ``openai`` (OpenAI's and Azure OpenAI's objects) or ``together`` (Together AI's: see
            :mod:`batch_ops.server.together`).
        upstream_url / upstream_api_key / upstream_model / upstream_timeout / upstream_retries:
            the upstream engine's target; ``upstream_model`` replaces each request's ``model``.
        concurrency: batch requests in flight at once (shared by all batches).
        upload_max_bytes: the largest file ``POST /v1/files`` takes (OpenAI's limit for a batch input
            file: 200 MB); a bigger upload is refused as soon as that many bytes have arrived, chunked
            or not, and nothing of it stays on disk.
        max_running: batches processed at once; the others wait as ``validating`` (the real API
            queues batches too) and start in creation order as running ones end.
        api_key: when set, every /v1 call must carry it as a bearer token (or Azure ``api-key``).
        latency: seconds added before every /v1 HTTP response.
        request_latency: seconds each batch request takes to process.
        http_429 / http_500 / drop: share (0..1) of /v1 calls answered 429, 500 or dropped
            without any response.
        retry_after: seconds advertised by 429 answers (``Retry-After`` rounded up, ``retry-after-ms`` exact).
        fail_requests: share of batch requests written to the error file as a retryable ``server_error``.
        token_limit_failures: the first N batches created in this data dir fail with ``token_limit_exceeded``.
        create_failures: the first N batch creates of this data dir are answered 503 and create nothing
            (drills: a try that uploaded its input and died before its create landed).
        lose_creates: the first N batch creates of this data dir are handled (the batch exists), then
            the connection is closed before the answer: a create whose answer is lost, for any wire
            (``POST .../batches``, Gemini's ``:batchGenerateContent``).
        expire_after: completion window in seconds instead of 24 h (the batch then ends ``expired``).
        cancel_delay: seconds a cancelled batch stays ``cancelling``.
        seed: makes the fault choices and the output order repeatable.
        gzip: compress answers of 500 bytes or more (JSON and file contents) for clients that send
            ``Accept-Encoding: gzip``, as the real API's front end may: clients must decode them.
        access_log / log_level: uvicorn logging.
        webhook_urls: endpoints that receive a signed event (``batch.completed``, ``batch.failed``,
            ``batch.expired``, ``batch.cancelled``) for each batch that ends, as OpenAI sends them;
            delivered at least once from a durable outbox, retried with back-off for 72 hours.
        webhook_secret: the ``whsec_...`` secret the events are signed with (Standard Webhooks).
        webhook_drop: share (0..1) of events never delivered (a lost webhook).
        webhook_delay: seconds added before each delivery.

    Examples:
        >>> ServerOptions(engine="upstream")
        Traceback (most recent call last):
        ...
        ValueError: engine 'upstream' needs upstream_url (e.g. http://127.0.0.1:8000/v1)
    """

    host: str = _opt("127.0.0.1", "Interface to bind.", "network", "HOST")
    port: int = _opt(8765, "Port to bind; 0 picks a free one.", "network", "PORT")
    # (ruff knows ``field()`` only: ``_opt`` is one too, and its default a str.)
    data_dir: str | Path = _opt(".batch_ops", "SQLite database and file contents.", "network", "DIR")  # noqa: RUF009
    engine: Literal["echo", "replay", "upstream"] = _opt(
        "echo", "How batch requests are answered: echo, replay or upstream.", "engine", "ENGINE")
    replay_files: tuple[str, ...] = _opt(
        (), "A recorded output or error file for the replay engine; repeat for more.", "engine", "PATH",
        name="--replay-file")
    upstream_url: str | None = _opt(
        None, "OpenAI-compatible base URL for the upstream engine, e.g. https://api.openai.com/v1.", "engine", "URL")
    upstream_api_key: str | None = _opt(None, "Bearer token for the upstream.", "engine", "KEY",
                                        env=UPSTREAM_API_KEY_ENV)
    upstream_model: str | None = _opt(None, "Replace every request's model with this one upstream.", "engine", "MODEL")
    upstream_timeout: float = _opt(600.0, "Seconds per upstream request.", "engine", "SECONDS")
    upstream_retries: int = _opt(3, "Retries of a 429, 5xx or network failure upstream.", "engine", "N")
    concurrency: int = _opt(16, "Batch requests in flight at once.", "engine", "N")
    max_running: int = _opt(
        64, "Batches processed at once; the others wait as validating, as the real API queues them.", "engine", "N")
    upload_max_bytes: int = _opt(
        200 * 1024 * 1024, "Largest uploaded file (OpenAI's: 200 MB); a bigger one is refused as soon as that "
        "much has arrived.", "network", "BYTES")
    api_key: str | None = _opt(None, "Require this bearer token on /v1.", "network", "KEY", env=API_KEY_ENV)
    wire: str = _opt("openai", "Answer as this OpenAI-shaped API does: openai, or together (jobs with UUID ids and "
                     "upper-case statuses, a wrapped create answer, purpose batch-api, lines without method/url).",
                     "network", "NAME", choices=WIRES)
    latency: float = _opt(0.0, "Delay every /v1 HTTP response.", "faults", "SECONDS")
    request_latency: float = _opt(0.0, "Processing time of each batch request.", "faults", "SECONDS")
    http_429: float = _opt(0.0, "Answer this share of /v1 calls with 429.", "faults", "RATE", rate=True)
    http_500: float = _opt(0.0, "Answer this share of /v1 calls with 500.", "faults", "RATE", rate=True)
    drop: float = _opt(0.0, "Close this share of connections without a response.", "faults", "RATE", rate=True)
    retry_after: float = _opt(0.2, "Delay advertised by 429 answers.", "faults", "SECONDS")
    fail_requests: float = _opt(0.0, "Share of batch requests failed with server_error.", "faults", "RATE",
                                rate=True)
    invalid_share: float = _opt(0.0, "Share of structured answers (a request with a response schema or a forced "
                                "tool) made invalid, chosen by seed and custom_id.", "faults", "RATE", rate=True)
    invalid_kind: str = _opt("bad_json", "How --invalid-share spoils an answer: bad_json, wrong_type, truncated, "
                             "refusal or mixed.", "faults", "KIND", choices=INVALID_KINDS)
    invalid_rounds: int = _opt(1, "Times the same request is answered invalid (then valid: a repair round fixes it).",
                               "faults", "N")
    token_limit_failures: int = _opt(0, "The first N batches fail with token_limit_exceeded.", "faults", "N")
    create_failures: int = _opt(0, "Answer the first N batch creates with 503, creating nothing.", "faults", "N")
    lose_creates: int = _opt(0, "Handle the first N batch creates, then close the connection unanswered.", "faults",
                             "N")
    expire_after: float | None = _opt(None, "A completion window of this many seconds instead of 24h.", "faults",
                                      "SECONDS")
    cancel_delay: float = _opt(0.2, "How long a batch stays cancelling.", "faults", "SECONDS")
    seed: int | None = _opt(None, "Make fault choices and output order repeatable.", "faults", "N")
    gzip: bool = _opt(False, "Gzip answers for clients that accept it.", "faults")
    access_log: bool = _opt(False, "Log every request.", "logging")
    log_level: str = _opt("warning", "critical, error, warning, info or debug.", "logging", "LEVEL",
                          choices=("critical", "error", "warning", "info", "debug"))
    webhook_urls: tuple[str, ...] = _opt(
        (), "Send each batch.completed, .failed, .expired and .cancelled event here; repeat for more. Delivered "
        "at least once, retried with back-off for 72 hours.", "webhooks", "URL", name="--webhook-url")
    webhook_secret: str | None = _opt(None, "The whsec_... secret that signs them.", "webhooks", "SECRET",
                                      env=WEBHOOK_SECRET_ENV)
    webhook_drop: float = _opt(0.0, "Never deliver this share of events.", "webhooks", "RATE", rate=True)
    webhook_delay: float = _opt(0.0, "Delay each delivery.", "webhooks", "SECONDS")

    def __post_init__(self) -> None:
        if self.wire not in WIRES:
            raise ValueError(f"wire {self.wire!r} is not one of {', '.join(WIRES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "upstream" and not self.upstream_url:
            raise ValueError("engine 'upstream' needs upstream_url (e.g. http://127.0.0.1:8000/v1)")
        if self.engine == "replay" and not self.replay_files:
            raise ValueError("engine 'replay' needs replay_files (a recorded output file, optionally its error file)")
        for name in ("replay_files", "webhook_urls"):
            value = getattr(self, name)
            object.__setattr__(self, name, (str(value),) if isinstance(value, (str, Path)) else tuple(map(str, value)))
        if self.webhook_urls:
            if not self.webhook_secret:
                raise ValueError(f"webhook_urls need webhook_secret (a whsec_... secret; or set {WEBHOOK_SECRET_ENV})")
            from batch_ops.server.webhooks import check_secret

            check_secret(self.webhook_secret)
        for name in _rates():
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} must be a share between 0 and 1")
        if self.http_429 + self.http_500 + self.drop > 1.0:
            raise ValueError("http_429 + http_500 + drop must not exceed 1 (they share one draw per call)")
        for name in ("latency", "request_latency", "retry_after", "cancel_delay", "upstream_timeout", "webhook_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.expire_after is not None and self.expire_after <= 0:
            raise ValueError("expire_after must be positive seconds")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_running < 1:
            raise ValueError("max_running must be at least 1")
        if self.upload_max_bytes < 1:
            raise ValueError("upload_max_bytes must be at least 1")
        if self.invalid_kind not in INVALID_KINDS:
            raise ValueError(f"invalid_kind {self.invalid_kind!r} is not one of {', '.join(INVALID_KINDS)}")
        if min(self.token_limit_failures, self.create_failures, self.upstream_retries, self.invalid_rounds) < 0:
            raise ValueError("token_limit_failures, create_failures and upstream_retries must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def replace(self, **changes: Any) -> ServerOptions:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """Command-line flags reproducing these options, secrets excluded (see ``to_env``)."""
        argv = ["--host", self.host, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        defaults = ServerOptions()
        for f in dataclasses.fields(self):
            flag: Flag = f.metadata["flag"]
            value = getattr(self, f.name)
            if f.name in ("host", "port", "data_dir") or flag.env or value == getattr(defaults, f.name):
                continue
            option = flag.option(f.name)
            if isinstance(value, tuple):
                for item in value:
                    argv += [option, item]
            elif isinstance(value, bool):
                argv.append(option if value else "--no-" + option[2:])
            else:
                argv += [option, str(value)]
        return argv

    def to_env(self) -> dict[str, str]:
        """Environment variables carrying the secrets to a server process."""
        return {env: getattr(self, name) for name, env in _secrets().items() if getattr(self, name)}

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> ServerOptions:
        """Parse command-line flags; secrets missing from the flags are read from ``environ`` (``os.environ``).

        Raises:
            SystemExit: ``--help`` (status 0, the help printed) or a flag the command refuses (status
                2, its usage and the error printed on stderr), as a command line does.
            ValueError: options that do not go together (``ServerOptions`` says which).
        """
        command = build_command()
        try:
            ctx = command.make_context(command.name, list(sys.argv[1:] if argv is None else argv))
        except click.exceptions.Exit as exc:  # --help, already printed
            raise SystemExit(exc.exit_code) from None
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        # Only the flags given: the rest keep the dataclass's defaults (and the secrets may come from
        # the environment).
        values = {name: value for name, value in ctx.params.items()
                  if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
        if values.pop("eval_sample", False):
            from batch_ops.evals.dataset import SAMPLE_RUN

            if values.get("engine", "replay") != "replay":
                raise ValueError(f"--eval-sample replays a recorded run: it cannot go with --engine {values['engine']}")
            values["engine"] = "replay"
            values["replay_files"] = (str(SAMPLE_RUN), *values.get("replay_files", ()))
        env = os.environ if environ is None else environ
        for name, var in _secrets().items():
            if name not in values and env.get(var):
                values[name] = env[var]
        return cls(**values)


def _flags() -> dict[str, Flag]:
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(ServerOptions)}


def _rates() -> tuple[str, ...]:
    """The options that are a share from 0 to 1."""
    return tuple(name for name, flag in _flags().items() if flag.rate)


def _secrets() -> dict[str, str]:
    """The secret options and the environment variables that carry them."""
    return {name: flag.env for name, flag in _flags().items() if flag.env}


class _Rate(click.ParamType):
    """A share from 0 to 1."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            share = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0.0 <= share <= 1.0:
            self.fail(f"{value} is not a share between 0 and 1", param, ctx)
        return share


class _Option(click.Option):
    """A click option that knows its section of ``--help``."""

    def __init__(self, *args: Any, section: str = "Options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class _Command(click.Command):
    """A click command whose ``--help`` lists its options by section, in one column layout."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Options"), []).append(record)
        # click sizes the first column per list: one width for all keeps the sections aligned (a
        # longer flag goes on a line of its own, as in click).
        width = max(len(first) for rows in sections.values() for first, _ in rows if len(first) <= _FIRST_COLUMN)
        for title in ("Options", *SECTIONS.values()):
            rows = sections.get(title)
            if rows:
                with formatter.section(title):
                    own = min(max(len(first) for first, _ in rows), width)
                    formatter.write_dl(rows, col_max=width, col_spacing=2 + width - own)


#: The widest flag column of ``--help`` (click's is 30): longer flags go on a line of their own.
_FIRST_COLUMN = 28


def _option(name: str, flag: Flag, annotation: Any, default: Any) -> click.Option:
    """The click option of one ``ServerOptions`` field."""
    kind = annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kinds = [t for t in typing.get_args(kind) if t is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else str  # ``str | Path`` is typed as a str
    option = flag.option(name)
    help_text = flag.help if flag.env is None else f"{flag.help} Prefer the environment variable: flags show in ps."
    common: dict[str, Any] = {"help": help_text, "section": SECTIONS[flag.section], "metavar": flag.metavar,
                              "envvar": flag.env, "show_envvar": flag.env is not None}
    if kind is bool:
        return _Option([f"{option}/--no-{option[2:]}", name], default=default, show_default=True, **common)
    if typing.get_origin(kind) is tuple:
        return _Option([option, name], multiple=True, **common)
    if typing.get_origin(kind) is Literal or flag.choices:
        choices = flag.choices or typing.get_args(kind)
        click_type: click.ParamType = click.Choice(choices)
    elif flag.rate:
        click_type = _Rate()
    else:
        click_type = click.INT if kind is int else click.FLOAT if kind is float else click.STRING
    return _Option([option, name], type=click_type, default=default, show_default=default is not None, **common)


def build_command(prog: str = "batch-ops serve") -> click.Command:
    """The click command of ``batch-ops serve`` / ``python -m batch_ops.server``, one option per
    ``ServerOptions`` field (its ``Flag`` metadata), plus ``--eval-sample``.

    Its ``--help`` reads like the other ``batch-ops`` commands' (they are typer, on click).

    Examples:
        >>> print(build_command().get_help(click.Context(build_command(), info_name="batch-ops serve")))
        ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        Usage: batch-ops serve [OPTIONS]
        ...
        Network:
          --host HOST                   Interface to bind.  [default: 127.0.0.1]
        ...
    """
    hints = typing.get_type_hints(ServerOptions)
    params: list[click.Parameter] = []
    for f in dataclasses.fields(ServerOptions):
        params.append(_option(f.name, f.metadata["flag"], hints[f.name], f.default))
        if f.name == "replay_files":
            # Not an option of the server itself: a shorthand for the replay engine and a shipped run.
            params.append(_Option(
                ["--eval-sample"], is_flag=True, default=False, section=SECTIONS["engine"],
                help="Replay the recorded answers to the shipped eval set (what `make demo` serves), so the eval "
                "pipelines score real answers, not the echo engine's repeated prompts."))
    return _Command(
        name=prog,
        params=params,
        help="Run the local OpenAI-compatible Batch API server (files and batches; SQLite and files on disk). "
        "Ctrl-C or SIGTERM stops it.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def __getattr__(name: str) -> Any:
    if name == "build_parser":  # argparse until 0.3: the command is click's now
        warnings.warn("batch_ops.server.options.build_parser is deprecated: use build_command (a click command)",
                      DeprecationWarning, stacklevel=2)
        return build_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
