"""The submission core: the one plan by which every path pays for a batch, at most once.

``client.submit``, ``client.batches.create`` with a key, the Airflow operators and their retries,
the Prefect tasks and flows and their retries, job parts and the CLI all drive
:func:`submit_plan`:

1. **validate** the batch parameters and the key (pure; nothing has been sent yet), and with a
   key the input too, then take the requests' **fingerprint** (:mod:`batch_ops.fingerprint`);
2. **find the key's attempt chain for these requests** from the batch list alone
   (:mod:`batch_ops.chain`): same key and same requests → that chain; same key and other
   requests → a new chain beside the old ones, which are left alone (see *Chains* below);
3. **attach** to a running attempt, stop at an accepted outcome, or go on to make attempt ``n``
   (a batch found within its ``created_at`` second is settled first, as the reconcile does:
   :func:`_settled_plan`);
4. **prepare the input**: for ``n > 0`` keep only the requests with no success anywhere in the
   chain (read from the earlier output files);
5. **upload** it under a name derived from the attempt key and the content, or reuse the
   upload an interrupted try left behind (found by that name);
6. **create** at most once (lost answers are looked up, never blindly re-sent: ``create_plan``);
7. **reconcile**: look the attempt key up again; when a concurrent try created the same attempt,
   the later batch (by ``created_at``, then id) cancels itself and its caller attaches to the
   earlier one.

Like every plan, it yields effects and performs no I/O of its own; the clients drive it.

Chains — which batches of a key count for these requests:

* the chain whose attempts carry these requests' fingerprint (``K@F``, ``K@F.1``, …): re-attach,
  stop, or make its next attempt, as ever. A regenerated file with the same requests (another
  order, other spacing or key order, a new name) has the same fingerprint: no new upload, no new
  batch;
* none, but the key has chains of other fingerprints (the input changed under the key: an
  Airflow task cleared after its file was fixed): a **new chain** ``K@F``. Its attempts never
  mix with the others' (another namespace), the old batches are neither cancelled nor returned,
  and :attr:`Submission.notices` says so (the adapters log it as a warning). A key that goes
  A → B → A attaches to A's chain again the third time: it holds A's requests, already paid for;
* batches made before fingerprints (``K``, ``K.1``, … by earlier versions): their attempt 0 carried
  every request, so its input file is downloaded and fingerprinted. The same → that chain is
  continued (in its own spelling, so a worker still on the old version finds it too); other
  requests → a new chain, as above; the file cannot be read (deleted, expired, or attempt 0 lies
  before the lookback) → re-attach as before the upgrade, never paying twice, with a notice.

Sources: a request file (local, or staged from object storage) and request dicts are
fingerprinted from the validated file. An uploaded file's id is first matched against the
chains' attempt 0 (files never change, so the same id is the same requests: nothing is
downloaded); otherwise the file is downloaded and fingerprinted (a file the server will not
hand back counts by its id). A job part is a file like any other.

Examples:
    >>> upload_filename("af-123.1", "9f86d081884c7d65")
    'batch_ops-4d93ab99de3c7dc0-9f86d081884c7d65.jsonl'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from batch_ops import _plans, storage
from batch_ops._http import RetryPolicy
from batch_ops._plans import (
    Send,
    Sleep,
    Work,
    cancel_batch_plan,
    create_plan,
    delete_file_plan,
    download_plan,
    download_results_plan,
    list_batches_plan,
    list_files_plan,
    retrieve_batch_plan,
    upload_plan,
)
from batch_ops.chain import (
    AttemptChain,
    ChainStep,
    _order,  # the one winner rule: the reconcile and the attach share it
    chains_of,
    next_step,
)
from batch_ops.cost.bill import bill
from batch_ops.cost.budget import Spent, check_budget
from batch_ops.cost.estimate import Estimate, estimate
from batch_ops.cost.prices import PriceTable
from batch_ops.dialects import Dialect
from batch_ops.errors import (
    APIStatusError,
    AttemptsExhaustedError,
    BatchOpsError,
    InputValidationError,
    Problem,
    UnknownPriceError,
)
from batch_ops.identity import PROVEN_MAX, LegacyKey, ProvenIdentities, RunIdentity
from batch_ops.identity.fingerprint import FINGERPRINT_LENGTH, fingerprint_file, fingerprint_of_file_id, short
from batch_ops.identity.keys import (
    LOOKBACK_SKEW,
    MAX_ATTEMPTS,
    attempt_key,
    check_idempotency_key,
    new_idempotency_key,
    parse_attempt,
)
from batch_ops.identity.ledger import KeyLedger, LedgerEntry
from batch_ops.identity.owners import OWNER_METADATA_KEYS
from batch_ops.jsonl import (
    filter_requests,
    holds_neutral_requests,
    request_file,
    translate_file,
    validate_file,
    write_requests,
)
from batch_ops.models import Batch, BatchStatus, FileObject, canonical_endpoint
from batch_ops.outcomes import OutcomePolicy, describe, is_permanent
from batch_ops.results import iter_result_lines, successful_ids
from batch_ops.storage import Location
from batch_ops.structured import ResponseSchema, apply_schema_file, repair_input, schema_problems

__all__ = [
    "SETTLE_MARGIN",
    "Repair",
    "Source",
    "SubmitSpec",
    "Submission",
    "chain_bill_plan",
    "find_chain_plan",
    "find_chains_plan",
    "submit_plan",
    "upload_filename",
]

#: Seconds past the end of our batch's ``created_at`` second before the second reconcile look.
#: Two creates in the same second are ordered by id, so a try that looked before a concurrent
#: create landed must look again once no batch can still be created in that second.
SETTLE_MARGIN = 0.25
_CHUNK = 1 << 20

PathLike = str | os.PathLike[str]
SubmitPlan = Generator["Send | Sleep | Work", Any, "Submission"]


# ---------------------------------------------------------------------------------------------
# what is submitted
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """A repair round (:mod:`batch_ops._repair`): the attempt after attempt ``after`` carries only the requests
    of ``invalid`` (custom_id → why its answer was invalid), each with the reason as a new user turn when
    ``feedback``. ``round`` counts the repair rounds of the chain (for the reason a person reads).

    It is a new attempt of the same chain: found again by a retried try (attached, never paid twice), paid
    through the one submit, counted in the chain's usage. A repair attempt that failed is retried like any
    other, carrying the repaired requests that have no answer in the attempts after ``after`` yet.
    """

    after: int
    invalid: Mapping[str, str]
    feedback: bool = False
    round: int = 1


@dataclass(frozen=True)
class SubmitSpec:
    """Everything a submit needs besides the input, in one object.

    ``idempotency_key`` names the work (None: a random key, nothing looked up); ``policy`` says
    which outcomes call for a new attempt; ``since`` bounds the chain lookup (epoch seconds).
    ``reattach=False`` promises the key was never used (a job writes a part's key to disk before
    its first create): the chain lookup, upload reuse and reconcile are skipped. Lost create
    answers are still looked up before any re-send. ``legacy``: the key the same work had under an
    earlier batch_ops (``RunIdentity.legacy``); when the key has no batch of these requests, that
    key's chain is taken over (never batches whose owner names another deployment), so a task
    retried across an upgrade does not pay twice. ``proven``: the deployment's other identities
    (``RunIdentity.proven``); when neither key has a batch of these requests, a chain of this
    work made under an identity the deployment proves its own is taken over, so a try that used an
    identity a racing first task replaced is not paid for again.

    Examples:
        >>> SubmitSpec.of(endpoint="/v1/embeddings", fail_on=["failed"]).policy.names
        ('failed',)
        >>> from batch_ops.identity import RunIdentity
        >>> spec = SubmitSpec.of(endpoint="/v1/embeddings", metadata={"run": "n"},
        ...                      identity=RunIdentity.prefect_flow(flow_run_id="f1", started=1000.0))
        >>> spec.idempotency_key, spec.since, spec.metadata
        ('prefect-f1-run-batch', 400.0, {'run': 'n', 'prefect_flow_run_id': 'f1'})
    """

    #: Empty: the provider's chat endpoint (``Dialect.chat_endpoint``), for provider-neutral chat requests.
    endpoint: str = ""
    completion_window: str = "24h"
    metadata: Mapping[str, str] | None = None
    output_expires_after: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    reattach: bool = True
    policy: OutcomePolicy = field(default_factory=OutcomePolicy)
    since: float | None = None
    legacy: LegacyKey | None = None
    proven: ProvenIdentities | None = None
    #: The model of provider-neutral requests that name none (the settings' ``model``: one eval set, a
    #: model per connection).
    model: str | None = None
    #: Deprecated and ignored: the client's dialect (its settings' provider) decides how endpoints
    #: are spelled (Azure OpenAI: ``/chat/completions``).
    azure: bool = False
    #: Answers must follow this schema (:mod:`batch_ops.structured`): checked against the provider's schema
    #: subset, then written into every request line that carries none, in the provider's words
    #: (``SubmitSpec.of`` takes a pydantic model or a JSON Schema too). Part of the requests' fingerprint.
    response_schema: ResponseSchema | None = None
    #: This submit is a repair round (:class:`Repair`; made by :func:`batch_ops._repair.repair_plan`).
    repair: Repair | None = None
    #: The hard budget in USD for the whole chain (:mod:`batch_ops.cost.budget`): checked before every
    #: upload; None: no budget (the estimate is still made and shown).
    max_cost_usd: float | None = None
    #: Price overrides (``{"model": {"input": .., "output": ..}}``, USD per 1M tokens) or a
    #: :class:`~batch_ops.cost.PriceTable`; None: genai-prices' batch prices.
    prices: Any = None
    #: Estimate the cost of each attempt before its upload (always, when ``max_cost_usd`` is set).
    estimate_cost: bool = True

    @classmethod
    def of(
        cls,
        *,
        fail_on: Collection[BatchStatus | str] | None = None,
        fail_on_request_failures: bool = False,
        policy: OutcomePolicy | None = None,
        identity: RunIdentity | None = None,
        **fields: Any,
    ) -> SubmitSpec:
        """A spec from keywords: the policy given as ``fail_on`` / ``fail_on_request_failures`` (or
        ``policy``), who submits as ``identity`` (:class:`~batch_ops.identity.RunIdentity`: its owner
        record joins ``metadata``; its key, lookback start and legacy key apply unless an
        ``idempotency_key`` is given)."""
        if fields.get("response_schema") is not None:
            fields["response_schema"] = ResponseSchema.of(fields["response_schema"])
        if identity is not None:
            fields["metadata"] = identity.metadata(fields.get("metadata"))
            if fields.get("idempotency_key") is None and identity.key is not None:
                fields["idempotency_key"] = identity.key
                fields["since"] = fields.get("since") or identity.since
                fields["legacy"] = identity.legacy
                fields["proven"] = identity.proven
        return cls(policy=policy or OutcomePolicy.of(fail_on, fail_on_request_failures), **fields)


@dataclass(frozen=True)
class Source:
    """The input of a submit: a request file (local, or on object storage), request dicts, or an uploaded file's id.

    A file on object storage (an ``s3://`` URL, an ``ObjectStoragePath``, a
    :class:`~batch_ops.storage.Location`) is copied to the submit's work directory first, then
    validated and uploaded like a local one (see :mod:`batch_ops.storage`).

    Examples:
        >>> Source.of("requests.jsonl").path, Source.of([{"custom_id": "a"}]).requests is not None
        (PosixPath('requests.jsonl'), True)
        >>> Source.of(123)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: batch parameters: 1 problem:
          source: invalid_source: the source is a int ...
    """

    path: Path | Location | None = None
    requests: Iterable[Mapping[str, Any]] | None = None
    file_id: str | None = None

    @classmethod
    def of(cls, source: Any) -> Source:
        if isinstance(source, Source):
            return source
        if isinstance(source, str) and not source.strip():
            raise _bad_source("the source is an empty path")
        if isinstance(source, (str, os.PathLike, Location)) or storage.is_path_object(source):
            return cls(path=storage.location(source))
        if isinstance(source, (bytes, Mapping)) or not isinstance(source, Iterable):
            raise _bad_source(f"the source is a {type(source).__name__}")
        return cls(requests=source)


def _bad_source(message: str) -> InputValidationError:
    return InputValidationError(
        [Problem(rule="invalid_source", param="source", message=message,
                 fix="pass a JSONL request file's path, or a list of request dicts")],
        source="batch parameters",
    )


@dataclass(frozen=True)
class Submission:
    """What a submit found or made.

    ``batch`` (the chain's latest attempt) is the one to wait for, or the final one.
    ``created``: this call created it. ``carried``: requests the new attempt carries.
    ``satisfied``: every request already has a success in the chain (nothing left to pay for).
    ``cancelled``: batches this call cancelled (duplicates of a concurrent try, its own included).
    ``fingerprint``: the requests' fingerprint (None without a key: nothing was looked up).
    ``replaced``: the key's chains of *other* requests, when this call started a new chain beside
    them (``new_chain``); they are left alone. ``notices``: what a person should know, worded once
    here — a new chain, or batches made before fingerprints that could not be checked; the
    adapters and the CLI log each as a warning.
    """

    chain: AttemptChain
    step: ChainStep
    created: bool = False
    carried: int | None = None
    reused_upload: bool = False
    satisfied: bool = False
    cancelled: tuple[str, ...] = ()
    fingerprint: str | None = None
    replaced: tuple[AttemptChain, ...] = ()
    notices: tuple[str, ...] = ()
    #: The cost estimate of the attempt this call created; when it found its chain instead (a retry that re-attaches),
    #: of the requests it was given. None: no estimate (a notice says why), or a repair round attached to.
    estimate: Estimate | None = None
    #: What the chain's earlier attempts cost, when a budget asked (actual where known, else their bound).
    spent: Spent | None = None
    #: Why there is no estimate (no price for the model, an uploaded file without a budget), or None.
    cost_note: str | None = None

    @property
    def new_chain(self) -> bool:
        """The key had batches of other requests: this call started a chain of its own for these."""
        return bool(self.replaced)

    @property
    def batch(self) -> Batch:
        latest = self.chain.latest
        assert latest is not None, "a submission always holds a batch"
        return latest

    def lines(self) -> tuple[tuple[str, str], ...]:
        """What this submit did, for people, worded once here: ``(level, text)`` pairs, ``level`` being
        ``"info"`` (created or re-attached) or ``"warning"`` (batches it cancelled, :attr:`notices`).
        The Airflow operator and the Prefect tasks log them (:meth:`log`), the CLI prints them.

        Examples:
            >>> from batch_ops.chain import Attempt
            >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="file-1", status="validating",
            ...           created_at=0)
            >>> sub = Submission(AttemptChain("k", (Attempt(0, b),)), ChainStep("create", 0, b, "no batch carries "
            ...                  "this key yet"), created=True, carried=2)
            >>> for level, text in sub.lines():
            ...     print(level, text)
            info Created batch b1 from file file-1 (attempt 0, carrying 2 requests; no batch carries this key yet)
        """
        batch, step = self.batch, self.step
        if self.created:
            carried = f", carrying {self.carried} requests" if self.carried is not None else ""
            source = f" from file {batch.input_file_id}" if batch.input_file_id else ""
            said = f"Created batch {batch.id}{source} (attempt {step.number}{carried}; {step.reason})"
        else:
            said = f"Re-attaching to batch {batch.id} ({describe(batch)}): {step.reason}"
        costs = (("info", self.estimate.summary()),) if self.estimate is not None and self.created else (
            (("info", self.cost_note),) if self.cost_note and self.created else ())
        return (("info", said), *costs,
                *(("warning", f"Cancelled batch {c}: a concurrent try created the same attempt")
                  for c in self.cancelled),
                *(("warning", notice) for notice in self.notices))

    def log(self, logger: Any) -> None:
        """Log :meth:`lines` to ``logger`` (a ``logging.Logger``, Airflow's ``self.log``, Prefect's run logger)."""
        for level, text in self.lines():
            getattr(logger, level)("%s", text)


#: Batch ids named in a notice, at most.
_NOTICE_IDS = 6


def _ids(chain: AttemptChain) -> str:
    ids = chain.batch_ids
    more = f" and {len(ids) - _NOTICE_IDS} more" if len(ids) > _NOTICE_IDS else ""
    return ", ".join(ids[:_NOTICE_IDS]) + more


def new_chain_notice(key: str, fingerprint: str, replaced: Iterable[tuple[str | None, AttemptChain]]) -> str:
    """The warning for a key whose batches carry other requests: a new chain, the old one left alone.

    Examples:
        >>> old = AttemptChain("k", fingerprint="aaaaaaaa00000000")
        >>> print(new_chain_notice("k", "bbbbbbbb11111111", [(old.fingerprint, old)]))  # doctest: +NORMALIZE_WHITESPACE
        Idempotency key 'k': the requests changed (fingerprint aaaaaaaa (no batch) -> bbbbbbbb). Starting a new chain of
        batches for them; the key's earlier batches carry the old requests and are left alone (not cancelled, not
        re-used, their results not returned).
    """
    olds = "; ".join(f"{short(fp)} ({_ids(chain) or 'no batch'})" for fp, chain in replaced)
    return (f"Idempotency key {key!r}: the requests changed (fingerprint {olds} -> {short(fingerprint)}). "
            "Starting a new chain of batches for them; the key's earlier batches carry the old requests and are "
            "left alone (not cancelled, not re-used, their results not returned).")


def _unverified_notice(key: str, chain: AttemptChain, why: str) -> str:
    return (f"Idempotency key {key!r}: batches {_ids(chain)} were made before batch_ops wrote request fingerprints, "
            f"and {why}: re-attaching to them as before, so nothing is paid twice. If the requests changed since, "
            "submit them under a new key.")


# ---------------------------------------------------------------------------------------------
# file work (run through Work effects: in a thread by the async client)
# ---------------------------------------------------------------------------------------------


def upload_filename(attempt: str, digest: str) -> str:
    """The name an attempt's input is uploaded under: the attempt key's hash and the content's.

    A try that died between upload and create left this file behind; the next try finds it by
    name and size and creates from it instead of uploading again.
    """
    key_hash = hashlib.sha256(attempt.encode()).hexdigest()[:16]
    return f"batch_ops-{key_hash}-{digest[:16]}.jsonl"


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class _Input:
    path: Path | None
    lines: int | None
    #: The model the requests want (a translated neutral request's, for an API whose model is the batch's).
    model: str | None = None


def _prepare(source: Source, endpoint: str, workdir: Path, dialect: Dialect, model: str | None = None,
             schema: ResponseSchema | None = None) -> _Input:
    """Validate a request file, or write request dicts to a validated file in ``workdir``, by ``dialect``'s rules;
    the model the lines want must be one the batch can have (``Dialect.lines_model_problems``). With a
    ``schema``, the lines are written again with it in the provider's words (:mod:`batch_ops.structured`)."""
    prepared = _prepared(source, endpoint, workdir, dialect, model)
    problems = dialect.lines_model_problems(prepared.model, endpoint) if prepared.path is not None else []
    if problems:
        raise InputValidationError(problems, source=str(prepared.path))
    if schema is None or prepared.path is None:
        return prepared
    dest = workdir / "structured.jsonl"
    apply_schema_file(prepared.path, dest, schema, form=dialect.structured_form,
                      body_field=dialect.line_shape.body_field)
    return replace(prepared, path=dest)


