"""The typer app behind ``batch-ops``: one function per command, errors mapped to exit codes.

Loaded only by :func:`batch_ops.cli.main` (never by ``import batch_ops``), because it needs the
``cli`` extra (typer, rich). The exit codes and the ``--json`` contract are described in
:mod:`batch_ops.cli`.

Examples:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(app, ["validate", "--help"]).exit_code
    0
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from batch_ops import ResponseSchema, SubmitSpec, storage
from batch_ops.chain import Attempt, AttemptChain
from batch_ops.cli import EXIT_CODES, EXIT_CONFIG, EXIT_FAILED, exit_code_for, render
from batch_ops.client import BatchClient
from batch_ops.dialects import Dialect, dialect_named
from batch_ops.errors import (
    APIConnectionError,
    BatchOpsError,
    BatchTimeoutError,
    ConfigurationError,
    InputValidationError,
    Problem,
)
from batch_ops.jsonl import check_file, shard_file
from batch_ops.models import Batch, BatchStatus
from batch_ops.orphans import DEFAULT_LOOKBACK, DEFAULT_MIN_AGE, sweep
from batch_ops.outcomes import DEFAULT_WAIT_TIMEOUT, OutcomePolicy, describe
from batch_ops.settings import ClientSettings
from batch_ops.storage import atomic_file, check_output
from batch_ops.structured import structured_summary

__all__ = ["app"]


def _exit_code_help() -> str:
    rows = "\n".join(f"{code:<4} {text}" for code, text in EXIT_CODES.items())
    # "\b" tells click to keep this paragraph's line breaks instead of re-wrapping it.
    return f"Exit codes:\n\n\b\n{rows}"


class _Command(typer.core.TyperCommand):
    """A command whose arguments read as click writes them, like every option here and like
    ``batch-ops serve``: ``INPUT`` in the usage line (typer 0.29 writes ``{INPUT}`` for a
    required argument) and no type tag after the name under Arguments (``INPUT <str>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument":
                # The metavar already says what to pass; typer's type tag would only add "<str>".
                setattr(param, "display_type_rich", lambda ctx: None)  # noqa: B010 (overrides a method)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    name="batch-ops",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help text: keeps the exit-code table's line breaks as written
    # Never print local variables in a traceback: they would include the API key.
    pretty_exceptions_show_locals=False,
    help="batch_ops: run the OpenAI Batch API from a shell: submit, watch, list, cancel, collect.",
    epilog=_exit_code_help(),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_line() -> str:
    """What ``batch-ops --version`` prints: the command, its version, and the distribution it comes from."""
    from batch_ops import __version__

    return f"batch-ops {__version__} (openai-batch-ops, Python {sys.version.split()[0]})"


def _show_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", "-V", is_eager=True, callback=_show_version,
                           help="Print the version and exit.")
    ] = False,
    provider: Annotated[
        str | None,
        typer.Option("--provider", envvar="BATCH_OPS_PROVIDER", show_default=False, metavar="NAME",
                     help="The batch API spoken: openai (default), azure, or another of batch_ops.dialects. "
                          "It decides which environment variables hold the key and the API root."),
    ] = None,
) -> None:
    """batch_ops: run LLM batch APIs from a shell: submit, watch, list, cancel, collect.

    API commands take --base-url, --api-key (env: the provider's own, e.g. OPENAI_API_KEY),
    --max-retries and --json (one JSON object on stdout, nothing else). Put --provider before
    the command: batch-ops --provider anthropic submit requests.jsonl.
    """
    ctx.obj = {"provider": provider}


# ---------------------------------------------------------------------------------------------
# Options shared by the API commands
# ---------------------------------------------------------------------------------------------

# No envvar on these two: which variable holds the key and the root depends on the provider
# (ClientSettings.from_env reads the provider's own), and typer cannot know it.
BaseUrlOption = Annotated[
    str | None,
    typer.Option("--base-url", show_default=False, metavar="URL",
                 help="API root including its version (env OPENAI_BASE_URL, or the provider's) [default: the "
                      "provider's, e.g. https://api.openai.com/v1; local: http://127.0.0.1:8765/v1]."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", show_default=False, metavar="KEY",
                 help="API key (env OPENAI_API_KEY, or the provider's, e.g. ANTHROPIC_API_KEY; prefer the "
                      "environment variable: flags show up in `ps` and shell history)."),
]
MaxRetriesOption = Annotated[
    int | None,
    typer.Option("--max-retries", min=0, max=100, show_default=False, metavar="N",
                 help="Retries of a failed call (429, 5xx, network) [default: 6]; 0 fails at once."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else (progress off).")
]
PollIntervalOption = Annotated[
    float, typer.Option("--poll-interval", min=0.01, metavar="SECONDS", help="Seconds between polls while waiting.")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.01, metavar="SECONDS",
                 help="Give up waiting after this many seconds (exit 5; the batch keeps running unless "
                      "--cancel-on-timeout). Default: 25 h, the 24 h completion window and an hour to finalize."),
]
CancelOnTimeoutOption = Annotated[
    bool, typer.Option("--cancel-on-timeout", help="With --wait: cancel the batch when --timeout runs out.")
]


