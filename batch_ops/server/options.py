"""Options of the local Batch API server, shared by the CLI, ``create_app`` and ``serve_in_background``.

One frozen dataclass is the single list of knobs: the argparse parser is built from it, and
``to_argv()`` turns it back into flags so ``serve_in_background(**options)`` can start the same
server in a subprocess. Secrets (``api_key``, ``upstream_api_key``) never travel on the command
line, where ``ps`` would show them: they go through environment variables instead.

Examples:
    >>> opts = ServerOptions(port=9000, http_429=0.25, seed=7, api_key="sk-local")
    >>> opts.to_argv()
    ['--host', '127.0.0.1', '--port', '9000', '--data-dir', '.batch_ops', '--http-429', '0.25', '--seed', '7']
    >>> sorted(opts.to_env())
    ['BATCH_OPS_SERVER_API_KEY']
    >>> "sk-local" in repr(opts)
    False
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batch_ops.server._help import ClickStyleParser

__all__ = ["API_KEY_ENV", "ENGINES", "UPSTREAM_API_KEY_ENV", "WEBHOOK_SECRET_ENV", "ServerOptions", "build_parser"]

ENGINES: tuple[str, ...] = ("echo", "replay", "upstream")
#: Environment variables that carry the secrets to the server process.
API_KEY_ENV = "BATCH_OPS_SERVER_API_KEY"
UPSTREAM_API_KEY_ENV = "BATCH_OPS_UPSTREAM_API_KEY"
#: The secret the server signs its webhooks with (``whsec_...``); the receiver reads the same
#: variable as the openai SDK does.
WEBHOOK_SECRET_ENV = "OPENAI_WEBHOOK_SECRET"

_RATES = ("http_429", "http_500", "drop", "fail_requests", "webhook_drop")
_SECRETS = {"api_key": API_KEY_ENV, "upstream_api_key": UPSTREAM_API_KEY_ENV, "webhook_secret": WEBHOOK_SECRET_ENV}


@dataclass(frozen=True)
class ServerOptions:
    """Everything the local server can be told: where it listens, how it answers, which faults it injects.

    Attributes:
        host / port: where uvicorn listens (loopback by default: the server has no TLS).
        data_dir: SQLite database and file contents live here; reuse it to resume after a crash.
        engine: ``echo`` (deterministic answers), ``replay`` (answers from recorded output files)
            or ``upstream`` (forwards to an OpenAI-compatible server at ``upstream_url``).
        replay_files: recorded output/error files for the replay engine.
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

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: str | Path = ".batch_ops"
    engine: Literal["echo", "replay", "upstream"] = "echo"
    replay_files: tuple[str, ...] = ()
    upstream_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_model: str | None = None
    upstream_timeout: float = 600.0
    upstream_retries: int = 3
    concurrency: int = 16
    max_running: int = 64
    upload_max_bytes: int = 200 * 1024 * 1024
    api_key: str | None = field(default=None, repr=False)
    latency: float = 0.0
    request_latency: float = 0.0
    http_429: float = 0.0
    http_500: float = 0.0
    drop: float = 0.0
    retry_after: float = 0.2
    fail_requests: float = 0.0
    token_limit_failures: int = 0
    create_failures: int = 0
    expire_after: float | None = None
    cancel_delay: float = 0.2
    seed: int | None = None
    gzip: bool = False
    access_log: bool = False
    log_level: str = "warning"
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_drop: float = 0.0
    webhook_delay: float = 0.0

    def __post_init__(self) -> None:
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
        for name in _RATES:
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
        if min(self.token_limit_failures, self.create_failures, self.upstream_retries) < 0:
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
            if f.name in ("host", "port", "data_dir") or f.name in _SECRETS:
                continue
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name in ("replay_files", "webhook_urls"):
                for item in value:
                    argv += ["--" + f.name.removesuffix("s").replace("_", "-"), item]
            elif isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
        return argv

    def to_env(self) -> dict[str, str]:
        """Environment variables carrying the secrets to a server process."""
        return {env: getattr(self, name) for name, env in _SECRETS.items() if getattr(self, name)}

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> ServerOptions:
        """Parse command-line flags; secrets missing from the flags are read from the environment."""
        ns = build_parser().parse_args(argv)
        env = os.environ if environ is None else environ
        values = {k: v for k, v in vars(ns).items() if v is not None}
        if values.pop("eval_sample", False):
            from batch_ops.evals.dataset import SAMPLE_RUN

            if values.get("engine", "replay") != "replay":
                raise ValueError(f"--eval-sample replays a recorded run: it cannot go with --engine {values['engine']}")
            values["engine"] = "replay"
            values["replay_files"] = [str(SAMPLE_RUN), *values.get("replay_files", [])]
        for name in ("replay_files", "webhook_urls"):
            if name in values:
                values[name] = tuple(values[name])
        for name, var in _SECRETS.items():
            if name not in values and env.get(var):
                values[name] = env[var]
        return cls(**values)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def build_parser(prog: str = "batch-ops serve") -> argparse.ArgumentParser:
    """The argparse parser of ``batch-ops serve`` / ``python -m batch_ops.server``.

    Every flag defaults to ``None`` so that only the flags given override ``ServerOptions``. Its
    help reads like the other ``batch-ops`` commands' (``ClickStyleParser``).
    """
    p = ClickStyleParser(
        prog=prog,
        description="Run the local OpenAI-compatible Batch API server (files and batches; SQLite and "
        "files on disk). Ctrl-C or SIGTERM stops it.",
        argument_default=None,
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", metavar="HOST", help="Interface to bind.  [default: 127.0.0.1]")
    net.add_argument("--port", type=int, metavar="PORT", help="Port to bind; 0 picks a free one.  [default: 8765]")
    net.add_argument("--data-dir", metavar="DIR", help="SQLite database and file contents.  [default: .batch_ops]")
    net.add_argument(
        "--api-key", metavar="KEY",
        help=f"Require this bearer token on /v1. Prefer the variable {API_KEY_ENV}: flags show in ps.",
    )
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", choices=ENGINES, metavar="ENGINE",
                     help="How batch requests are answered: echo, replay or upstream.  [default: echo]")
    eng.add_argument("--replay-file", dest="replay_files", action="append", metavar="PATH",
                     help="A recorded output or error file for the replay engine; repeat for more.")
    eng.add_argument("--eval-sample", action="store_true", default=None,
                     help="Replay the recorded answers to the shipped eval set (what `make demo` serves), so the "
                     "eval pipelines score real answers, not the echo engine's repeated prompts.")
    eng.add_argument("--upstream-url", metavar="URL", help="OpenAI-compatible base URL for the upstream engine, "
                     "e.g. https://api.openai.com/v1.")
    eng.add_argument("--upstream-api-key", metavar="KEY",
                     help=f"Bearer token for the upstream. Prefer the variable {UPSTREAM_API_KEY_ENV}.")
    eng.add_argument("--upstream-model", metavar="MODEL", help="Replace every request's model with this one upstream.")
    eng.add_argument("--upstream-timeout", type=float, metavar="SECONDS",
                     help="Seconds per upstream request.  [default: 600]")
    eng.add_argument("--upstream-retries", type=int, metavar="N",
                     help="Retries of a 429, 5xx or network failure upstream.  [default: 3]")
    eng.add_argument("--concurrency", type=int, metavar="N", help="Batch requests in flight at once.  [default: 16]")
    net.add_argument("--upload-max-bytes", type=int, metavar="BYTES",
                     help="Largest uploaded file; a bigger one is refused as soon as that much has arrived.  "
                     "[default: 209715200, OpenAI's 200 MB]")
    eng.add_argument("--max-running", type=int, metavar="N",
                     help="Batches processed at once; the others wait as validating, as the real API queues them.  "
                     "[default: 64]")
    flt = p.add_argument_group("faults (RATE is a share from 0 to 1)")
    flt.add_argument("--latency", type=float, metavar="SECONDS", help="Delay every /v1 HTTP response.")
    flt.add_argument("--request-latency", type=float, metavar="SECONDS", help="Processing time of each batch request.")
    flt.add_argument("--http-429", type=_share, metavar="RATE", help="Answer this share of /v1 calls with 429.")
    flt.add_argument("--http-500", type=_share, metavar="RATE", help="Answer this share of /v1 calls with 500.")
    flt.add_argument("--drop", type=_share, metavar="RATE", help="Close this share of connections without a response.")
    flt.add_argument("--retry-after", type=float, metavar="SECONDS",
                     help="Delay advertised by 429 answers.  [default: 0.2]")
    flt.add_argument("--fail-requests", type=_share, metavar="RATE",
                     help="Share of batch requests failed with server_error.")
    flt.add_argument("--token-limit-failures", type=int, metavar="N",
                     help="The first N batches fail with token_limit_exceeded.")
    flt.add_argument("--create-failures", type=int, metavar="N",
                     help="Answer the first N batch creates with 503, creating nothing.")
    flt.add_argument("--expire-after", type=float, metavar="SECONDS",
                     help="A completion window of this many seconds instead of 24h.")
    flt.add_argument("--cancel-delay", type=float, metavar="SECONDS",
                     help="How long a batch stays cancelling.  [default: 0.2]")
    flt.add_argument("--seed", type=int, metavar="N", help="Make fault choices and output order repeatable.")
    flt.add_argument("--gzip", action=argparse.BooleanOptionalAction,
                     help="Gzip answers for clients that accept it.  [default: no-gzip]")
    hook = p.add_argument_group("webhooks (signed events when a batch ends, as OpenAI sends them)")
    hook.add_argument("--webhook-url", dest="webhook_urls", action="append", metavar="URL",
                      help="Send each batch.completed, .failed, .expired and .cancelled event here; repeat for "
                      "more. Delivered at least once, retried with back-off for 72 hours.")
    hook.add_argument("--webhook-secret", metavar="SECRET",
                      help=f"The whsec_... secret that signs them. Prefer the variable {WEBHOOK_SECRET_ENV}.")
    hook.add_argument("--webhook-drop", type=_share, metavar="RATE", help="Never deliver this share of events.")
    hook.add_argument("--webhook-delay", type=float, metavar="SECONDS", help="Delay each delivery.")
    log = p.add_argument_group("logging")
    log.add_argument("--access-log", action=argparse.BooleanOptionalAction,
                     help="Log every request.  [default: no-access-log]")
    log.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), metavar="LEVEL",
                     help="critical, error, warning, info or debug.  [default: warning]")
    return p