#: The endpoints whose answers can be held to a response schema, on an OpenAI-shaped API.
_STRUCTURED_ENDPOINTS = ("/v1/chat/completions", "/v1/responses")


def check_response_schema(spec: SubmitSpec, source: Source, dialect: Dialect) -> None:
    """Refuse, before anything is read or sent, a response schema the provider would refuse (its subset:
    :func:`batch_ops.structured.schema_problems`), on an endpoint that gives no structured answers, or
    with an uploaded file (whose lines cannot be given the schema)."""
    schema = spec.response_schema
    if schema is None:
        return
    problems = schema_problems(schema.schema, dialect.structured_form)
    if dialect.structured_form == "openai" and canonical_endpoint(spec.endpoint) not in _STRUCTURED_ENDPOINTS:
        problems.append(Problem(rule="unsupported_endpoint", param="endpoint",
                                message=f"{spec.endpoint} gives no structured answers",
                                fix="use a response schema with /v1/chat/completions or /v1/responses"))
    if source.file_id is not None:
        problems.append(Problem(rule="invalid_source", param="source", message="a response schema is written into "
                                "each request line, and an uploaded file cannot be changed",
                                fix="pass the request file or the request dicts"))
    if problems:
        raise InputValidationError(problems, source=f"response schema {schema.name!r} for {dialect.title}")