class _Out:
    """Where a command's output goes: stdout for its result, stderr for everything else."""

    def __init__(self, *, json: bool) -> None:
        self.json = json
        self.secret: str | None = None  # set by _client; scrubbed from every message
        self.base_url: str | None = None  # named in connection errors, which otherwise show only the path
        # markup=False: ids, metadata and server messages are data, never rich markup.
        # Piped output gets a wide console so table rows are not wrapped for grep and friends.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        self.stdout = Console(markup=False, highlight=False, width=width)
        self.stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

    def result(self, data: dict[str, Any], human: RenderableType | None = None) -> None:
        """The command's result: ``data`` as one JSON line with ``--json``, else ``human``."""
        if self.json:
            sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()
        elif human is not None:
            self.stdout.print(human)

    def note(self, message: str, *, style: str | None = None) -> None:
        """A remark for people (stderr); silent with ``--json``."""
        if not self.json:
            self.stderr.print(self._scrub(message), style=style)

    def fail(
        self,
        message: str,
        code: int,
        *,
        kind: str = "error",
        batch: Batch | None = None,
        extra: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Report a failure on one line (stderr; plus an error object on stdout with --json) and exit."""
        text = self._scrub(message)
        first, _, rest = text.partition("\n")
        self.stderr.print(f"error: {first}", style="red", soft_wrap=True)
        if rest:  # validation errors list their problems on the lines below
            self.stderr.print(rest, soft_wrap=True)
        if self.json:
            error: dict[str, Any] = {"type": kind, "message": text, "exit_code": code}
            if batch is not None:
                error["batch"] = batch.model_dump(mode="json")
            error.update(extra or {})
            sys.stdout.write(json.dumps({"error": error}, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        raise typer.Exit(code)

    def _scrub(self, text: str) -> str:
        # Belt and braces: no message we print should contain the key, but never let one through.
        # (Short dummy keys such as "local" are not secrets, and scrubbing them would mangle words.)
        if self.secret and len(self.secret) >= 8:
            return text.replace(self.secret, "***")
        return text


def _client(out: _Out, ctx: typer.Context, base_url: str | None, api_key: str | None, max_retries: int | None, *,
            fail_fast: bool = False) -> BatchClient:
    """A client from the flags and the environment (flags win); settings errors exit 4.

    ``fail_fast``: an interactive command answering a person at a prompt; unless ``--max-retries``
    says otherwise, it retries within the core's ``interactive`` preset (``RETRY_PRESETS``: 8 s).
    """
    provider = (ctx.find_root().obj or {}).get("provider")  # the root's --provider
    settings = ClientSettings.from_env(api_key=api_key, base_url=base_url, max_retries=max_retries,
                                       provider=provider)
    if fail_fast and max_retries is None:
        settings = settings.with_retries("interactive")
    if settings.api_key is None:
        # The core's message speaks Python (api_key=...); a shell user needs the flag.
        dialect = settings.dialect
        raise ConfigurationError(
            f"No API key for {dialect.title}: set {' or '.join(dialect.key_env)} or pass --api-key. "
            "The local server (batch-ops serve) takes any key unless started with --api-key."
        )
    out.base_url = settings.base_url
    out.secret = settings.api_key.get_secret_value()
    return BatchClient(settings=settings)


def _dialect(ctx: typer.Context) -> Dialect:
    """The batch API of ``--provider`` (env ``BATCH_OPS_PROVIDER``; unset: Azure OpenAI with an api-version,
    else OpenAI): offline commands check request files by its rules and limits; no key is needed."""
    provider = (ctx.find_root().obj or {}).get("provider")
    if provider:
        try:
            return dialect_named(provider)
        except ValueError as exc:
            raise ConfigurationError(f"--provider: {exc}") from None
    return ClientSettings.from_env().dialect


@contextlib.contextmanager
def _handled(out: _Out, *, batch_id: str | None = None) -> Iterator[None]:
    """Turn the failures a command can meet into one line on stderr and an exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        keeps = f"; batch {batch_id} keeps running (batch-ops status {batch_id})" if batch_id else ""
        out.fail(f"interrupted{keeps}", exit_code_for(exc), kind="KeyboardInterrupt")
    except BatchOpsError as exc:
        message = str(exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, InputValidationError):
            extra["problems"] = [render.problem_json(p) for p in exc.problems]
        elif isinstance(exc, APIConnectionError) and out.base_url:
            message += f" (base URL {out.base_url}: is the server up and the URL right?)"
        elif isinstance(exc, BatchTimeoutError) and batch_id:
            message += f" Resume: batch-ops status {batch_id} --wait"
        out.fail(message, exit_code_for(exc), kind=type(exc).__name__, batch=getattr(exc, "batch", None),
                 extra=extra)
    except OSError as exc:
        out.fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_FAILED,
                 kind=type(exc).__name__)


class _Watch:
    """The ``on_poll`` callback of a wait: a progress bar on a terminal, a line per change elsewhere."""

    def __init__(self, out: _Out, batch_id: str) -> None:
        self.out = out
        self.batch_id = batch_id
        self.progress: Progress | None = None
        self.task: Any = None
        self.last = ""

    def __enter__(self) -> _Watch:
        if not self.out.json and self.out.stderr.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(),
                console=self.out.stderr,
            )
            self.progress.start()
            self.task = self.progress.add_task(f"{self.batch_id} waiting", total=None, failed="")
        return self

    def __call__(self, batch: Batch) -> None:
        counts = batch.request_counts
        if self.progress is not None:
            self.progress.update(
                self.task,
                description=f"{batch.id} {batch.status.value}",
                total=counts.total or None,  # None: an indeterminate bar while validating
                completed=counts.done,
                failed=f"{counts.failed} failed" if counts.failed else "",
            )
            return
        line = describe(batch)
        if line != self.last:  # logs get one line per change, not one per poll
            self.last = line
            self.out.note(f"{batch.id}: {line}")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _wait(client: BatchClient, out: _Out, batch_id: str, *, poll_interval: float, timeout: float,
          cancel_on_timeout: bool = False) -> Batch:
    with _Watch(out, batch_id) as watch:
        return client.batches.wait(batch_id, poll_interval=poll_interval, timeout=timeout, on_poll=watch,
                                   cancel_on_timeout=cancel_on_timeout)


