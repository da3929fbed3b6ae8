"""``BatchClient`` and ``AsyncBatchClient``: the Files and Batches API, submit and results.

Both clients run the same plans (:mod:`batch_ops._plans`) on a driver (:mod:`batch_ops._drivers`);
they differ only in how it sends a request and how it sleeps. Each call of ``client.files`` and
``client.batches`` is written once, as the plan it runs (``_FilePlans``, ``_BatchPlans``): the
blocking classes run it, their async twins await it. Every call retries what is worth retrying
(408/409/429/5xx, network errors) with jittered back-off and ``Retry-After``; a batch create is
never blindly re-sent (see ``create``).

Examples:
    >>> from batch_ops import BatchClient
    >>> with BatchClient(api_key="sk-local-dev-7f3a", base_url="http://127.0.0.1:9/v1") as client:
    ...     client.settings.base_url
    'http://127.0.0.1:9/v1'
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar, cast

import httpx
from pydantic import ValidationError

from batch_ops import _plans, storage
from batch_ops._drivers import AsyncDriver, SyncDriver, http_timeout
from batch_ops._http import RetryPolicy
from batch_ops._repair import RepairRound, repair_plan
from batch_ops._submit import Source, Submission, SubmitSpec, chain_bill_plan, find_chain_plan, submit_plan
from batch_ops._transport import ASYNC_POOL_LIMITS, default_async_transport
from batch_ops.chain import Attempt, AttemptChain
from batch_ops.cost.bill import Bill
from batch_ops.dialects import Dialect
from batch_ops.errors import BatchOpsError, BatchTimeoutError, ConfigurationError, InputValidationError, Problem
from batch_ops.identity.keys import new_idempotency_key
from batch_ops.identity.ledger import KeyLedger
from batch_ops.models import Batch, BatchList, BatchStatus, FileList, FileObject, ResultLine
from batch_ops.outcomes import DEFAULT_FAIL_ON, DEFAULT_WAIT_TIMEOUT
from batch_ops.polling import BatchPoller, Poll, WaitMany
from batch_ops.process_state import STATE
from batch_ops.results import join_chain_results, result_ids_file
from batch_ops.settings import ClientSettings, settings_error
from batch_ops.storage import Location, StorageTarget
from batch_ops.structured import ResponseSchema, parse_line

__all__ = ["AsyncBatchClient", "BatchClient"]

_log = logging.getLogger("batch_ops")
#: Sleeps used by the drivers; tests may patch these (and ``_plans.clock``), nothing else. The
#: clients hand their drivers a sleep that looks these names up at each call, so a patch reaches them.
_sleep = time.sleep
_async_sleep = asyncio.sleep

PathLike = str | os.PathLike[str]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _settings(settings: ClientSettings | None, overrides: Mapping[str, Any]) -> ClientSettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    timeout = given.get("timeout")
    if isinstance(timeout, httpx.Timeout):  # the official SDK's constructor takes one too
        given["timeout"] = timeout.read if timeout.read is not None else 600.0
    try:
        if settings is None:
            return ClientSettings.from_env(**given)
        # Validated, unlike model_copy(update=...): an override such as base_url="ftp://..." is checked too.
        return ClientSettings.model_validate({**dict(settings), **given}) if given else settings
    except ValidationError as exc:
        raise settings_error(exc) from None


def _noticed(submission: Submission) -> Submission:
    """``submit`` hands back the batch alone: what a person should know about the submit is logged
    here (``submit_spec`` callers — the adapters, the CLI — log ``Submission.notices`` themselves)."""
    for notice in submission.notices:
        _log.warning("%s", notice)
    if submission.created and (submission.estimate is not None or submission.cost_note):
        _log.info("%s", submission.estimate.summary() if submission.estimate is not None else submission.cost_note)
    return submission


def _checked_batch(what: Any) -> Batch | AttemptChain | Submission:
    if isinstance(what, (Batch, AttemptChain, Submission)):
        return what
    raise InputValidationError(
        [Problem(rule="invalid_argument", param="batch", message=f"batch is a {type(what).__name__}",
                 fix="pass a Batch, its id, a chain (client.batches.chain(key)) or a Submission")],
        source="batch parameters",
    )


def _as_chain(what: Batch | AttemptChain | Submission) -> AttemptChain:
    if isinstance(what, Submission):
        return what.chain
    if isinstance(what, AttemptChain):
        return what
    return AttemptChain(what.id, (Attempt(0, what),))


def _ended_chain(what: Any) -> AttemptChain:
    """The chain whose results ``results`` reads: its latest batch must have ended."""
    chain = _as_chain(_checked_batch(what))
    latest = chain.latest
    if latest is None:
        raise BatchOpsError(f"Key {chain.key!r} has no batch: nothing to read.")
    if not latest.status.is_terminal:
        raise BatchOpsError(
            f"Batch {latest.id} is still {latest.status.value}: wait for it (client.batches.wait) before "
            "reading results."
        )
    return chain


class _Base:
    """What both clients share: settings, the dialect, the retry policy."""

    #: Whether the client's driver can end a pause on a batch's webhook event (an events subscription).
    follows_events: ClassVar[bool] = False

    def __init__(self, settings: ClientSettings | None, overrides: Mapping[str, Any]) -> None:
        settings = _settings(settings, overrides)
        settings.require_key()  # fail now, with the fix, rather than at the first request
        self.settings = settings
        #: The batch API spoken (settings.provider): builds every request, reads every answer.
        self.dialect: Dialect = settings.dialect
        self.retry_policy = RetryPolicy(
            max_retries=settings.max_retries,
            max_elapsed=settings.retry_max_elapsed,
            initial=settings.backoff_initial,
            maximum=settings.backoff_max,
        )
        #: What every plan is driven with: the dialect that speaks the wire, the retry policy.
        self._wire: Mapping[str, Any] = MappingProxyType({"dialect": self.dialect, "policy": self.retry_policy})
        #: The key ledger: the key's lease for every keyed submit when the settings name one (a race makes one
        #: batch); always for a dialect whose batches cannot carry the key (Anthropic), which records key → batch
        #: in it too (default folder: this machine's).
        self._ledger = KeyLedger(settings.key_ledger) if settings.key_ledger or not self.dialect.carries_key else None

    @property
    def key_ledger(self) -> KeyLedger | None:
        """The key ledger this client's submits use (``ClientSettings.key_ledger``; always one for a provider whose
        batches cannot carry the key), or None. The orphan sweep reads the owners it keeps."""
        return self._ledger

    def _spec(self, spec: SubmitSpec) -> SubmitSpec:
        """``spec`` with the settings' model for neutral requests that name none (a connection's model)."""
        if spec.model is None and self.settings.model:
            return dataclasses.replace(spec, model=self.settings.model)
        return spec

    def _create_plan(self, *, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: Mapping[str, str] | None, output_expires_after: Mapping[str, Any] | None) -> Any:
        """A create under a fresh random key (checked before any I/O): at most one batch, even when
        the answer is lost."""
        key = new_idempotency_key()
        body = self.dialect.create_body(input_file_id=input_file_id, endpoint=endpoint,
                                        completion_window=completion_window, metadata=metadata,
                                        output_expires_after=output_expires_after, idempotency_key=key)
        return _plans.create_plan(body, key=key, key_may_exist=False, **self._wire,
                                  lookback=self.settings.idempotency_lookback)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r})"


# ---------------------------------------------------------------------------------------------
# Each call of client.files and client.batches, written once as the plan it runs
# ---------------------------------------------------------------------------------------------


class _Calls:
    """``client.files`` / ``client.batches``: the client whose plans they run.

    The plan makers below (``_FilePlans``, ``_BatchPlans``) are written as methods for their
    signatures and docstrings, but run with a ``Files``/``Batches`` (or async twin) as ``self``:
    they use ``self._c`` only.
    """

    def __init__(self, client: Any) -> None:
        self._c = client


_PlanMaker = Callable[Concatenate[Any, _P], Generator[Any, Any, _T]]


def _since(client: _Base, since: float | None) -> float:
    """How far back a key is looked for: ``since``, else ``settings.idempotency_lookback`` ago."""
    return _plans.clock() - client.settings.idempotency_lookback if since is None else since


def _blocking(make: _PlanMaker[_P, _T]) -> Callable[Concatenate[Any, _P], _T]:
    """The method that runs the plan ``make`` builds, blocking (``Files``, ``Batches``)."""

    @functools.wraps(make)
    def call(self: _Calls, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._c._run(make(self, *args, **kwargs))  # type: ignore[no-any-return]

    return call


def _awaited(make: _PlanMaker[_P, _T]) -> Callable[Concatenate[Any, _P], Coroutine[Any, Any, _T]]:
    """The method that runs the plan ``make`` builds, awaited (``AsyncFiles``, ``AsyncBatches``)."""

    @functools.wraps(make)
    async def call(self: _Calls, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._c._run(make(self, *args, **kwargs))  # type: ignore[no-any-return]

    return call


class _FilePlans(_Calls):
    """The calls of ``client.files`` that are one plan each (upload and download also stage a remote
    file, which the async client does in a thread: they are written in each class)."""

    def retrieve(self, file_id: str) -> Generator[Any, Any, FileObject]:
        """The file object (name, size, purpose, status)."""
        return _plans.retrieve_file_plan(file_id, **self._c._wire)

    def list(self, *, purpose: str | None = None) -> Generator[Any, Any, FileList]:
        """The files, optionally only those of one ``purpose``."""
        return _plans.list_files_plan(purpose=purpose, **self._c._wire)

    def delete(self, file_id: str) -> Generator[Any, Any, bool]:
        """Delete a file; True when the API says it is gone."""
        return _plans.delete_file_plan(file_id, **self._c._wire)


class _BatchPlans(_Calls):
    """The calls of ``client.batches`` that are one plan each (``create`` with a key goes through
    ``submit``, and ``iter_all`` is a generator: they are written in each class)."""

    def download_results(self, batch: Batch, directory: PathLike) -> Generator[Any, Any, _plans.ResultPaths]:
        """Download ``batch``'s output and error files into ``directory`` (``<id>.output.jsonl``,
        ``<id>.errors.jsonl``), in OpenAI's line shape whatever the provider; a file the batch
        does not have is None."""
        return _plans.download_results_plan(batch, Path(directory), **self._c._wire)

    def retrieve(self, batch_id: str) -> Generator[Any, Any, Batch]:
        """The batch as the API has it now."""
        return _plans.retrieve_batch_plan(batch_id, **self._c._wire)

    def cancel(self, batch_id: str) -> Generator[Any, Any, Batch]:
        """Ask the API to cancel the batch; returns it as the answer has it (usually ``cancelling``)."""
        return _plans.cancel_batch_plan(batch_id, **self._c._wire)

    def list(self, *, limit: int = 20, after: str | None = None) -> Generator[Any, Any, BatchList]:
        """One page, newest first; ``limit`` must be 1..100 (checked before any request).
        Iterating the page yields its batches; ``iter_all`` follows the cursor."""
        return _plans.list_batches_plan(limit=limit, after=after, **self._c._wire)

    def find_by_idempotency_key(self, key: str, *, since: float | None = None) -> Generator[Any, Any, Batch | None]:
        """The batch batch_ops created with this exact (attempt) key, searching back to ``since`` (epoch s)."""
        return _plans.find_by_key_plan(key, since=_since(self._c, since), **self._c._wire)

    def chain(self, key: str, *, since: float | None = None,
              fingerprint: str | None = None) -> Generator[Any, Any, AttemptChain]:
        """Every attempt of ``key``, from the batch list alone (or the key ledger, for a provider whose batches
        cannot carry the key).

        A key used for other requests over time has one chain per set of requests (see
        :mod:`batch_ops.chain`): ``fingerprint`` picks one (``Submission.fingerprint``, or
        ``batch_ops.fingerprint.fingerprint_file(path).value``); without it, the key's newest chain.

        Examples:
            >>> # chain = client.batches.chain("nightly-1"); chain.batch_ids, chain.latest.status
        """
        return find_chain_plan(key, since=_since(self._c, since), **self._c._wire, fingerprint=fingerprint,
                               ledger=self._c._ledger)

    def wait(
        self,
        batch_id: str,
        *,
        poll_interval: float = 30.0,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        max_poll_interval: float | None = None,
        deadline: float | None = None,
        on_poll: Any = None,
        first_delay: float = 0.0,
        cancel_on_timeout: bool = False,
        first_poll_spread: float | None = None,
    ) -> Generator[Any, Any, Batch]:
        """Poll until terminal and return the batch (whatever its outcome).

        Raises BatchTimeoutError at the deadline (``timeout`` seconds from now, default
        :data:`batch_ops.outcomes.DEFAULT_WAIT_TIMEOUT`, 25 h; or the absolute ``deadline``): the batch
        keeps running, unless ``cancel_on_timeout`` (it is cancelled first, and the error says so).
        Pass the result to :func:`batch_ops.raise_for_outcome` to turn failed/expired/cancelled into
        exceptions. ``on_poll(batch)`` is called after each poll (progress displays; awaited when it
        returns an awaitable, in the async client).

        ``first_delay`` puts off the first poll; ``first_poll_spread`` instead makes it a random
        pause in ``[0, spread)``, so a thousand waits started together (a restarted Airflow
        triggerer) do not poll in the same instant. With ``settings.events_url`` (a webhook
        receiver), the async client's wait wakes on the batch's webhook event and otherwise polls
        only every ``settings.safety_poll_interval`` seconds (an event also ends the first pause early).
        """
        settings = self._c.settings
        events = self._c.follows_events and settings.events_url is not None
        poller = BatchPoller(poll_interval=poll_interval, max_poll_interval=max_poll_interval, timeout=timeout,
                             deadline=deadline, safety_poll_interval=settings.safety_poll_interval if events else None)
        if first_poll_spread is not None:
            first_delay = poller.first_delay(now=_plans.clock(), spread=first_poll_spread)
        return _plans.wait_plan(batch_id, poller=poller, **self._c._wire, on_poll=on_poll, first_delay=first_delay,
                                cancel_on_timeout=cancel_on_timeout)

    def poll(self, batch_id: str, *, poller: BatchPoller) -> Generator[Any, Any, Poll]:
        """One poll of a wait you schedule yourself (Airflow's poke sensor): the batch and the
        ``poller``'s decision, or no batch after a failure it still tolerates (keep the same poller
        from poll to poll: it counts failures in a row). Raises a permanent error, or one failure too many.

        Examples:
            >>> # poller = BatchPoller(poll_interval=60); poll = client.batches.poll("batch_1", poller=poller)
            >>> # poll.done, poll.batch, poll.error
        """
        return _plans.poll_plan(batch_id, poller=poller, **self._c._wire)

    def wait_many(
        self,
        batch_ids: Collection[str],
        *,
        poll_interval: float = 30.0,
        deadline: float | None = None,
        wake_at: float | None = None,
        first_poll_spread: float = 0.0,
        max_consecutive_failures: int = 5,
    ) -> Generator[Any, Any, WaitMany]:
        """Wait until any of ``batch_ids`` ends, ``wake_at`` passes or ``deadline`` does (epoch seconds).

        Returns the batches as last seen and why the wait ended (see :class:`~batch_ops.polling.WaitMany`);
        a permanent error, or more than ``max_consecutive_failures`` failed rounds in a row, is raised.
        The first round comes after a random pause in ``[0, first_poll_spread)``.
        """
        poller = BatchPoller(poll_interval=poll_interval, deadline=deadline,
                             max_consecutive_failures=max_consecutive_failures)
        first_delay = poller.first_delay(now=_plans.clock(), spread=first_poll_spread) if first_poll_spread else 0.0
        return _plans.wait_many_plan(list(batch_ids), poller=poller, **self._c._wire, wake_at=wake_at,
                                     first_delay=first_delay)

    def time_out(
        self, batch_id: str, *, cancel: bool, last: Batch | None = None, deadline: float | None = None
    ) -> Generator[Any, Any, BatchTimeoutError]:
        """End a wait that ran out of time elsewhere (an Airflow trigger): cancel the batch when ``cancel``
        (``cancel_on_timeout``) and return the error to raise, worded as every wait words it."""
        return _plans.timeout_plan(batch_id, deadline=deadline, last=last, cancel=cancel, **self._c._wire)


# ---------------------------------------------------------------------------------------------
# Sync client
# ---------------------------------------------------------------------------------------------


class BatchClient(_Base):
    """Blocking client for the Files and Batches API.

    Args:
        api_key: overrides ``OPENAI_API_KEY``; see :class:`ClientSettings`.
        base_url: overrides ``OPENAI_BASE_URL``.
        organization: overrides ``OPENAI_ORG_ID``.
        project: overrides ``OPENAI_PROJECT_ID``.
        api_version: Azure OpenAI's api-version (overrides ``OPENAI_API_VERSION``).
        max_retries: retries after the first try, as in the official ``openai.OpenAI``.
        timeout: seconds per HTTP exchange, or an ``httpx.Timeout``.
        settings: a complete :class:`ClientSettings` instead of the above.
        http_client: an ``httpx.Client`` to use (not closed by us).

    Examples:
        >>> import os
        >>> from batch_ops import BatchClient
        >>> client = BatchClient(api_key="sk-local", base_url="http://127.0.0.1:8765/v1")
        >>> client.files, client.batches  # doctest: +ELLIPSIS
        (<batch_ops.client.Files object at ...>, <batch_ops.client.Batches object at ...>)
        >>> client.close()
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        api_version: str | None = None,
        max_retries: int | None = None,
        timeout: float | httpx.Timeout | None = None,
        settings: ClientSettings | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(settings, {"api_key": api_key, "base_url": base_url, "organization": organization,
                                    "project": project, "api_version": api_version, "max_retries": max_retries,
                                    "timeout": timeout})
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=http_timeout(self.settings))
        # The sleep is looked up at each call: tests shorten it by patching batch_ops.client._sleep.
        self._driver = SyncDriver(self.settings, self.dialect, self._http, sleep=lambda seconds: _sleep(seconds))
        self.files = Files(self)
        self.batches = Batches(self)

    def _run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        return self._driver.run(plan)

    # -- high level -------------------------------------------------------------------------
    def submit(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        *,
        endpoint: str = "",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        reattach: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        since: float | None = None,
        response_schema: Any = None,
        max_cost_usd: float | None = None,
        prices: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Validate, upload and create a batch; nothing is uploaded if anything is invalid.

        Args:
            source: a JSONL request file, or an iterable of request dicts / ``RequestLine``
                (``url`` and ``method`` may be omitted; they default to ``endpoint`` / POST), or
                ``Source(file_id=...)`` for a file already uploaded.
            idempotency_key: name the work to make the whole submit safe to repeat (a task
                retry, two tries at once): the key's attempt chain is looked up first. A running
                attempt or an accepted outcome is returned as it is; after an outcome that
                ``fail_on`` / ``fail_on_request_failures`` reject, a new attempt is created that
                carries only the requests without a success anywhere in the chain. The chain is
                the key's for *these* requests (their fingerprint: content, not file name, line
                order or formatting); other requests under the same key get a chain of their own.
            reattach: look the key up first (default). Pass False only for a key you know is
                fresh; lost creates are still looked up before any re-send.
            fail_on: the terminal statuses that call for a new attempt.
            fail_on_request_failures: a completed batch with failed requests calls for one too.
            since: how far back (epoch seconds) the key is looked for; default
                ``settings.idempotency_lookback`` ago.
            response_schema: a pydantic model or a JSON Schema the answers must follow
                (:mod:`batch_ops.structured`): written into every request in the provider's own form,
                after the provider's schema subset is checked. Read the answers with
                ``results(..., response_schema=...)``; repair invalid ones with :meth:`repair`.
            max_cost_usd: a hard budget for the key's whole chain (USD, batch prices): refused before
                upload with :class:`~batch_ops.errors.BudgetExceededError` when the chain's spend so far plus
                this attempt's upper bound passes it (docs/cost.md).
            prices: price overrides, ``{"model": {"input": .., "output": ..}}`` in USD per 1M tokens.

        Returns:
            The batch to wait for (or the final one): the latest attempt. With a key used before for
            *other* requests, the attempt of a new chain for these (the old batches are left alone,
            and a warning on the ``batch_ops`` logger says so): never a batch of other requests.

        Examples:
            >>> # client.submit("requests.jsonl", endpoint="/v1/chat/completions", idempotency_key="nightly-1")
        """
        spec = SubmitSpec.of(
            endpoint=endpoint, completion_window=completion_window, metadata=metadata,
            output_expires_after=output_expires_after, idempotency_key=idempotency_key, reattach=reattach,
            fail_on=fail_on, fail_on_request_failures=fail_on_request_failures, since=since,
            response_schema=response_schema,
            max_cost_usd=max_cost_usd, prices=prices,
        )
        return _noticed(self.submit_spec(source, spec)).batch

    def submit_spec(self, source: StorageTarget | Iterable[Mapping[str, Any]] | Source, spec: SubmitSpec) -> Submission:
        """:meth:`submit` with its parameters in one :class:`~batch_ops.SubmitSpec`, returning the whole
        :class:`~batch_ops.Submission`: the chain, whether this call created the attempt, how many
        requests it carries. The adapters and the CLI call this.

        Examples:
            >>> # sub = client.submit_spec("requests.jsonl", SubmitSpec(endpoint="/v1/embeddings", idempotency_key="k"))
        """
        src, spec = Source.of(source), self._spec(spec)
        workdir = Path(tempfile.mkdtemp(prefix="batch_ops_submit_"))
        try:
            return self._run(submit_plan(spec, src, workdir=workdir, **self._wire,  # type: ignore[no-any-return]
                                         lookback=self.settings.idempotency_lookback, ledger=self._ledger))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def repair(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        spec: SubmitSpec,
        chain: AttemptChain | Submission,
        *,
        round: int = 1,
        feedback: bool = False,
    ) -> RepairRound:
        """One repair round (:mod:`batch_ops._repair`): the chain's invalid answers (against
        ``spec.response_schema``) resubmitted, and only those, as its next attempt; ``source`` and ``spec``
        are the ones the chain was submitted with. ``feedback`` puts each answer's fault in its request as a
        new user turn. Wait for ``round.submission.batch`` when it is not None, then read the results again.
        A round ``spec.max_cost_usd`` has no room for is not submitted and does not raise: ``round.refused``
        holds the budget's message (the answers already paid for stand; see :mod:`batch_ops._repair`).

        Examples:
            >>> # sub = client.submit_spec("q.jsonl", SubmitSpec.of(idempotency_key="k", response_schema=City))
            >>> # ... wait; r = client.repair("q.jsonl", spec, sub.chain.with_batch(ended)); r.line()
        """
        src, spec = Source.of(source), self._spec(spec)
        workdir = Path(tempfile.mkdtemp(prefix="batch_ops_repair_"))
        try:
            return self._run(repair_plan(spec, src, _as_chain(chain), round=round,  # type: ignore[no-any-return]
                                         feedback=feedback, workdir=workdir, **self._wire,
                                         lookback=self.settings.idempotency_lookback, ledger=self._ledger))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def results(
        self,
        batch: Batch | AttemptChain | Submission | str,
        *,
        input_path: PathLike | None = None,
        workdir: PathLike | None = None,
        response_schema: Any = None,
    ) -> Iterator[ResultLine]:
        """Yield one :class:`ResultLine` per input request, in input order.

        ``batch`` is one batch (or its id), or a chain of attempts (``client.batches.chain(key)``,
        a ``Submission``): the output and error files of every batch are downloaded (streamed)
        into a temporary directory and joined by ``custom_id``, the latest success winning. A
        request found nowhere is yielded with ``error.code == "missing_result"``. The requests
        are the first attempt's input file, or ``input_path`` (the local request file; saves a
        download). With ``response_schema`` (a pydantic model, a JSON Schema), each answer is read
        against it: ``line.parsed`` (a model instance, or the JSON), or ``line.invalid`` with the reason.
        """
        schema = None if response_schema is None else ResponseSchema.of(response_schema)
        if isinstance(batch, str):
            batch = self.batches.retrieve(batch)
        chain = _ended_chain(batch)
        tmp = Path(tempfile.mkdtemp(prefix="batch_ops_results_", dir=workdir))
        try:
            pairs = self._run(_plans.chain_results_plan(chain, tmp, **self._wire))
            first = chain.attempts[0].batch
            if input_path and storage.is_remote(input_path):
                inp = storage.stage(input_path, tmp / "input.jsonl")
            elif input_path:
                inp = Path(input_path)
            elif not (self.dialect.stores_files and self.dialect.downloads_uploads):
                # No input file to read back: the requests are the ones the chain's results name.
                inp = result_ids_file([p for o, e, _n in pairs for p in (o, e)], tmp / "input.jsonl",
                                      id_field=self.dialect.line_shape.id_field)
            else:
                inp = cast(Path, self.files.download(first.input_file_id, tmp / "input.jsonl"))
            joined = join_chain_results(input_path=inp, attempts=pairs, id_field=self.dialect.line_shape.id_field)
            yield from (joined if schema is None else (parse_line(line, schema) for line in joined))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def bill(self, batch: Batch | AttemptChain | Submission | str, *, model: str | None = None,
             prices: Mapping[str, Any] | None = None) -> Bill:
        """The actual cost of ``batch`` (every attempt of a chain, duplicates included) from its results' usage,
        at batch prices (:func:`batch_ops.cost.bill`). ``model``: for answers that name none (Gemini's batch model).

        Examples:
            >>> # print(client.bill(sub).summary())   # Actual: $0.001234 (gpt-4o-mini: 20 requests, ...)
        """
        if isinstance(batch, str):
            batch = self.batches.retrieve(batch)
        chain = _ended_chain(batch)
        tmp = Path(tempfile.mkdtemp(prefix="batch_ops_bill_"))
        try:
            return self._run(chain_bill_plan(chain, tmp, **self._wire, model=model,  # type: ignore[no-any-return]
                                             prices=prices))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files(_Calls):
    """``client.files``: upload (streamed), retrieve, list, download (streamed), delete."""

    _c: BatchClient

    def upload(self, path: StorageTarget, *, purpose: str = "batch") -> FileObject:
        """Upload a file, streamed from disk in 1 MiB chunks (never read whole into memory).

        ``path`` may be on object storage (a URL, an ``ObjectStoragePath``): it is staged to a
        local temporary file first (see :mod:`batch_ops.storage`).
        """
        with storage.local_copy(_source_path(path)) as local:
            return self._c._run(_plans.upload_plan(_existing(local), purpose=purpose,  # type: ignore[no-any-return]
                                                   **self._c._wire))

    retrieve = _blocking(_FilePlans.retrieve)
    list = _blocking(_FilePlans.list)

    def download(self, file_id: str, path: StorageTarget) -> Path | StorageTarget:
        """Stream a file's content to ``path`` (written whole or not at all).

        Returns the local :class:`~pathlib.Path` written, or ``path`` itself when it is on object
        storage (an ``s3://`` URL, an ``ObjectStoragePath``): the file is then downloaded to a
        local temporary file and put as one object (see :mod:`batch_ops.storage`).
        """
        target = _target(path)
        with storage.local_output(target) as local:
            written: Path = self._c._run(_plans.download_plan(file_id, local, **self._c._wire))
        return written if isinstance(target, Path) else path

    delete = _blocking(_FilePlans.delete)


class Batches(_Calls):
    """``client.batches``: create (at most once), retrieve, cancel, list, iter_all, wait, poll, wait_many."""

    _c: BatchClient

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch, never twice.

        The batch is tagged with an idempotency key in ``metadata``. If a create may have
        reached the server but no answer came back, the list is searched for the key before
        sending again. Pass your own ``idempotency_key`` to make repeated calls (task retries)
        go through the submission core, like :meth:`BatchClient.submit`: they attach to the
        key's running attempt, return an accepted outcome, or make a new attempt after a failed,
        expired or cancelled one, carrying only the requests still without a success.
        """
        if idempotency_key is not None:  # the submission core: the key's chain, attach or a new attempt
            return self._c.submit(Source(file_id=input_file_id), endpoint=endpoint,
                                  completion_window=completion_window, metadata=metadata,
                                  output_expires_after=output_expires_after, idempotency_key=idempotency_key)
        return self._c._run(self._c._create_plan(  # type: ignore[no-any-return]
            input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
            metadata=metadata, output_expires_after=output_expires_after))

    download_results = _blocking(_BatchPlans.download_results)
    retrieve = _blocking(_BatchPlans.retrieve)
    cancel = _blocking(_BatchPlans.cancel)
    list = _blocking(_BatchPlans.list)

    def iter_all(self, *, limit: int = 100, after: str | None = None) -> Iterator[Batch]:
        """Every batch, newest first, following ``has_more`` / ``last_id``."""
        while True:
            page = self.list(limit=limit, after=after)
            yield from page.data
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    find_by_idempotency_key = _blocking(_BatchPlans.find_by_idempotency_key)
    chain = _blocking(_BatchPlans.chain)
    wait = _blocking(_BatchPlans.wait)
    poll = _blocking(_BatchPlans.poll)
    wait_many = _blocking(_BatchPlans.wait_many)
    time_out = _blocking(_BatchPlans.time_out)


# ---------------------------------------------------------------------------------------------
# Async client
# ---------------------------------------------------------------------------------------------


def _shared_clients() -> weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncBatchClient]]:
    """Per event loop, the shared clients (``STATE`` slot ``client.shared``); a loop's entry goes with it."""
    return STATE.slot("client.shared", weakref.WeakKeyDictionary)