def _prepared(source: Source, endpoint: str, workdir: Path, dialect: Dialect, model: str | None) -> _Input:
    rules = dialect.line_rules(endpoint)
    if model:
        rules["model"] = model  # neutral requests that name no model run on the connection's
    local: Path | None = None
    if isinstance(source.path, Location):
        local = storage.stage(source.path, workdir / "input.jsonl")
    elif source.path is not None:
        local = request_file(source.path)  # a missing file is bad input, naming the fix
    if local is not None:
        path = local
        if holds_neutral_requests(path):
            # Provider-neutral chat requests: written in this provider's words, then paid for as such.
            dest = workdir / "requests.jsonl"
            report = translate_file(path, dest, **rules)
            return _Input(dest, report.lines, report.model)
        report = validate_file(path, **rules)
        return _Input(path, report.lines, report.model)
    if source.requests is not None:
        path = workdir / "requests.jsonl"
        report = write_requests(source.requests, path, **rules)
        return _Input(path, report.lines, report.model)
    return _Input(None, None)


def _remaining(full: Path, done: set[str], dest: Path, id_field: str = "custom_id") -> int:
    return filter_requests(full, exclude=done, dest=dest, id_field=id_field)


# ---------------------------------------------------------------------------------------------
# lookups
# ---------------------------------------------------------------------------------------------


def _scan_plan(
    *, since: float, keep: Callable[[Batch], bool], dialect: Dialect, policy: RetryPolicy,
    stop_before: Callable[[], float] | None = None
) -> Generator[Send | Sleep, Any, list[Batch]]:
    """Newest-first scan of the batch list back to ``since``, keeping what ``keep`` accepts."""
    found: list[Batch] = []
    after: str | None = None
    while True:
        page = yield from list_batches_plan(limit=100, after=after, dialect=dialect, policy=policy)
        found.extend(b for b in page.data if keep(b))
        if not page.has_more or not page.data or not page.last_id:
            return found
        bound = max(since, stop_before()) if stop_before is not None else since
        if min(b.created_at for b in page.data) < bound:
            return found
        after = page.last_id


def _chains_plan(
    keys: Sequence[tuple[str, Callable[[Batch], bool]]],
    *,
    since: float,
    dialect: Dialect,
    policy: RetryPolicy,
    until: Callable[[Batch, str | None, int], bool] | None = None,
    also: Callable[[Batch], bool] | None = None,
    kept: list[Batch] | None = None,
) -> Generator[Send | Sleep, Any, list[dict[str | None, AttemptChain]]]:
    """The chains of each of ``keys`` (a key, and which of its batches count) in one scan; see
    :func:`find_chains_plan`. Batches for which ``also`` is true are appended to ``kept`` too."""
    marks: list[int] = []

    def keep(batch: Batch) -> bool:
        if also is not None and kept is not None and also(batch):
            kept.append(batch)
        value = dialect.key_of(batch)
        for key, admits in keys:
            parsed = parse_attempt(value, key)
            if parsed is not None and admits(batch):
                if until is not None and until(batch, *parsed):
                    marks.append(batch.created_at)
                return True
        return False

    def stop_before() -> float:
        return min(marks) - LOOKBACK_SKEW if marks else float("-inf")

    batches = yield from _scan_plan(since=since, keep=keep, dialect=dialect, policy=policy, stop_before=stop_before)
    return [chains_of(key, [b for b in batches if admits(b)], key_of=dialect.key_of) for key, admits in keys]


def _every(batch: Batch) -> bool:
    return True


def find_chains_plan(
    key: str, *, since: float, dialect: Dialect, policy: RetryPolicy,
    until: Callable[[Batch, str | None, int], bool] | None = None
) -> Generator[Send | Sleep, Any, dict[str | None, AttemptChain]]:
    """Every chain of ``key`` in the batch list back to ``since``, by fingerprint (one scan).

    ``until(batch, fingerprint, number)`` marks the attempt 0 the caller is after: a chain's
    attempts are created in order, so once its attempt 0 is seen nothing older can belong to it,
    and the scan stops a little (the clock skew) before it instead of going back to ``since``.
    """
    (chains,) = yield from _chains_plan([(key, _every)], since=since, dialect=dialect, policy=policy, until=until)
    return chains


_Chains = Mapping[str | None, AttemptChain]