def _batch_json(batch: Batch) -> dict[str, Any]:
    return batch.model_dump(mode="json")


def _print_problems(out: _Out, path: str, problems: list[Problem], *, truncated: bool) -> None:
    for p in problems:
        # path:line: is the compiler convention, so editors and terminals can jump to the line.
        where = f"{path}:{p.line}:" if p.line is not None else f"{path}: {p.param or 'file'}:"
        out.stdout.print(f"{where} {p.rule}: {p.message}", soft_wrap=True)
        out.stdout.print(f"    fix: {p.fix}", style="dim", soft_wrap=True)
    if truncated:
        out.stdout.print("(stopped after the first problems; fix these and validate again)")


def _parse_metadata(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE (e.g. --metadata run=nightly)",
                                     param_hint="--metadata")
        pairs[key] = value
    return pairs


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

def _file_or_url(value: str | None) -> str | None:
    """A URL passes (it is read when used, with a clear error if absent); a local path must be a file."""
    if value is None or storage.is_url(value):
        return value
    path = storage.location(value)
    if not isinstance(path, Path) or not path.is_file():
        raise typer.BadParameter(f"{value} is not a file (a local path or an s3://, gs://, az:// URL)")
    return value


def _check_output(output: str) -> None:
    """Refuse a local output path that cannot be written (a directory, a disk, someone else's link in
    /tmp) before any download or batch: a FIFO or a terminal is written as a stream, a link's target
    is replaced and the link kept, never the other way round (see batch_ops._files)."""
    where = storage.location(output)
    if isinstance(where, Path):
        check_output(where)


InputArgument = Annotated[
    str, typer.Argument(metavar="INPUT", callback=_file_or_url,
                        help="JSONL request file, one request per line: a local path or an object storage URL "
                        "(s3://, gs://, az://).")
]
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint", "-e", metavar="ENDPOINT",
                 help="Batch endpoint, e.g. /v1/chat/completions; every line's url must match."),
]


ResponseSchemaOption = Annotated[
    str | None,
    typer.Option("--response-schema", metavar="FILE|MODULE:CLASS", show_default=False,
                 help="What the answers must follow (structured outputs): a JSON Schema file, or a pydantic model "
                      "as module:Class (importable here). Written into each request in the provider's own form, "
                      "checked against its schema subset before upload; results then carry parsed or invalid "
                      "(with the reason)."),
]


def _response_schema(given: str | None) -> ResponseSchema | None:
    if given is None:
        return None
    schema = ResponseSchema.of(given)  # a model names itself; a file's schema is named for the file
    return schema if schema.model is not None else ResponseSchema.of(schema.schema, name=Path(given).stem)


RepairFeedbackOption = Annotated[
    bool, typer.Option("--repair-feedback", help="Put each invalid answer's fault in its repaired request.")
]
PricesOption = Annotated[
    Path | None,
    typer.Option("--prices", exists=True, dir_okay=False, metavar="JSON", show_default=False,
                 help='Price overrides, USD per 1M tokens per model (batch prices), e.g. '
                      '{"my-model": {"input": 0.075, "output": 0.3}}; default: genai-prices\' table.'),
]
MaxCostOption = Annotated[
    float | None,
    typer.Option("--max-cost-usd", min=0, metavar="USD", show_default=False,
                 help="Hard budget for the key's whole chain: refuse before uploading when its spend so far plus "
                      "this attempt's upper bound would pass it."),
]