def _closers() -> set[asyncio.Task[None]]:
    """The tasks that close shared clients when their loop ends (``STATE`` slot ``client.closers``).

    A pending task nobody references would be garbage-collected, and a loop that never ends
    (Prefect's own loop thread) keeps its closer here for the life of the process.
    """
    return STATE.slot("client.closers", set)


async def _close_when_loop_ends(client: AsyncBatchClient) -> None:
    """Wait until cancelled, then close ``client``'s connection pool.

    ``asyncio.run()`` cancels every task before it closes the loop, so a shared client lives as long
    as its loop and no longer. Without this, each short-lived loop (``airflow dags test`` runs every
    trigger in one of its own) left an open pool behind, which aiohttp reports at exit as
    "Unclosed client session".
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.Event().wait()
    finally:
        # Forget the loop's clients now: they refer to the loop, so the weak dictionary would never
        # let it go (1,000 asyncio.run() calls kept 1,001 loops alive).
        _shared_clients().pop(loop, None)
        await client.close()


class AsyncBatchClient(_Base):
    """The same API as :class:`BatchClient`, awaited; never blocks the event loop.

    File reads and writes for uploads, downloads and joins run in worker threads.
    ``AsyncBatchClient.shared(settings)`` returns one pooled client per settings and event
    loop, so a thousand waiters (Airflow triggers, Prefect tasks) share connections.

    Examples:
        >>> import asyncio
        >>> async def main():
        ...     async with AsyncBatchClient(api_key="sk-local", base_url="http://127.0.0.1:8765/v1") as c:
        ...         return c.settings.base_url
        >>> asyncio.run(main())
        'http://127.0.0.1:8765/v1'
    """

    follows_events = True

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        api_version: str | None = None,
        max_retries: int | None = None,
        timeout: float | httpx.Timeout | None = None,
        settings: ClientSettings | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(settings, {"api_key": api_key, "base_url": base_url, "organization": organization,
                                    "project": project, "api_version": api_version, "max_retries": max_retries,
                                    "timeout": timeout})
        self._owns_http = http_client is None
        #: Our aiohttp transport when we own the pool (the driver calls it directly), else None.
        self._transport = default_async_transport(ASYNC_POOL_LIMITS) if http_client is None else None
        if http_client is None:
            http_client = httpx.AsyncClient(timeout=http_timeout(self.settings), limits=ASYNC_POOL_LIMITS,
                                            transport=self._transport)
        self._http = http_client
        # The sleep is looked up at each call: tests shorten it by patching batch_ops.client._async_sleep.
        self._driver = AsyncDriver(self.settings, self.dialect, http_client, self._transport,
                                   sleep=lambda seconds: _async_sleep(seconds))
        self.files = AsyncFiles(self)
        self.batches = AsyncBatches(self)

    @classmethod
    def shared(cls, settings: ClientSettings) -> AsyncBatchClient:
        """One client per settings per running event loop, kept while the loop lives.

        Must be called from a coroutine. Never close a shared client yourself.
        """
        loop = asyncio.get_running_loop()
        per_loop = _shared_clients().setdefault(loop, {})
        key = settings.model_dump_json() + (settings.api_key.get_secret_value() if settings.api_key else "")
        client = per_loop.get(key)
        if client is None:
            client = per_loop[key] = cls(settings=settings)
            closer = loop.create_task(_close_when_loop_ends(client))
            closers = _closers()
            closers.add(closer)
            closer.add_done_callback(closers.discard)
        return client

    async def _run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        return await self._driver.run(plan)

    async def submit(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        *,
        endpoint: str = "",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        reattach: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        since: float | None = None,
        response_schema: Any = None,
        max_cost_usd: float | None = None,
        prices: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Validate, upload and create a batch; see :meth:`BatchClient.submit`."""
        spec = SubmitSpec.of(
            endpoint=endpoint, completion_window=completion_window, metadata=metadata,
            output_expires_after=output_expires_after, idempotency_key=idempotency_key, reattach=reattach,
            fail_on=fail_on, fail_on_request_failures=fail_on_request_failures, since=since,
            response_schema=response_schema,
            max_cost_usd=max_cost_usd, prices=prices,
        )
        return _noticed(await self.submit_spec(source, spec)).batch

    async def submit_spec(
        self, source: StorageTarget | Iterable[Mapping[str, Any]] | Source, spec: SubmitSpec
    ) -> Submission:
        """See :meth:`BatchClient.submit_spec`; file work runs in worker threads."""
        src, spec = Source.of(source), self._spec(spec)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_submit_"))
        try:
            return await self._run(submit_plan(spec, src, workdir=workdir, **self._wire,  # type: ignore[no-any-return]
                                               lookback=self.settings.idempotency_lookback, ledger=self._ledger))
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def repair(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        spec: SubmitSpec,
        chain: AttemptChain | Submission,
        *,
        round: int = 1,
        feedback: bool = False,
    ) -> RepairRound:
        """See :meth:`BatchClient.repair`; file work runs in worker threads."""
        src, spec = Source.of(source), self._spec(spec)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_repair_"))
        try:
            return await self._run(repair_plan(spec, src, _as_chain(chain), round=round,  # type: ignore[no-any-return]
                                               feedback=feedback, workdir=workdir, **self._wire,
                                               lookback=self.settings.idempotency_lookback, ledger=self._ledger))
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def results(
        self,
        batch: Batch | AttemptChain | Submission | str,
        *,
        input_path: PathLike | None = None,
        workdir: PathLike | None = None,
        response_schema: Any = None,
    ) -> AsyncIterator[ResultLine]:
        """Async version of :meth:`BatchClient.results`; file work happens in threads."""
        schema = None if response_schema is None else ResponseSchema.of(response_schema)
        if isinstance(batch, str):
            batch = await self.batches.retrieve(batch)
        chain = _ended_chain(batch)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_results_", workdir))
        try:
            pairs = await self._run(_plans.chain_results_plan(chain, tmp, **self._wire))
            if input_path and storage.is_remote(input_path):
                inp = await asyncio.to_thread(storage.stage, input_path, tmp / "input.jsonl")
            elif input_path:
                inp = Path(input_path)
            elif not (self.dialect.stores_files and self.dialect.downloads_uploads):
                # No input file to read back: the requests are the ones the chain's results name.
                named = [p for o, e, _n in pairs for p in (o, e)]
                inp = await asyncio.to_thread(functools.partial(result_ids_file, named, tmp / "input.jsonl",
                                                                id_field=self.dialect.line_shape.id_field))
            else:
                inp = cast(Path, await self.files.download(chain.attempts[0].batch.input_file_id, tmp / "input.jsonl"))
            joined = join_chain_results(input_path=inp, attempts=pairs, id_field=self.dialect.line_shape.id_field)
            read = joined if schema is None else (parse_line(line, schema) for line in joined)
            while chunk := await asyncio.to_thread(lambda: list(itertools.islice(read, 1000))):
                for line in chunk:
                    yield line
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def bill(self, batch: Batch | AttemptChain | Submission | str, *, model: str | None = None,
                   prices: Mapping[str, Any] | None = None) -> Bill:
        """Async version of :meth:`BatchClient.bill`."""
        if isinstance(batch, str):
            batch = await self.batches.retrieve(batch)
        chain = _ended_chain(batch)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_bill_"))
        try:
            return await self._run(chain_bill_plan(chain, tmp, **self._wire,  # type: ignore[no-any-return]
                                                   model=model, prices=prices))
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncBatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncFiles(_Calls):
    """``client.files`` of :class:`AsyncBatchClient`."""

    _c: AsyncBatchClient

    async def upload(self, path: StorageTarget, *, purpose: str = "batch") -> FileObject:
        """Async version of :meth:`Files.upload`; a remote file is staged in a thread."""
        async with _staged(_source_path(path)) as local:
            return await self._c._run(_plans.upload_plan(_existing(local), purpose=purpose,  # type: ignore[no-any-return]
                                                         **self._c._wire))

    retrieve = _awaited(_FilePlans.retrieve)
    list = _awaited(_FilePlans.list)

    async def download(self, file_id: str, path: StorageTarget) -> Path | StorageTarget:
        """Async version of :meth:`Files.download`; a remote target is put in a thread."""
        target = _target(path)
        async with _published(target) as local:
            written: Path = await self._c._run(_plans.download_plan(file_id, local, **self._c._wire))
        return written if isinstance(target, Path) else path

    delete = _awaited(_FilePlans.delete)