def _own_chains_plan(
    key: str, legacy: LegacyKey | None, *, since: float, dialect: Dialect, policy: RetryPolicy,
    until: Callable[[Batch, str | None, int], bool], proven: ProvenIdentities | None = None,
    kept: list[Batch] | None = None,
) -> Generator[Send | Sleep, Any, tuple[_Chains, _Chains]]:
    """The chains of ``key``, and those of the ``legacy`` key the work had before (only the batches it
    may take over: :meth:`LegacyKey.adopts`), in one scan; the batches whose owner names the work
    (``proven``) go to ``kept``, for :func:`_proven_plan`."""
    keys = [(key, _every)] + ([(legacy.key, legacy.adopts)] if legacy is not None else [])
    chains = yield from _chains_plan(keys, since=since, dialect=dialect, policy=policy, until=until,
                                     also=proven.names_task if proven is not None else None, kept=kept)
    return chains[0], (chains[1] if legacy is not None else {})


def _taken_over(identity: str, proven: ProvenIdentities) -> tuple[str]:
    return (f"this work's chain was made under {identity}, an earlier identity of this deployment (made by tasks "
            f"at the same moment; it is now {proven.deployment}): taking it over",)


def _proven_plan(
    proven: ProvenIdentities, batches: Sequence[Batch], fingerprint: str, *, dialect: Dialect
) -> Generator[Work, Any, _Choice | None]:
    """The chain of these requests that this work made under another identity of its deployment, or None.

    Each identity the work's ``batches`` name is asked about (``proven.proves``, orchestrator I/O, so a
    :class:`Work`), newest first; an identity that is not proven is never taken over: it may be
    another deployment's.
    """
    for identity in proven.candidates(batches):
        if not (yield Work(partial(proven.proves, identity))):
            continue
        chains = chains_of(proven.key_for(identity), batches, key_of=dialect.key_of)
        if fingerprint in chains:
            return _Choice(chains[fingerprint], notices=_taken_over(identity, proven))
    return None


def _proven_ledger_plan(
    proven: ProvenIdentities, key: str, fingerprint: str, ledger: KeyLedger, *, dialect: Dialect,
    policy: RetryPolicy,
) -> Generator[Send | Sleep | Work, Any, _Choice | None]:
    """:func:`_proven_plan` where the key ledger records the chains (a dialect whose batches cannot carry the
    key): the identities this task instance created under (:meth:`KeyLedger.mark_identity`), the latest
    first, each asked about; the chain of these requests under a proven one is copied into ``key``'s
    record (held under its lease), so the next attempt and the next try continue it under ``key``."""
    identities = yield Work(partial(ledger.identities, proven.task))
    for identity in [i for i in identities if i != proven.deployment][:PROVEN_MAX]:
        if not (yield Work(partial(proven.proves, identity))):
            continue
        old_key = proven.key_for(identity)
        # Resolving a lost create needs that key's lease; a try of the old identity left none to resolve.
        chains = yield from _ledger_chains_plan(old_key, ledger, dialect=dialect, policy=policy, resolve=False)
        if fingerprint in chains:
            yield Work(partial(ledger.adopt, old_key, key, fingerprint))
            return _Choice(replace(chains[fingerprint], key=key), notices=_taken_over(identity, proven))
    return None


def _proven_listed_plan(
    proven: ProvenIdentities, fingerprint: str, index: KeyLedger, *, since: float, dialect: Dialect,
    policy: RetryPolicy,
) -> Generator[Send | Sleep | Work, Any, _Choice | None]:
    """:func:`_proven_plan` for batches that carry the key but no owner record: the identities this task
    instance created under come from the key ledger (:meth:`KeyLedger.identities`), the latest first; a
    proven one's key is looked up in the batch list (one more scan, only on a try after the race)."""
    identities = yield Work(partial(index.identities, proven.task))
    for identity in [i for i in identities if i != proven.deployment][:PROVEN_MAX]:
        if not (yield Work(partial(proven.proves, identity))):
            continue
        (chains,) = yield from _chains_plan([(proven.key_for(identity), _every)], since=since, dialect=dialect,
                                            policy=policy, until=_attempt_zero(fingerprint))
        if fingerprint in chains:
            return _Choice(chains[fingerprint], notices=_taken_over(identity, proven))
    return None


def find_chain_plan(
    key: str, *, since: float, dialect: Dialect, policy: RetryPolicy, fingerprint: str | None = None,
    ledger: KeyLedger | None = None,
) -> Generator[Send | Sleep | Work, Any, AttemptChain]:
    """The chain of ``key`` for the requests of ``fingerprint``, from the batch list (one scan), or from
    the key ledger's record when the dialect's batches cannot carry the key (``ledger``; a create whose
    answer was lost is not resolved here: the next submit of the key does that).

    Without a fingerprint: the key's newest chain (the one whose latest batch is newest; a key
    used for one set of requests has just one). Newest first, the first batch of the key seen
    belongs to it, so the scan stops a little before that chain's attempt 0.
    """
    wanted: list[str | None] = [fingerprint] if fingerprint is not None else []

    def until(batch: Batch, found: str | None, number: int) -> bool:
        if not wanted:
            wanted.append(found)
        return number == 0 and found == wanted[0]

    if ledger is not None and not dialect.carries_key:
        chains = yield from _ledger_chains_plan(key, ledger, dialect=dialect, policy=policy, resolve=False)
    else:
        chains = yield from find_chains_plan(key, since=since, dialect=dialect, policy=policy, until=until)
    if fingerprint is not None:
        return chains.get(fingerprint) or AttemptChain(key, fingerprint=fingerprint)
    if not chains:
        return AttemptChain(key)
    return max(chains.values(), key=lambda c: max(_order(b) for b in c.batches))


def _find_upload_plan(
    filename: str, *, size: int, since: float, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, FileObject | None]:
    """An upload of this attempt's exact input left by an interrupted try, if the list shows one."""
    after: str | None = None
    while True:
        params: dict[str, Any] = {"order": "desc", "limit": 100}
        if after:
            params["after"] = after
        try:
            page = yield from list_files_plan(purpose=dialect.upload_purpose, params=params, dialect=dialect,
                                              policy=policy)
        except APIStatusError as exc:
            if is_permanent(exc):  # a server that cannot list files this way: just upload
                return None
            raise
        for f in page.data:
            if f.filename == filename and f.bytes == size and (f.status or "processed") not in ("error", "deleted"):
                return f
        if not page.has_more or not page.data or not page.last_id:
            return None
        if min((f.created_at or 0) for f in page.data) < since:
            return None
        after = page.last_id


def _full_input_plan(
    source: Source, prepared: _Input, downloaded: Path | None, *, workdir: Path, dialect: Dialect,
    policy: RetryPolicy,
) -> Generator[Send | Sleep | Work, Any, Path]:
    """Every request of the work, as a local file: the prepared one, or the uploaded source read back."""
    full = prepared.path or downloaded
    if full is None:  # an uploaded file as the source: read it back to filter it
        full = workdir / "input.jsonl"
        yield from download_plan(str(source.file_id), full, dialect=dialect, policy=policy)
    return full


def _attempts_after(chain: AttemptChain, number: int) -> AttemptChain:
    return replace(chain, attempts=tuple(a for a in chain.attempts if a.number > number))


def _repair_step(chain: AttemptChain, step: ChainStep, repair: Repair) -> ChainStep:
    """The step of a repair round: the attempt after ``repair.after`` — made now if the chain ends at that
    attempt with an accepted outcome, else the chain's own step (it was made already: attach to it, or
    retry it as any attempt)."""
    last = chain.last
    if last is None or last.number < repair.after:
        raise BatchOpsError(f"Repair round {repair.round} of key {chain.key!r}: the chain has no attempt "
                            f"{repair.after} (it holds {chain.batch_ids or 'no batch'}); nothing was created. Fix: "
                            "repair the chain the results were read from")
    if last.number > repair.after or step.action != "done":
        return step
    number = repair.after + 1
    if number >= MAX_ATTEMPTS:
        raise AttemptsExhaustedError(f"Key {chain.key!r} made {number} attempts; not paying for a repair round: "
                                     "the invalid answers are delivered as they are")
    return ChainStep("create", number, None, f"repair round {repair.round}: {len(repair.invalid)} invalid answers "
                     f"of attempt {repair.after} ({last.batch.id})")


def _successes_plan(
    chain: AttemptChain, *, workdir: Path, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, set[str]]:
    """The custom_ids with a success in any batch of the chain (duplicates included)."""
    paths: list[Path] = []
    for batch in chain.batches:
        found = yield from download_results_plan(batch, workdir, dialect=dialect, policy=policy, kinds=("output",))
        if found.output is not None:
            paths.append(found.output)
    done: set[str] = yield Work(partial(successful_ids, paths))
    return done