def _prices(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None else None


@app.command(cls=_Command)
def estimate(
    ctx: typer.Context,
    input_path: InputArgument,
    endpoint: EndpointOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", metavar="MODEL", show_default=False,
                     help="The model of lines that name none (Gemini: the batch's model)."),
    ] = None,
    prices: PricesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Estimate what INPUT costs at batch prices, offline: per model, requests, input tokens (exact, or a bound
    guaranteed above the true count), the output bound and the cost range (input alone .. every output limit).

    Exit 1 when a request cannot be bounded (media in a prompt; no output limit and no known maximum).
    """
    from batch_ops.cost import estimate as estimate_file

    out = _Out(json=json_output)
    with _handled(out), storage.local_copy(input_path) as local:
        found = estimate_file(local, provider=_dialect(ctx), model=model, endpoint=endpoint, prices=_prices(prices))
    if out.json:
        out.result(found.as_dict())
    else:
        out.stdout.print(render.estimate_view(found))
        for problem in found.problems[:5]:
            out.stderr.print(f"not bounded: {problem}", style="red", soft_wrap=True)
    if not found.complete:
        raise typer.Exit(EXIT_FAILED)


@app.command(cls=_Command)
def submit(
    ctx: typer.Context,
    input_path: InputArgument,
    endpoint: Annotated[
        str, typer.Option("--endpoint", "-e", metavar="ENDPOINT", help="Batch endpoint, e.g. /v1/chat/completions.")
    ],
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Batch metadata; repeat for more pairs (max 16)."),
    ] = None,
    completion_window: Annotated[
        str, typer.Option("--completion-window", metavar="WINDOW", help="Only 24h exists today.")
    ] = "24h",
    output_expires_after: Annotated[
        int | None,
        typer.Option("--output-expires-after", metavar="SECONDS", show_default=False,
                     help="Delete the output files this long after creation (3600..2592000)."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", metavar="KEY", show_default=False,
                     help="Name the work: submitting again with the same key returns its running or finished "
                          "batch; after a failed, expired or cancelled one it creates the next attempt, carrying "
                          "only the requests without a success."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the batch ends, with progress; then a summary.")
    ] = False,
    poll_interval: PollIntervalOption = 10.0,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    cancel_on_timeout: CancelOnTimeoutOption = False,
    response_schema: ResponseSchemaOption = None,
    repair_rounds: Annotated[
        int, typer.Option("--repair-rounds", metavar="N", min=0,
                          help="With --wait and --response-schema: after the batch ends, resubmit only the requests "
                               "whose answers are invalid, up to N times, each as the chain's next attempt. A round "
                               "--max-cost-usd has no room for is not submitted (a warning; exit 0).")
    ] = 0,
    repair_feedback: RepairFeedbackOption = False,
    max_cost_usd: MaxCostOption = None,
    prices: PricesOption = None,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Validate INPUT, upload it and create a batch; nothing is uploaded if a line is wrong.

    Exit 0 when created (with --wait: when it completed); 1 on validation problems or a batch
    that ended failed, expired or cancelled; 5 when --timeout ran out.
    """
    out = _Out(json=json_output)
    if repair_rounds and not (wait and response_schema):
        raise typer.BadParameter("--repair-rounds needs --wait and --response-schema", param_hint="--repair-rounds")
    meta = _parse_metadata(metadata)
    expires = {"anchor": "created_at", "seconds": output_expires_after} if output_expires_after is not None else None
    # A remote INPUT is copied locally once (piece by piece), then validated and uploaded from there.
    with _handled(out), storage.local_copy(input_path) as local:
        # Offline first: a bad file is reported line by line before any key or network is needed.
        report, problems = check_file(local, **_dialect(ctx).line_rules(endpoint))
        if problems:
            raise InputValidationError(problems, source=storage.display(input_path), truncated=report.truncated)
        out.note(f"validated {report.lines} requests ({render.human_bytes(report.bytes)}) for {report.endpoint}"
                 + (f", model {report.model}" if report.model else ""))
        schema = _response_schema(response_schema)
        with _client(out, ctx, base_url, api_key, max_retries) as client:
            price_table = _prices(prices)
            spec = SubmitSpec(endpoint=endpoint, completion_window=completion_window, metadata=meta,
                              output_expires_after=expires, idempotency_key=idempotency_key,
                              response_schema=schema, max_cost_usd=max_cost_usd, prices=price_table)
            submission = client.submit_spec(local, spec)
            estimated = submission.estimate.as_dict() if submission.estimate is not None else None
            batch = submission.batch
            # From here on the batch exists: an interrupt or a timeout must say which one keeps running.
            with _handled(out, batch_id=batch.id):
                for level, text in submission.lines():  # created or re-attached, then warnings (e.g. a new chain)
                    out.note(f"warning: {text}" if level == "warning" else text,
                             style="yellow" if level == "warning" else None)
                if not wait:
                    out.result({**_batch_json(batch), "estimate": estimated}, render.batch_view(batch))
                    out.note(f"follow it: batch-ops status {batch.id}", style="dim")
                    return
                batch = _wait(client, out, batch.id, poll_interval=poll_interval, timeout=timeout,
                              cancel_on_timeout=cancel_on_timeout)
            chain = submission.chain.with_batch(batch)
            rounds: list[dict[str, Any]] = []
            for number in range(1, repair_rounds + 1):
                if OutcomePolicy().rejection(batch) is not None:
                    break
                done = client.repair(local, spec, chain, round=number, feedback=repair_feedback)
                # Refused by the budget: a warning, the run goes on to its summary (core's decision, _repair).
                out.note(f"warning: {done.line()}" if done.refused else done.line(),
                         style="yellow" if done.refused else None)
                rounds.append(done.summary())
                if done.submission is None:
                    break
                with _handled(out, batch_id=done.submission.batch.id):
                    batch = _wait(client, out, done.submission.batch.id, poll_interval=poll_interval,
                                  timeout=timeout, cancel_on_timeout=cancel_on_timeout)
                chain = done.submission.chain.with_batch(batch)
            with _handled(out, batch_id=batch.id):
                cost = _bill(client, out, chain, estimated, price_table)
        if len(chain.batch_ids) > 1 and OutcomePolicy().rejection(batch) is None:
            ids = ",".join(chain.batch_ids)
            out.note(f"collect the results of every attempt: batch-ops results {ids} --output results.jsonl"
                     + (f" --response-schema {response_schema}" if response_schema else ""), style="dim")
        extra: dict[str, Any] = {"estimate": estimated, "cost": cost}
        if schema is not None:
            extra |= {"batch_ids": chain.batch_ids, "structured": structured_summary(schema, rounds)}
        _finish_wait(out, batch, extra)


def _bill(client: BatchClient, out: _Out, chain: Any, estimated: dict[str, Any] | None,
          prices: dict[str, Any] | None) -> dict[str, Any] | None:
    """The chain's actual bill next to its estimate (a note each); None when it cannot be made."""
    models = (estimated or {}).get("models") or []
    try:
        paid = client.bill(chain, model=models[0]["model"] if models else None, prices=prices)
    except BatchOpsError as exc:
        out.note(f"warning: no actual cost: {exc}", style="yellow")
        return None
    if estimated is not None:
        out.note(f"estimate: ${estimated['lower_usd']:.6f}..${estimated['upper_usd']:.6f}; "
                 f"actual: ${paid.total:.6f}")
    out.note(paid.summary(), style="dim")
    return paid.as_dict()