class AsyncBatches(_Calls):
    """``client.batches`` of :class:`AsyncBatchClient`."""

    _c: AsyncBatchClient

    async def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch, never twice; see :meth:`Batches.create`."""
        if idempotency_key is not None:  # the submission core: the key's chain, attach or a new attempt
            return await self._c.submit(Source(file_id=input_file_id), endpoint=endpoint,
                                        completion_window=completion_window, metadata=metadata,
                                        output_expires_after=output_expires_after, idempotency_key=idempotency_key)
        return await self._c._run(self._c._create_plan(  # type: ignore[no-any-return]
            input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
            metadata=metadata, output_expires_after=output_expires_after))

    download_results = _awaited(_BatchPlans.download_results)
    retrieve = _awaited(_BatchPlans.retrieve)
    cancel = _awaited(_BatchPlans.cancel)
    list = _awaited(_BatchPlans.list)

    async def iter_all(self, *, limit: int = 100, after: str | None = None) -> AsyncIterator[Batch]:
        """Every batch, newest first, following ``has_more`` / ``last_id``."""
        while True:
            page = await self.list(limit=limit, after=after)
            for batch in page.data:
                yield batch
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    find_by_idempotency_key = _awaited(_BatchPlans.find_by_idempotency_key)
    chain = _awaited(_BatchPlans.chain)
    wait = _awaited(_BatchPlans.wait)
    poll = _awaited(_BatchPlans.poll)
    wait_many = _awaited(_BatchPlans.wait_many)
    time_out = _awaited(_BatchPlans.time_out)


# ---------------------------------------------------------------------------------------------
# helpers shared by both
# ---------------------------------------------------------------------------------------------


def _source_path(path: StorageTarget) -> Path | Location:
    if not isinstance(path, (str, os.PathLike, Location)) and not storage.is_path_object(path):
        raise _bad_argument("path", f"path is a {type(path).__name__}",
                            "pass the path of a local file, or an s3:// (gs://, az://) URL")
    return storage.location(path)


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"No such file to upload: {p} (check the path; it must be a local JSONL file)")
    return p


def _target(path: StorageTarget) -> Path | Location:
    valid = isinstance(path, (str, os.PathLike, Location)) or storage.is_path_object(path)
    if not valid or not str(path).strip():
        raise _bad_argument("path", f"path is {storage.display(path)!r}",
                            "pass the local path (or s3:// URL, ObjectStoragePath) to write the file to")
    return storage.location(path)


@contextlib.asynccontextmanager
async def _staged(path: Path | Location) -> AsyncIterator[Path]:
    """:func:`storage.local_copy` without blocking the event loop (copies run in a thread)."""
    if isinstance(path, Path):
        yield path
        return
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_stage_"))
    try:
        yield await asyncio.to_thread(storage.stage, path, tmp / path.name)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


@contextlib.asynccontextmanager
async def _published(target: Path | Location) -> AsyncIterator[Path]:
    """:func:`storage.local_output` without blocking the event loop (the put runs in a thread)."""
    if isinstance(target, Path):
        yield target
        return
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_stage_"))
    try:
        local = tmp / target.name
        yield local
        await asyncio.to_thread(storage.publish, local, target)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


def _bad_argument(param: str, message: str, fix: str) -> InputValidationError:
    return InputValidationError([Problem(rule="invalid_argument", message=message, fix=fix, param=param)],
                                source="batch parameters")