def _cancel_plan(batches: Iterable[Batch], *,
                 dialect: Dialect, policy: RetryPolicy) -> Generator[Send | Sleep, Any, list[Batch]]:
    """Cancel each batch; returns each one as it now stands.

    A duplicate can end before its cancel arrives (a fast server finishes a small batch within the
    settle second): the API then refuses the cancel (400/409). That is not an error of the submit —
    the batch is looked at again and returned as it is (its finished work stays in the chain).
    """
    cancelled = []
    for batch in batches:
        try:
            cancelled.append((yield from cancel_batch_plan(batch.id, dialect=dialect, policy=policy)))
        except APIStatusError as exc:
            if exc.status_code not in (400, 409):
                raise
            now = yield from retrieve_batch_plan(batch.id, dialect=dialect, policy=policy)
            if not (now.status.is_terminal or now.status in (BatchStatus.CANCELLING, BatchStatus.FINALIZING)):
                raise
            cancelled.append(now)
    return cancelled


def _settle_at(batch: Batch) -> float:
    """When no batch created in ``batch``'s second (that could still come before it by id) can appear any more."""
    return batch.created_at + 1 + SETTLE_MARGIN


def _attempt_batches_plan(
    attempt: str, *, since: float, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, list[Batch]]:
    """Every batch that carries the attempt key ``attempt``, back to ``since``."""
    def same(batch: Batch) -> bool:
        return dialect.key_of(batch) == attempt

    return (yield from _scan_plan(since=since, keep=same, dialect=dialect, policy=policy))


def _settled_plan(
    chain: AttemptChain, *, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, AttemptChain]:
    """``chain`` with its last attempt's batch as the racing creators' reconcile will have it.

    A try that finds the key's batch does not create, so it has no reconcile of its own. But the
    batch it found may be one that a create racing in the same ``created_at`` second beats by id
    (:func:`_reconcile_plan`); its creator then cancels it, and a try that attached to it waits on a
    cancelled batch while the others use the winner. So, like the reconcile, a try that looked before
    the found batch's second settled waits until it has, looks again, and takes the earliest batch of
    the attempt by the same order (``chains_of``'s): the winner every try agrees on.
    """
    last = chain.last
    if last is None:
        return chain
    settle_at = _settle_at(last.batch)
    if _plans.clock() >= settle_at:
        return chain
    yield Sleep(max(0.0, settle_at - _plans.clock()))  # no reason: an ordinary wait, not a retry to warn of
    seen = yield from _attempt_batches_plan(chain.attempt_key(last.number), since=last.batch.created_at - LOOKBACK_SKEW,
                                            dialect=dialect, policy=policy)
    known = {b.id for b in seen}
    now = chains_of(chain.key, [*seen, *(b for b in (last.batch, *last.duplicates) if b.id not in known)],
                    key_of=dialect.key_of)
    (settled,) = now.values()
    (attempt,) = settled.attempts
    return chain.with_attempt(last.number, attempt.batch, attempt.duplicates)


def _reconcile_plan(
    attempt: str, ours: Batch, *, since: float, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, tuple[Batch, list[Batch]]]:
    """Collapse concurrent creates of one attempt: the earliest batch stays, the others cancel.

    Returns ``(the batch to use, batches cancelled here)``. The order is ``(created_at, id)``, the
    same for every try. A try that sees an earlier batch cancels its own at once. But a create
    that lands after our look, in the same ``created_at`` second, may still come first by id; so
    every try looks again once no batch can be created in its own second any more, and uses the
    earliest batch it sees then (the winner's second is never later than ours).
    """
    looked_at = _plans.clock()
    rivals = yield from _attempt_batches_plan(attempt, since=since, dialect=dialect, policy=policy)
    cancelled: list[Batch] = []
    if min([ours, *rivals], key=_order).id != ours.id:
        cancelled = yield from _cancel_plan([ours], dialect=dialect, policy=policy)
    settle_at = _settle_at(ours)
    if looked_at < settle_at:
        yield Sleep(max(0.0, settle_at - _plans.clock()))
        rivals = yield from _attempt_batches_plan(attempt, since=since, dialect=dialect, policy=policy)
    winner = min([ours, *rivals], key=_order)
    if winner.id != ours.id and not cancelled:
        cancelled = yield from _cancel_plan([ours], dialect=dialect, policy=policy)
    return winner, cancelled


# ---------------------------------------------------------------------------------------------
# a dialect without a file store, and whose batches cannot carry the key: the key ledger
# ---------------------------------------------------------------------------------------------


def _lost_create_plan(
    entry: LedgerEntry, ledger: KeyLedger, *, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, Batch | None]:
    """The batch a create recorded only as an intent made, if the list shows exactly one that can be it
    (see :mod:`batch_ops.identity.ledger`); None when none can; an error naming them when several can."""
    start, end = entry.intent_at - LOOKBACK_SKEW, entry.intent_at + policy.max_elapsed + LOOKBACK_SKEW

    def fits(batch: Batch) -> bool:
        return start <= batch.created_at <= end and batch.request_counts.total == entry.carried

    candidates = yield from _scan_plan(since=start, keep=fits, dialect=dialect, policy=policy)
    if not candidates:
        return None
    claimed = yield Work(ledger.claimed)
    free = [b for b in candidates if b.id not in claimed]
    if len(free) > 1:
        ids = ", ".join(b.id for b in free)
        raise BatchOpsError(
            f"Attempt {entry.attempt!r}: its create (carrying {entry.carried} requests, sent at "
            f"{entry.intent_at:.0f}) lost its answer, and {len(free)} batches of that size created then are recorded "
            f"under no key: {ids}. Nothing was created. Fix: cancel and delete the ones this run did not create, "
            "then try again (the one left is recorded and attached)")
    return free[0] if free else None


def _ledger_chains_plan(
    key: str, ledger: KeyLedger, *, dialect: Dialect, policy: RetryPolicy, resolve: bool = True
) -> Generator[Send | Sleep | Work, Any, dict[str | None, AttemptChain]]:
    """The chains of ``key`` from the ledger's record: each recorded batch retrieved; with ``resolve``
    (a submit, holding the key's lease) an intent without a batch is resolved first
    (:func:`_lost_create_plan`), else left out."""
    entries: dict[str, LedgerEntry] = yield Work(partial(ledger.entries, key))
    attempt_of: dict[str, str] = {}
    for attempt, entry in entries.items():
        batch_id = entry.batch_id
        if batch_id is None and not resolve:
            continue
        if batch_id is None:
            found = yield from _lost_create_plan(entry, ledger, dialect=dialect, policy=policy)
            if found is None:
                yield Work(partial(ledger.forget, key, attempt))  # the create never landed
                continue
            batch_id = found.id
            yield Work(partial(ledger.record, key, attempt, batch_id, at=_plans.clock()))
        attempt_of[batch_id] = attempt
    batches = []
    for batch_id, attempt in attempt_of.items():
        try:
            batches.append((yield from retrieve_batch_plan(batch_id, dialect=dialect, policy=policy)))
        except APIStatusError as exc:
            if exc.status_code != 404:
                raise
            # Deleted: what it ran cannot be known any more. Paying again is the caller's call, not ours.
            raise BatchOpsError(
                f"Idempotency key {key!r}: the key ledger ({ledger.describe(key)}) records batch {batch_id} (attempt "
                f"{attempt!r}), which the API no longer has (deleted). Nothing was created. Fix: submit under a new "
                "key, or remove the key's record from the ledger to pay for these requests again") from exc
    return chains_of(key, batches, key_of=lambda b: attempt_of.get(b.id))


def _inline_create_plan(
    requests: Path, *, key: str, attempt: str, ledger: KeyLedger, workdir: Path, dialect: Dialect,
    policy: RetryPolicy,
) -> Generator[Send | Sleep | Work, Any, tuple[Batch, int]]:
    """Create a batch that carries ``requests`` itself (no file store): the body written to a work file and
    streamed; the intent recorded before the create is sent, the batch right after; a lost answer looked
    for as the ledger says (never re-sent blindly). Returns the batch and how many requests it carries."""
    body = workdir / f"create-{hashlib.sha256(attempt.encode()).hexdigest()[:16]}.json"
    carried: int = yield Work(partial(dialect.inline_body, requests, body))
    sent_at = _plans.clock()
    yield Work(partial(ledger.intend, key, attempt, carried=carried, at=sent_at))
    entry = LedgerEntry(attempt, sent_at, carried)

    def lookup(since: float) -> Generator[Send | Sleep | Work, Any, Batch | None]:
        return (yield from _lost_create_plan(entry, ledger, dialect=dialect, policy=policy))

    try:
        batch = yield from create_plan({}, key=attempt, key_may_exist=False, dialect=dialect, policy=policy,
                                       lookback=0.0, send=dialect.create_from_file(body), lookup=lookup)
    except BatchOpsError as exc:
        if is_permanent(exc):  # refused for good: nothing was created, the intent is void
            yield Work(partial(ledger.forget, key, attempt))
        raise
    yield Work(partial(ledger.record, key, attempt, batch.id, at=_plans.clock()))
    yield Work(partial(body.unlink, missing_ok=True))
    return batch, carried


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