def _finish_wait(out: _Out, batch: Batch, extra: dict[str, Any] | None = None) -> None:
    """The end of a wait: fail by the outcome policy, or the batch (``extra``: keys added to its JSON)."""
    error = OutcomePolicy().rejection(batch)
    if error is not None:
        if not out.json:
            out.stdout.print(render.batch_view(batch))
        out.fail(str(error), exit_code_for(error), kind=type(error).__name__, batch=batch)
    out.result({**_batch_json(batch), **(extra or {})}, render.batch_view(batch))
    if batch.status is BatchStatus.COMPLETED:
        out.note(f"collect the results: batch-ops results {batch.id} --output results.jsonl", style="dim")


@app.command(cls=_Command)
def status(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(metavar="BATCH_ID", help="The batch id (batch_...).")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the batch ends, with progress (resumes a timed-out wait).")
    ] = False,
    poll_interval: PollIntervalOption = 10.0,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    cancel_on_timeout: CancelOnTimeoutOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a batch: status, request counts, usage, file ids, timestamps and errors.

    Exit 0 whatever the batch's status; with --wait, the exit codes of submit --wait
    (1 when it ended failed, expired or cancelled; 5 when --timeout ran out).
    """
    out = _Out(json=json_output)
    with _handled(out, batch_id=batch_id if wait else None), \
            _client(out, ctx, base_url, api_key, max_retries, fail_fast=not wait) as client:
        batch = client.batches.retrieve(batch_id)
        if wait and not batch.status.is_terminal:
            batch = _wait(client, out, batch_id, poll_interval=poll_interval, timeout=timeout,
                          cancel_on_timeout=cancel_on_timeout)
    if wait:
        _finish_wait(out, batch)
    else:
        out.result(_batch_json(batch), render.batch_view(batch))


@app.command("list", cls=_Command)
def list_batches(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100, metavar="N", help="Batches per page (1..100).")
    ] = 20,
    after: Annotated[
        str | None,
        typer.Option("--after", metavar="BATCH_ID", show_default=False, help="Start after this batch (the cursor)."),
    ] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the cursor through every page.")] = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """List batches, newest first, one page (or --all pages)."""
    out = _Out(json=json_output)
    with _handled(out), _client(out, ctx, base_url, api_key, max_retries, fail_fast=True) as client:
        if all_pages:
            batches = list(client.batches.iter_all(limit=limit, after=after))
            has_more = False
        else:
            page = client.batches.list(limit=limit, after=after)
            batches, has_more = list(page.data), page.has_more
    data = {
        "object": "list",
        "data": [_batch_json(b) for b in batches],
        "first_id": batches[0].id if batches else None,
        "last_id": batches[-1].id if batches else None,
        "has_more": has_more,
    }
    out.result(data, render.batch_table(batches) if batches else "no batches")
    if has_more and batches:
        out.note(f"more: batch-ops list --after {batches[-1].id}  (or --all)", style="dim")


@app.command(cls=_Command)
def orphans(
    ctx: typer.Context,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel the orphans (default: report only).")] = False,
    prefect: Annotated[
        bool, typer.Option("--prefect", help="Ask the Prefect API (PREFECT_API_URL) about each flow run owner.")
    ] = False,
    min_age: Annotated[
        float, typer.Option("--min-age", min=0, metavar="SECONDS", help="Keep batches younger than this.")
    ] = DEFAULT_MIN_AGE,
    since_hours: Annotated[
        float, typer.Option("--since-hours", min=0.01, metavar="HOURS", help="How far back batches are listed.")
    ] = DEFAULT_LOOKBACK / 3600,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """List unfinished batches with the run that owns each; with --cancel, cancel those whose run has ended.

    Each batch made by batch_ops' Airflow or Prefect adapters names its owner in metadata. With
    --prefect, flow run owners are looked up on the Prefect API; a batch whose flow run (or a
    parent of it) has ended is an orphan. A flow run this Prefect server does not know (another
    server's, a deleted one) is unknown: never cancelled. Airflow owners are judged by the DAG
    ``batch_ops_orphan_sweep`` (dags/), which asks Airflow from inside a task and cancels only
    batches of its own deployment. Owners nobody asked about are reported as unknown and never
    cancelled.
    """
    out = _Out(json=json_output)
    oracle: Any = lambda owners: {}  # noqa: E731 - nobody asked: every owner unknown
    if prefect:
        try:
            from batch_ops.prefect.orphans import flow_run_states
        except ImportError:
            out.fail("--prefect needs Prefect: pip install 'openai-batch-ops[prefect]'", EXIT_CONFIG,
                     kind="ConfigurationError")
        oracle = lambda owners: asyncio.run(flow_run_states(owners))  # noqa: E731
    with _handled(out), _client(out, ctx, base_url, api_key, max_retries) as client:
        report = sweep(client, oracle, cancel=cancel, since=time.time() - since_hours * 3600, min_age=min_age,
                       systems=["prefect"] if prefect else [])
    counts = report.counts()
    shown = render.sweep_table(report.judgements) if report.judgements else "no unfinished batches"
    out.result(report.as_dict(), shown)
    if not out.json:
        out.note(", ".join(f"{n} {k}" for k, n in counts.items()), style="dim")
        if report.orphans and not cancel:
            out.note("cancel the orphans: batch-ops orphans --cancel" + (" --prefect" if prefect else ""), style="dim")


@app.command(cls=_Command)
def cancel(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(metavar="BATCH_ID", help="The batch id (batch_...).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the batch has stopped.")] = False,
    poll_interval: PollIntervalOption = 5.0,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Cancel a batch (it goes `cancelling`, then `cancelled`; finished work stays in its output file).

    With --wait, exit 0 once it is cancelled; 1 when it ended another way first (completed,
    failed, expired); 5 when --timeout ran out.
    """
    out = _Out(json=json_output)
    with _handled(out, batch_id=batch_id), \
            _client(out, ctx, base_url, api_key, max_retries, fail_fast=not wait) as client:
        batch = client.batches.cancel(batch_id)
        if wait and not batch.status.is_terminal:
            batch = _wait(client, out, batch_id, poll_interval=poll_interval, timeout=timeout)
    if wait and batch.status is not BatchStatus.CANCELLED:
        if not out.json:
            out.stdout.print(render.batch_view(batch))
        out.fail(f"Batch {batch.id} ended {batch.status.value} before the cancel took effect.", EXIT_FAILED,
                 kind="BatchNotCancelled", batch=batch)
    out.result(_batch_json(batch), render.batch_view(batch))


@app.command(cls=_Command)
def results(
    ctx: typer.Context,
    batch_id: Annotated[str, typer.Argument(metavar="BATCH_ID", help="A finished batch (completed, failed, ...).")],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="PATH",
                          help="File to write (replaced whole; a FIFO or /dev/stdout is streamed to, a link's "
                          "target is written): a local path or an object storage URL (s3://…).")
    ],
    fmt: Annotated[
        Literal["jsonl", "csv"] | None,
        typer.Option("--format", "-f", show_default=False, metavar="FORMAT",
                     help="jsonl (one result object per line) or csv [default: from the PATH suffix, else jsonl]."),
    ] = None,
    input_path: Annotated[
        str | None,
        typer.Option("--input", "-i", callback=_file_or_url, metavar="PATH", show_default=False,
                     help="The request file the batch ran, local or a URL (saves downloading the input file)."),
    ] = None,
    response_schema: ResponseSchemaOption = None,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write every request's result, in input order: output and error files joined by custom_id.

    BATCH_ID may list the attempts of one chain, oldest first, comma separated (b1,b2: a retry or a
    repair round's batch after the first): each request gets its latest answer. With --response-schema,
    each JSONL result also carries parsed (the answer) or invalid (reason and message).

    CSV columns: custom_id, ok, status_code, error_code, content. content is the answer
    (chat: choices[0].message.content; responses: the output text; embeddings: the dimensions,
    NxD for N inputs; completions: the text) or, for a failed request, the error message.
    A request with no result at all appears with error_code missing_result.
    """
    out = _Out(json=json_output)
    kind = fmt or ("csv" if output.lower().endswith(".csv") else "jsonl")
    tally = render.ResultTally()
    with _handled(out):
        _check_output(output)
    schema = _response_schema(response_schema)
    invalid = 0
    with _handled(out), _client(out, ctx, base_url, api_key, max_retries) as client:
        attempts = [client.batches.retrieve(i) for i in batch_id.split(",") if i]
        batch = attempts[-1]
        chain = AttemptChain(batch.id, tuple(Attempt(n, b) for n, b in enumerate(attempts)))
        if not batch.status.is_terminal:
            out.fail(f"Batch {batch.id} is still {describe(batch)}: its results are not ready "
                     f"(batch-ops status {batch.id}; or submit with --wait).", EXIT_FAILED,
                     kind="BatchNotFinished", batch=batch)
        # Written beside the target and renamed (or put as one object): PATH holds all results or stays as it was.
        with storage.local_output(output) as target, atomic_file(target, "w", encoding="utf-8", newline="") as fh:
            lines = client.results(chain, input_path=input_path, response_schema=schema)
            if kind == "csv":
                writer = csv.writer(fh)
                writer.writerow(render.CSV_COLUMNS)
                for line in lines:
                    tally.add(line)
                    writer.writerow(render.csv_row(line, batch.endpoint or ""))
            else:
                for line in lines:
                    tally.add(line)
                    invalid += line.invalid is not None
                    if schema is None:
                        fh.write(line.model_dump_json() + "\n")
                        continue
                    record = line.record(raw=False)
                    data = {**line.model_dump(mode="json"), "parsed": record["parsed"], "invalid": record["invalid"]}
                    fh.write(json.dumps(data, separators=(",", ":")) + "\n")
    out.result({"batch_id": batch.id, "status": batch.status.value, "output": storage.display(output), "format": kind,
                **tally.as_dict(), **({"invalid": invalid} if schema is not None else {})})
    style = "green" if tally.failed == 0 else "yellow"
    if not out.json:
        out.stderr.print(f"wrote {storage.display(output)} ({kind}): {tally.summary()}", style=style, soft_wrap=True)


@app.command(cls=_Command)
def validate(
    ctx: typer.Context,
    input_path: InputArgument,
    endpoint: EndpointOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check a request file against the Batch API's input rules, offline.

    Prints every problem with its line, rule and fix; exit 1 when there is any.
    """
    out = _Out(json=json_output)
    shown = storage.display(input_path)  # a signed URL's signature, a URL's password: never printed
    with _handled(out), storage.local_copy(input_path) as local:
        report, problems = check_file(local, **_dialect(ctx).line_rules(endpoint))
    if out.json:
        out.result(render.report_json(report, problems))
    elif problems:
        _print_problems(out, shown, problems, truncated=report.truncated)
        noun = "problem" if len(problems) == 1 else "problems"
        out.stderr.print(f"{shown}: {len(problems)}{'+' if report.truncated else ''} {noun} "
                         f"in {report.lines} lines", style="red")
    else:
        model = f", model {report.model}" if report.model else ""
        out.stdout.print(f"{shown}: valid: {report.lines} requests, {render.human_bytes(report.bytes)}, "
                         f"{report.endpoint}{model}", soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_FAILED)


@app.command(cls=_Command)
def shard(
    ctx: typer.Context,
    input_path: InputArgument,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-d", file_okay=False, metavar="DIR", help="Directory for the parts.")
    ],
    max_lines: Annotated[
        int | None, typer.Option("--max-lines", min=1, metavar="N", show_default=False,
                                 help="Most requests per part [default: the provider's limit, OpenAI: 50000].")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", min=1, metavar="BYTES", show_default=False,
                                 help="Largest part in bytes [default: the provider's limit, OpenAI: 200 MB].")
    ] = None,
    endpoint: EndpointOption = None,
    json_output: JsonOption = False,
) -> None:
    """Split a request file into parts that each fit the limits (validated first; lines kept whole, in order)."""
    out = _Out(json=json_output)
    with _handled(out), storage.local_copy(input_path) as local:
        rules = _dialect(ctx).line_rules(endpoint)
        rules["max_lines"] = max_lines or rules["max_lines"]
        rules["max_bytes"] = max_bytes or rules["max_bytes"]
        paths = shard_file(local, out_dir, **rules)
        sizes = [(p, _count_lines(p), p.stat().st_size) for p in paths]
    if out.json:
        parts = [{"path": str(p), "lines": lines, "bytes": size} for p, lines, size in sizes]
        out.result({"input": storage.display(input_path), "out_dir": str(out_dir), "parts": parts})
        return
    for p, lines, size in sizes:
        out.stdout.print(f"{p}  {lines} requests  {render.human_bytes(size)}", soft_wrap=True)
    out.stderr.print(f"{len(sizes)} part(s) in {out_dir}", style="green")


@app.command(cls=_Command)
def job(
    ctx: typer.Context,
    input_path: InputArgument,
    endpoint: Annotated[
        str, typer.Option("--endpoint", "-e", metavar="ENDPOINT", help="Batch endpoint, e.g. /v1/chat/completions.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="PATH",
                          help="Merged results (one line per request, input order); the state and work files sit "
                          "beside it. A local path or an object storage URL (s3://…): a job there resumes on any "
                          "machine.")
    ],
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, metavar="N", help="Batches running at once.")
    ] = 4,
    max_rounds: Annotated[
        int, typer.Option("--max-rounds", min=0, metavar="N", help="Extra rounds for retryable failures (0: none).")
    ] = 3,
    max_lines: Annotated[
        int | None, typer.Option("--max-lines", min=1, metavar="N", show_default=False,
                                 help="Most requests per batch [default: the provider's limit, OpenAI: 50000].")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", min=1, metavar="BYTES", show_default=False,
                                 help="Largest batch file in bytes [default: the provider's limit, OpenAI: 200 MB].")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Metadata for every batch of the job."),
    ] = None,
    prices: Annotated[
        Path | None,
        typer.Option("--prices", exists=True, dir_okay=False, metavar="JSON", show_default=False,
                     help='USD per 1M tokens per model, e.g. {"gpt-4o-mini": {"input": 0.075, "output": 0.3}}.'),
    ] = None,
    max_cost_usd: Annotated[
        float | None,
        typer.Option("--max-cost-usd", min=0, metavar="USD", show_default=False,
                     help="Hard budget for the whole job: it stops submitting parts before passing it (the rest "
                          "end as budget_exceeded failures; the summary says how far it got)."),
    ] = None,
    response_schema: ResponseSchemaOption = None,
    repair_rounds: Annotated[
        int, typer.Option("--repair-rounds", metavar="N", min=0,
                          help="With --response-schema: after a part's batch completed, resubmit only the requests "
                               "whose answers are invalid, up to N times per part, each as the next attempt of the "
                               "part's chain. A round --max-cost-usd has no room for is not submitted (the summary "
                               "says so; not an error).")
    ] = 0,
    repair_feedback: RepairFeedbackOption = False,
    poll_interval: PollIntervalOption = 30.0,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    max_retries: MaxRetriesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run INPUT of any size as many batches until every request is answered or accounted for.

    Shards into valid batches, resubmits retryable failures (and token-limit refusals),
    recovers completed work from expired or cancelled batches, and merges one result per
    request. Run it again with the same --output to resume: finished batches are never
    resubmitted. With --response-schema and --repair-rounds, each part's invalid answers are
    resubmitted (only those). Prints a JSON summary line (total, succeeded, failed, batches,
    resubmitted, cost_usd, repairs).
    Exit 0 when every request succeeded, 1 when some failed after all rounds.
    """
    from batch_ops.jobs import BatchJob, JobConfig

    out = _Out(json=json_output)
    with _handled(out):
        _check_output(output)  # before any batch is paid for, not when the results are merged
        price_table = json.loads(prices.read_text()) if prices is not None else None
        config = JobConfig.of(endpoint=endpoint, provider=_dialect(ctx).name, max_concurrent=max_concurrent,
                              max_rounds=max_rounds,
                              max_lines=max_lines, max_bytes=max_bytes, metadata=_parse_metadata(metadata),
                              prices=price_table, max_cost_usd=max_cost_usd,
                              response_schema=_response_schema(response_schema), repair_rounds=repair_rounds,
                              repair_feedback=repair_feedback)
        batch_job = BatchJob.open(input_path, output_path=output, config=config)
        out.note(f"job {batch_job.state.job_id}: {batch_job.state.total} requests in {len(batch_job.state.parts)} "
                 f"part(s); state in {batch_job.state_path}")
        with _client(out, ctx, base_url, api_key, max_retries) as client:

            def progress(step: Any) -> None:
                for event in step.events:
                    out.note(event, style="dim")
                out.note(f"{batch_job.describe()}; running: {', '.join(step.running) or '-'}", style="dim")

            summary = batch_job.run(client, poll_interval=poll_interval, on_step=progress)
    data = summary.as_dict()
    # One JSON line on stdout in both modes: the summary is the command's result.
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _count_lines(path: Path) -> int:
    count = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help goes to the server's own parser, which knows the flags
)
def serve(ctx: typer.Context) -> None:
    """Run the local OpenAI-compatible Batch API server (flags: batch-ops serve --help)."""
    # main() forwards `serve` before loading typer at all; this command lists it in --help and
    # serves callers that invoke ``app`` directly.
    from batch_ops.cli import _serve

    raise typer.Exit(_serve(ctx.args))



webhooks_app = typer.Typer(
    name="webhooks", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="The webhook receiver: OpenAI's batch events wake waiting tasks within seconds (docs/webhooks.md).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(webhooks_app)


@webhooks_app.command("serve", cls=_Command)
def webhooks_serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="PORT",
                                      help="Port to bind; 0 picks a free one.")] = 8780,
    secret: Annotated[
        str | None,
        typer.Option("--secret", envvar="OPENAI_WEBHOOK_SECRET", show_default=False, metavar="SECRET",
                     help="The endpoint's whsec_... secret from the OpenAI dashboard. Prefer the variable: "
                     "flags show in ps."),
    ] = None,
    events_token: Annotated[
        str | None,
        typer.Option("--events-token", envvar="BATCH_OPS_EVENTS_TOKEN", show_default=False, metavar="TOKEN",
                     help="Require this bearer token on /events (the waiters' BATCH_OPS_EVENTS_TOKEN)."),
    ] = None,
    keep: Annotated[int, typer.Option("--keep", min=1, metavar="N", help="Events kept for subscribers.")] = 10_000,
    prefect: Annotated[
        bool, typer.Option("--prefect", help="Also emit each event to Prefect (batch_ops.batch.<status>), for "
                           "deployment triggers and automations; with OPENAI_API_KEY set, with the full payload. "
                           "Needs PREFECT_API_URL (or a profile with one).")
    ] = False,
    allow_anonymous_events: Annotated[
        bool, typer.Option("--allow-anonymous-events",
                           help="Serve /events without a token on an interface other than loopback (anyone who "
                           "reaches it can list batch ids and outcomes): only behind an ingress that forwards "
                           "/openai alone.")
    ] = False,
    read_timeout: Annotated[
        float, typer.Option("--read-timeout", min=0.1, metavar="SECONDS",
                            help="A request (headers and body) must arrive within this; slower ones are cut.")
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, metavar="N",
                          help="Connections at once (kept under the open files limit); at the cap the oldest "
                          "one still sending its request is cut.")
    ] = 1000,
) -> None:
    """Receive OpenAI's batch webhooks at /openai and serve them to waiting tasks at /events.

    Register https://<this host>/openai as the endpoint in the OpenAI dashboard; point waiters at
    http://<this host>:<port>/events (the connection's events_url, or BATCH_OPS_EVENTS_URL).
    """
    if not secret:
        sys.stderr.write("batch-ops webhooks serve: no secret: set OPENAI_WEBHOOK_SECRET (whsec_...) or --secret\n")
        raise typer.Exit(EXIT_CONFIG)
    if not events_token and not allow_anonymous_events and not _is_loopback(host):
        sys.stderr.write(
            f"batch-ops webhooks serve: --host {host} without an events token would let anyone who reaches it list "
            "every batch id and outcome at /events: set BATCH_OPS_EVENTS_TOKEN (or --events-token) and give the "
            "waiters the same token, or bind 127.0.0.1, or pass --allow-anonymous-events if an ingress forwards "
            "only /openai\n")
        raise typer.Exit(EXIT_CONFIG)

    from batch_ops.errors import ConfigurationError
    from batch_ops.webhooks.receiver import create_receiver_app
    from batch_ops.webhooks.serve import ConnectionGuard, run_receiver

    on_event = None
    try:
        if prefect:
            from batch_ops.prefect.webhooks import prefect_forwarder, require_prefect_api
            from batch_ops.settings import ClientSettings

            require_prefect_api()
            has_key = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_API_KEY"))
            on_event = prefect_forwarder(ClientSettings.from_env() if has_key else None)
        receiver = create_receiver_app(secret=secret, events_token=events_token, keep=keep, on_event=on_event)
    except ConfigurationError as exc:
        sys.stderr.write(f"batch-ops webhooks serve: {exc}\n")
        raise typer.Exit(EXIT_CONFIG) from None

    def listening(bound: int, guard: ConnectionGuard) -> None:
        # One line scripts can wait for.
        print(f"batch-ops webhooks: listening on http://{host}:{bound} (POST /openai, GET /events; "
              f"{guard.max_connections} connections, {guard.read_timeout:g} s to send a request)", flush=True)

    run_receiver(receiver, host=host, port=port, read_timeout=read_timeout, max_connections=max_connections,
                 on_listening=listening)


def _is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (``127.0.0.1``, ``::1``, ``localhost``).

    Examples:
        >>> [_is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "10.0.0.5", "receiver")]
        [True, True, True, False, False, False, False]
    """
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