#: The widest fingerprint, for checking before anything is sent that the longest attempt key fits.
_WIDEST = "f" * FINGERPRINT_LENGTH


def _made_from(file_id: str) -> Callable[[Batch, str | None, int], bool]:
    def until(batch: Batch, fingerprint: str | None, number: int) -> bool:
        return number == 0 and batch.input_file_id == file_id
    return until


def _attempt_zero(fingerprint: str) -> Callable[[Batch, str | None, int], bool]:
    def until(batch: Batch, found: str | None, number: int) -> bool:
        return number == 0 and found == fingerprint
    return until


def _chain_made_from(chains: Mapping[str | None, AttemptChain], file_id: str) -> AttemptChain | None:
    """The chain whose attempt 0 was created from this very file (files never change: same requests)."""
    found = [c for c in chains.values() if c.attempts and c.attempts[0].number == 0
             and c.attempts[0].batch.input_file_id == file_id]
    found.sort(key=lambda c: c.fingerprint is None)  # a fingerprinted chain before one made before fingerprints
    return found[0] if found else None


def _fingerprint_plan(
    source: Source, prepared: _Input, *, workdir: Path, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, tuple[str, Path | None]]:
    """The requests' fingerprint, and the path of an uploaded source downloaded to take it (else None)."""
    if prepared.path is not None:
        fp = yield Work(partial(fingerprint_file, prepared.path))
        return fp.value, None
    file_id = str(source.file_id)
    target = workdir / "input.jsonl"
    try:
        yield from download_plan(file_id, target, dialect=dialect, policy=policy)
    except APIStatusError as exc:
        if not is_permanent(exc):
            raise
        return fingerprint_of_file_id(file_id).value, None  # the server will not hand it back
    fp = yield Work(partial(fingerprint_file, target))
    return fp.value, target


def _legacy_fingerprint_plan(
    chain: AttemptChain, *, workdir: Path, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, tuple[str | None, str]]:
    """The fingerprint of a chain made before fingerprints, from its attempt 0's input (which
    carried every request): ``(fingerprint, "")``, or ``(None, why it cannot be known)``."""
    first = chain.attempts[0]
    if first.number != 0:
        return None, f"their attempt 0 is older than the lookback (the oldest found is attempt {first.number})"
    target = workdir / f"{first.batch.id}.input.jsonl"
    try:
        yield from download_plan(first.batch.input_file_id, target, dialect=dialect, policy=policy)
    except APIStatusError as exc:
        if not is_permanent(exc):
            raise
        return None, f"the input file of {first.batch.id} cannot be read back (HTTP {exc.status_code})"
    fp = yield Work(partial(fingerprint_file, target))
    yield Work(partial(target.unlink, missing_ok=True))
    return fp.value, ""


@dataclass(frozen=True)
class _Choice:
    chain: AttemptChain
    replaced: tuple[AttemptChain, ...] = ()
    notices: tuple[str, ...] = ()
    reason: str = ""  # why a new chain, for ChainStep.reason


def _choose_plan(
    key: str, fingerprint: str, chains: Mapping[str | None, AttemptChain], *, workdir: Path, dialect: Dialect,
    policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, _Choice]:
    """The chain these requests belong to among the key's chains (see *Chains* in the module docstring)."""
    if fingerprint in chains:
        return _Choice(chains[fingerprint])
    others: list[tuple[str | None, AttemptChain]] = [(f, c) for f, c in chains.items() if f is not None]
    legacy = chains.get(None)
    if legacy is not None:
        found, why = yield from _legacy_fingerprint_plan(legacy, workdir=workdir, dialect=dialect, policy=policy)
        if found is None:
            return _Choice(legacy, notices=(_unverified_notice(key, legacy, why),))
        if found == fingerprint:
            return _Choice(legacy)
        others.append((found, legacy))
    if not others:
        return _Choice(AttemptChain(key, fingerprint=fingerprint))
    others.sort(key=lambda fc: min(_order(b) for b in fc[1].batches))
    olds = ", ".join(short(f) for f, _ in others)
    return _Choice(AttemptChain(key, fingerprint=fingerprint), tuple(c for _, c in others),
                   (new_chain_notice(key, fingerprint, others),),
                   f"the key's earlier batches carry other requests (fingerprint {olds}, now {short(fingerprint)}): "
                   "a new chain")


def submit_plan(
    spec: SubmitSpec, source: Source, *, workdir: Path, dialect: Dialect, policy: RetryPolicy, lookback: float,
    ledger: KeyLedger | None = None,
) -> Generator[Send | Sleep | Work, Any, Submission]:
    """Validate → fingerprint → find the chain → attach, or upload → create at most once → reconcile.

    ``workdir`` is an empty scratch directory the driver owns (and removes afterwards). ``ledger``: the
    key ledger the settings name (:mod:`batch_ops.identity.ledger`). A keyed submit holding one takes the
    key's lease first and keeps it until its batch exists, so tries of one key take turns: two tries at
    the same moment make one batch, and the later one attaches to it instead of creating a duplicate
    that runs (and is billed) until it cancels itself. Where the dialect's batches carry the key, the
    ledger serves only that lease: the key's batches are still found by listing and reconciled after
    the create (the second line of defence: a lease taken over after a stall, a list that lags). Where
    they cannot (``carries_key`` False), the ledger is required and also records key → batch.
    """
    if not spec.endpoint:
        # Provider-neutral chat requests: the provider's chat endpoint (Gemini's names the model).
        spec = replace(spec, endpoint=dialect.chat_endpoint(spec.model))
    check_response_schema(spec, source, dialect)
    if source.file_id is not None and not dialect.stores_files:
        raise InputValidationError([Problem(
            rule="invalid_source", param="source", message=f"{dialect.title} keep no uploaded files: a batch carries "
            f"its requests (got file id {source.file_id!r})", fix="pass the request file or the request dicts")],
            source="batch parameters")
    if ledger is None and not dialect.carries_key:
        raise BatchOpsError(f"{dialect.title} batches cannot carry the idempotency key: a submit needs a key ledger "
                            "(the clients pass the one ClientSettings.key_ledger names)")
    # Where the batches carry the key, they are its record: the ledger only lends the key's lease.
    records = None if dialect.carries_key else ledger
    given = spec.idempotency_key is not None
    key = check_idempotency_key(spec.idempotency_key) if given else new_idempotency_key()
    assert key is not None
    if ledger is None or not (given and spec.reattach):
        found = yield from _submit_plan(spec, source, key, workdir=workdir, dialect=dialect, policy=policy,
                                        lookback=lookback, ledger=records)
    else:
        found = yield from _leased_plan(spec, source, key, workdir=workdir, dialect=dialect, policy=policy,
                                        lookback=lookback, ledger=ledger, records=records)
    owner = {k: v for k, v in (spec.metadata or {}).items() if k in OWNER_METADATA_KEYS}
    if found.created and owner and ledger is not None and not dialect.carries_metadata:
        # The batch cannot carry its owner record: the orphan sweep finds it in the ledger.
        yield Work(partial(ledger.own, found.batch.id, owner))
    return found


def _leased_plan(
    spec: SubmitSpec, source: Source, key: str, *, workdir: Path, dialect: Dialect, policy: RetryPolicy,
    lookback: float, ledger: KeyLedger, records: KeyLedger | None,
) -> Generator[Send | Sleep | Work, Any, Submission]:
    """:func:`_submit_plan` holding the key's lease (taken, waited for, given back however it ends)."""
    lease = yield Work(partial(ledger.lease, key))
    waited = _plans.clock()
    while not (yield Work(lease.acquire)):
        if _plans.clock() - waited > max(policy.max_elapsed, 60.0):
            raise BatchOpsError(f"Idempotency key {key!r}: another try ({lease.holder()}) has held the key's ledger "
                                f"lease for {_plans.clock() - waited:.0f} s; nothing was created. Fix: try again once "
                                "it has ended (a try that died frees it at once on a local ledger, after the lease's "
                                "ttl on S3)")
        yield Sleep(lease.retry_after, f"Idempotency key {key!r}: another try ({lease.holder()}) is submitting it; "
                                       f"looking again in {lease.retry_after:.1f} s")
    try:
        found = yield from _submit_plan(spec, source, key, workdir=workdir, dialect=dialect, policy=policy,
                                        lookback=lookback, ledger=records, index=ledger)
    except BaseException:
        lease.release()  # a plan that is closed cannot yield: the release is a small write
        raise
    yield Work(lease.release)
    return found


def _submit_plan(
    spec: SubmitSpec, source: Source, key: str, *, workdir: Path, dialect: Dialect, policy: RetryPolicy,
    lookback: float, ledger: KeyLedger | None, index: KeyLedger | None = None,
) -> Generator[Send | Sleep | Work, Any, Submission]:
    # ``ledger``: the key ledger when it records the chains; ``index``: the one the settings name (a leased
    # submit), where a task instance's deployment identities are recorded (see _proven_ledger_plan).
    given = spec.idempotency_key is not None
    # Every parameter is checked before anything is sent (the longest attempt key included).
    dialect.create_body(input_file_id="pending", endpoint=spec.endpoint, completion_window=spec.completion_window,
                        metadata=spec.metadata, output_expires_after=spec.output_expires_after,
                        idempotency_key=attempt_key(key, MAX_ATTEMPTS - 1, _WIDEST if given else None))
    keyed = given and spec.reattach
    now = _plans.clock()
    since = spec.since if spec.since is not None else now - lookback

    # A random key is never looked up again: its chain needs no fingerprint.
    choice = _Choice(AttemptChain(key))
    fingerprint: str | None = None
    prepared: _Input | None = None
    downloaded: Path | None = None
    if given:
        chains: _Chains = {}
        legacy = spec.legacy if keyed else None
        proven = spec.proven if keyed else None
        old: _Chains = {}  # the legacy key's chains this work may take over
        named: list[Batch] = []  # the batches whose owner names this work (any identity): see _proven_plan
        matched = None
        if source.file_id is not None and keyed:
            # The same uploaded file is the same requests: found by id, nothing is downloaded.
            chains, old = yield from _own_chains_plan(key, legacy, since=since, dialect=dialect, policy=policy,
                                                      until=_made_from(source.file_id), proven=proven, kept=named)
            matched = _chain_made_from(chains, source.file_id) or _chain_made_from(old, source.file_id)
        if matched is not None:
            choice = _Choice(matched)
            fingerprint = matched.fingerprint
        else:
            # Bad input is refused here, before any request is sent (re-attaching reads the input too:
            # whether the key's batches hold these requests is only known from them).
            prepared = yield Work(partial(_prepare, source, spec.endpoint, workdir, dialect, spec.model,
                                          spec.response_schema))
            fingerprint, downloaded = yield from _fingerprint_plan(source, prepared, workdir=workdir,
                                                                   dialect=dialect, policy=policy)
            if keyed and ledger is not None:
                chains = yield from _ledger_chains_plan(key, ledger, dialect=dialect, policy=policy)
            elif keyed and source.file_id is None:
                chains, old = yield from _own_chains_plan(key, legacy, since=since, dialect=dialect, policy=policy,
                                                          until=_attempt_zero(fingerprint), proven=proven,
                                                          kept=named)
            choice = yield from _choose_plan(key, fingerprint, chains, workdir=workdir, dialect=dialect, policy=policy)
            if legacy is not None and old and not choice.chain.attempts:
                # Nothing of these requests under the key: the work's batches from before the upgrade.
                adopted = yield from _choose_plan(legacy.key, fingerprint, old, workdir=workdir, dialect=dialect,
                                                  policy=policy)
                if adopted.chain.attempts:
                    choice = adopted
                elif not chains:
                    choice = replace(adopted, chain=choice.chain)  # a new chain, under the key; say what changed
            if proven is not None and named and not choice.chain.attempts:
                # Nothing under either key: a try that used an identity a racing first task then replaced.
                raced = yield from _proven_plan(proven, named, fingerprint, dialect=dialect)
                if raced is not None:
                    choice = raced
            if proven is not None and ledger is not None and not choice.chain.attempts:
                # The same race where the ledger, not the batch list, holds the chains.
                raced = yield from _proven_ledger_plan(proven, key, fingerprint, ledger, dialect=dialect,
                                                       policy=policy)
                if raced is not None:
                    choice = raced
            elif (proven is not None and index is not None and not dialect.carries_metadata
                  and not choice.chain.attempts):
                # Batches that carry the key but no owner (Gemini, Together): the ledger names the identities.
                raced = yield from _proven_listed_plan(proven, fingerprint, index, since=since, dialect=dialect,
                                                       policy=policy)
                if raced is not None:
                    choice = raced
    chain = choice.chain
    if keyed and ledger is None:
        # The batch found may yet lose to a create racing in its second: take the one the reconcile keeps.
        chain = yield from _settled_plan(chain, dialect=dialect, policy=policy)
    step = next_step(chain, spec.policy)
    if choice.reason:
        step = replace(step, reason=choice.reason)
    if spec.repair is not None:
        step = _repair_step(chain, step, spec.repair)
    cancelled: list[Batch] = []
    if keyed and chain.live_duplicates():
        # A try that lost a race and died before cancelling its batch: cancel it now.
        cancelled = yield from _cancel_plan(chain.live_duplicates(), dialect=dialect, policy=policy)
        for batch in cancelled:
            chain = chain.with_batch(batch)
    done_ids = tuple(b.id for b in cancelled)
    made = partial(Submission, cancelled=done_ids, fingerprint=fingerprint, replaced=choice.replaced,
                   notices=choice.notices)
    if step.action != "create":
        if not (prepared is not None and prepared.path is not None and spec.estimate_cost and spec.repair is None
                and chain.attempts):
            return made(chain, step)
        # A try that finds its chain (an Airflow retry, a rerun) reports what these requests were estimated at,
        # so the bill it ends with has its estimate beside it; a repair round's attach keeps only its own.
        priced, said = yield from _estimate_plan(spec, prepared, dialect=dialect)
        return made(chain, step, estimate=priced, cost_note=said)

    number = step.number
    if prepared is None:
        prepared = yield Work(partial(_prepare, source, spec.endpoint, workdir, dialect, spec.model,
                                      spec.response_schema))
    upload: Path | None = prepared.path
    file_id = source.file_id
    carried = prepared.lines
    last = chain.last
    if spec.repair is not None:
        # A repair round: only the invalid answers' requests, less those answered since (a retried repair).
        answered: set[str] = yield from _successes_plan(_attempts_after(chain, spec.repair.after), workdir=workdir,
                                                        dialect=dialect, policy=policy)
        full = yield from _full_input_plan(source, prepared, downloaded, workdir=workdir, dialect=dialect,
                                           policy=policy)
        upload = workdir / f"attempt-{number}.jsonl"
        wanted = {k: v for k, v in spec.repair.invalid.items() if k not in answered}
        shape = dialect.line_shape
        carried = yield Work(partial(repair_input, full, upload, wanted, shape=shape.name, id_field=shape.id_field,
                                     body_field=shape.body_field, feedback=spec.repair.feedback))
        file_id = None
        if carried == 0:
            return made(chain, replace(step, action="done", batch=chain.latest,
                                       reason="every invalid answer was repaired already"), satisfied=True)
    elif last is not None:
        if dialect.stores_files and not any(r.kind in ("output", "results") for b in (last.batch, *last.duplicates)
                                            for r in dialect.result_files(b)):
            # Nothing of the last attempt succeeded (it failed, or expired before running anything):
            # the next attempt carries exactly what it carried, already uploaded.
            upload, file_id = None, last.batch.input_file_id
            carried = last.batch.request_counts.total or None
        else:
            done: set[str] = yield from _successes_plan(chain, workdir=workdir, dialect=dialect, policy=policy)
            full = yield from _full_input_plan(source, prepared, downloaded, workdir=workdir, dialect=dialect,
                                               policy=policy)
            upload = workdir / f"attempt-{number}.jsonl"
            carried = yield Work(partial(_remaining, full, done, upload, dialect.line_shape.id_field))
            if carried == 0:
                return made(chain, replace(step, action="done", batch=chain.latest,
                                           reason="every request already has a success in the chain"),
                            satisfied=True)

    # The budget, before anything of this attempt is uploaded or created: every path passes here.
    priced, spent, said = yield from _budget_plan(
        spec, chain, number, this=upload, full=prepared.path or downloaded, file_id=file_id, workdir=workdir,
        dialect=dialect, policy=policy, model=prepared.model or spec.model or dialect.batch_model(spec.endpoint))
    made = partial(made, estimate=priced, spent=spent, cost_note=said)

    attempt = chain.attempt_key(number)
    if keyed and spec.proven is not None and index is not None:
        # Before anything is created: a try under a later identity of the deployment must find this one.
        yield Work(partial(index.mark_identity, spec.proven.task, spec.proven.deployment, at=_plans.clock()))
    if ledger is not None:
        assert upload is not None  # no file store: the requests are always at hand
        batch, carried = yield from _inline_create_plan(upload, key=key, attempt=attempt, ledger=ledger,
                                                        workdir=workdir, dialect=dialect, policy=policy)
        return made(chain.with_attempt(number, batch), replace(step, batch=batch), created=True, carried=carried)
    fresh_upload: FileObject | None = None
    reused = False
    if upload is not None:
        digest, size = yield Work(partial(_sha256, upload))
        name = dialect.upload_name(attempt, digest) or upload_filename(attempt, digest)
        found = None
        if keyed:
            found = yield from _find_upload_plan(name, size=size, since=since, dialect=dialect, policy=policy)
        if found is not None:
            file_id, reused = found.id, True
        else:
            fresh_upload = yield from upload_plan(upload, filename=name, dialect=dialect, policy=policy)
            file_id = fresh_upload.id
    if not file_id:
        raise BatchOpsError("submit has no input: give a request file, requests or an uploaded file id")

    body = dialect.create_body(input_file_id=file_id, endpoint=spec.endpoint, completion_window=spec.completion_window,
                               metadata=spec.metadata, output_expires_after=spec.output_expires_after,
                               idempotency_key=attempt)
    started = _plans.clock()
    try:
        batch = yield from create_plan(body, key=attempt, key_may_exist=False, dialect=dialect, policy=policy,
                                       lookback=lookback)
    except BatchOpsError as exc:
        if fresh_upload is not None and is_permanent(exc):
            # Refused for good: the upload would be an orphan. (After a transient failure the batch
            # may exist, so the file stays.)
            try:
                yield from delete_file_plan(fresh_upload.id, dialect=dialect, policy=policy)
            except BatchOpsError:
                pass
        raise
    created = True
    if keyed:
        winner, lost = yield from _reconcile_plan(attempt, batch, since=started - LOOKBACK_SKEW,
                                                  dialect=dialect, policy=policy)
        if winner.id != batch.id:
            created = False
            chain = chain.with_attempt(number, winner, lost)
            return made(chain, replace(step, action="attach", batch=winner,
                                       reason=f"a concurrent try created {winner.id} first"),
                        carried=carried, reused_upload=reused, cancelled=done_ids + tuple(b.id for b in lost))
    chain = chain.with_attempt(number, batch)
    return made(chain, replace(step, batch=batch), created=created, carried=carried, reused_upload=reused)


# ---------------------------------------------------------------------------------------------
# cost: the estimate and the budget (decided in batch_ops.cost; checked here, before every upload)
# ---------------------------------------------------------------------------------------------


def _estimate_file(path: Path, *, dialect: Dialect, model: str | None, endpoint: str, prices: Any) -> Estimate:
    return estimate(path, provider=dialect, model=model, endpoint=endpoint, prices=prices)


def _bill_file(path: Path, *, dialect: Dialect, model: str | None, prices: Any) -> Any:
    return bill(iter_result_lines(path), provider=dialect, model=model, prices=prices)


def _estimate_plan(
    spec: SubmitSpec, prepared: _Input, *, dialect: Dialect
) -> Generator[Work, Any, tuple[Estimate | None, str | None]]:
    """The estimate of every request ``prepared`` holds, or why there is none (a model without a price)."""
    assert prepared.path is not None
    model = prepared.model or spec.model or dialect.batch_model(spec.endpoint)
    work = partial(_estimate_file, dialect=dialect, model=model, endpoint=spec.endpoint,
                   prices=PriceTable.of(spec.prices))
    try:
        return (yield Work(partial(work, prepared.path))), None
    except UnknownPriceError as exc:
        return None, f"No cost estimate: {exc}"


def _budget_plan(
    spec: SubmitSpec, chain: AttemptChain, number: int, *, this: Path | None, full: Path | None, file_id: str | None,
    workdir: Path, dialect: Dialect, policy: RetryPolicy, model: str | None,
) -> Generator[Send | Sleep | Work, Any, tuple[Estimate | None, Spent | None, str | None]]:
    """This attempt's estimate, the chain's spend so far, and the budget check (raises before any upload).

    The attempt's input is ``this`` (the requests it carries), else ``full`` (every request: the attempt
    re-sends its predecessor's upload, a subset of them, so its bound holds), else the uploaded ``file_id``
    read back (only under a budget: without one, an uploaded file is not downloaded just to be estimated).
    """
    budget = spec.max_cost_usd
    if budget is None and not spec.estimate_cost:
        return None, None, None
    if budget is not None and budget < 0:
        raise InputValidationError([Problem(rule="invalid_budget", param="max_cost_usd",
                                            message=f"max_cost_usd is {budget}", fix="give a budget >= 0 in USD")],
                                   source="batch parameters")
    prices = PriceTable.of(spec.prices)
    path = this or full
    if path is None and file_id and budget is not None:
        path = workdir / "budget-input.jsonl"
        yield from download_plan(file_id, path, dialect=dialect, policy=policy)
    if path is None:
        return None, None, ("No cost estimate: the input is an uploaded file (give max_cost_usd to have it read "
                            "back and estimated)")
    work = partial(_estimate_file, dialect=dialect, model=model, endpoint=spec.endpoint, prices=prices)
    try:
        priced: Estimate = yield Work(partial(work, path))
    except UnknownPriceError as exc:
        if budget is not None:
            raise
        return None, None, f"No cost estimate: {exc}"
    if budget is None:
        return priced, None, None
    spent = Spent()
    if chain.batches:
        whole: Estimate | None = priced if path == full else None
        actual = bounded = Decimal(0)
        spentdir = workdir / "spent"
        yield Work(partial(spentdir.mkdir, exist_ok=True))
        for batch in chain.batches:
            if not batch.status.is_terminal:
                # Still running (a duplicate being cancelled): it may spend up to its whole input.
                if whole is None:
                    whole = priced if full is None else (yield Work(partial(work, full)))
                bounded += whole.upper
                continue
            found = yield from download_results_plan(batch, spentdir, dialect=dialect, policy=policy,
                                                     kinds=("output",))
            if found.output is None:
                continue  # ended with nothing completed: nothing billed
            paid = yield Work(partial(_bill_file, found.output, dialect=dialect, model=model, prices=prices))
            if paid.unpriced:
                raise UnknownPriceError(f"the chain's earlier batch {batch.id} was answered by "
                                        f"{', '.join(paid.unpriced)}, which has no batch price: pass a price for it")
            actual += paid.total
        spent = Spent(actual=actual, bounded=bounded, attempts=len(chain.batches))
    check_budget(budget, priced, spent, attempt=number)
    return priced, spent, None


def _bill_files(paths: Sequence[Path], *, dialect: Dialect, model: str | None, prices: Any) -> Any:
    from itertools import chain as joined

    return bill(joined.from_iterable(iter_result_lines(p) for p in paths), provider=dialect, model=model,
                prices=prices)


def chain_bill_plan(
    chain: AttemptChain, workdir: Path, *, dialect: Dialect, policy: RetryPolicy, model: str | None = None,
    prices: Any = None,
) -> Generator[Send | Sleep | Work, Any, Any]:
    """The actual bill of every batch of ``chain`` (duplicates too: they were paid), from their results' usage.

    Returns a :class:`~batch_ops.cost.Bill`. An attempt with no output contributes nothing (nothing completed).
    """
    paths: list[Path] = []
    for batch in chain.batches:
        found = yield from download_results_plan(batch, workdir, dialect=dialect, policy=policy, kinds=("output",))
        if found.output is not None:
            paths.append(found.output)
    result = yield Work(partial(_bill_files, paths, dialect=dialect, model=model, prices=PriceTable.of(prices)))
    return result
