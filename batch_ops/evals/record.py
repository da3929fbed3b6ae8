"""What an eval run produced, as data: one record the report, the gate and the history all read.

The shapes, from the bottom up:

* :class:`SampleResult`: one item, model and epoch: its status, its score (0..1) and each grader's
  score, the answer, the item's metadata.
* :class:`Aggregate`: a mean with its 95 % interval and how the interval was computed.
* :class:`ModelRecord`: one model of the matrix: overall and per-category aggregates, the result
  counts, per-grader results, tokens, cost (estimate and actual), the judge's own cost line,
  turnaround, the batch ids, and whether every request came back (``complete``).
* :class:`RunRecord`: the run: its id and times, the eval set (name + content hash), the graders,
  one :class:`ModelRecord` per model, paired comparisons and the gate's decision.

A sample's ``status`` says what happened to it, and decides where it is counted:

==========  ==============================================================  ========================
status      meaning                                                         ``result_counts``
==========  ==============================================================  ========================
graded      an answer came back and every grader gave a verdict; ``score``  ``passed`` or ``failed``
            is set and ``passed`` says whether it reached the pass mark     (by ``passed``)
failed      the *request* failed: an error line, expired, cancelled or no   ``errored``
            result at all (``error_code`` says which)
errored     an answer came back but grading it failed (a user grader        ``errored``
            raised, the judge's own request failed)
unparsed    the judge answered, but with no grade the grade pattern finds   ``unparsed``
==========  ==============================================================  ========================

:attr:`SampleResult.outcome` is that last column, so nobody has to re-derive it. ``result_counts``
follows OpenAI's run report (``passed``/``failed`` are graded verdicts, ``errored`` got none), with
``unparsed`` added and never folded into a pass or a fail. Any sample that is not ``graded``
makes the model's record incomplete (``complete = False``): an outage or an unreadable judge can
never pass for a better score.

The record is plain pydantic: ``RunRecord.model_validate_json(record.to_json())`` gives it back equal,
and :meth:`RunRecord.to_openai_report` renders OpenAI's run-report shape. :func:`example_run_record`
builds a small three-model record with fixed numbers, for reports and tests to render from.

Examples:
    >>> run = example_run_record()
    >>> [(m.model, m.overall.n, m.complete) for m in run.models]
    [('model-a', 12, True), ('model-b', 12, True), ('model-c', 12, False)]
    >>> RunRecord.from_json(run.to_json()) == run
    True
    >>> report = run.to_openai_report()
    >>> report["result_counts"]
    {'total': 36, 'passed': 24, 'failed': 10, 'errored': 1, 'unparsed': 1}
    >>> report["per_model_usage"][0]["model_name"], report["per_model_usage"][0]["invocation_count"]
    ('model-a', 12)
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SCHEMA_VERSION",
    "Aggregate",
    "Comparison",
    "Cost",
    "EvalSetInfo",
    "GateDecision",
    "GraderResult",
    "ModelRecord",
    "ResultCounts",
    "RunRecord",
    "SampleResult",
    "SampleStatus",
    "TokenUsage",
    "Verdict",
    "example_run_record",
]

#: Bumped when a field changes meaning; fields are only ever added, never renamed.
SCHEMA_VERSION = 1

SampleStatus = Literal["graded", "failed", "errored", "unparsed"]
Outcome = Literal["passed", "failed", "errored", "unparsed"]

# Records are read back from the history written by older versions: unknown fields are kept, not refused.
_RECORD = ConfigDict(extra="allow", frozen=False)


class Verdict(BaseModel):
    """One grader's verdict on one sample: ``graded`` (``score``, ``passed``), ``errored``, ``unparsed`` or
    ``pending`` (a model-graded grader whose judge batch has not been read yet)."""

    model_config = _RECORD
    status: Literal["graded", "errored", "unparsed", "pending"]
    score: float | None = None
    passed: bool | None = None
    detail: str | None = None


class SampleResult(BaseModel):
    """One item answered by one model in one epoch, and how it was graded.

    Attributes:
        custom_id: The request's id in the batch (``<item>`` or ``<item>#e<epoch>``).
        item_id: The eval item's id (the same for every model and epoch: pairs join on it).
        model: The model that answered.
        epoch: 1-based repeat number (1 when the run has one epoch).
        status: ``graded`` | ``failed`` | ``errored`` | ``unparsed`` (see the module's table).
        score: 0..1 when graded, else None (a failure is not a zero: it is counted apart).
        passed: Whether the graded score reached the pass mark; None when not graded.
        scores: Each grader's score by grader name (None where that grader gave no verdict).
        answer: The model's answer text (None when the request failed).
        expected: The item's expected answer, when it has one.
        error_code: Why the sample is not graded (``batch_expired``, ``missing_result``, ``judge_unparsed``…).
        detail: A grader's explanation or the judge's unparsed reply, shortened.
        metadata: The item's metadata (``category``, ``difficulty``, any other key).
        verdicts: Each grader's :class:`Verdict` by grader name (added in schema 1; may be empty in
            hand-made records).

    Examples:
        >>> s = SampleResult(custom_id="q1", item_id="q1", model="m", status="graded", score=1.0, passed=True)
        >>> s.outcome, s.category
        ('passed', 'general')
        >>> SampleResult(custom_id="q2", item_id="q2", model="m", status="failed", error_code="batch_expired").outcome
        'errored'
    """

    model_config = _RECORD
    custom_id: str
    item_id: str
    model: str
    epoch: int = Field(default=1, ge=1)
    status: SampleStatus
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    passed: bool | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    answer: str | None = None
    expected: str | None = None
    error_code: str | None = None
    detail: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    verdicts: dict[str, Verdict] = Field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        """Where the sample is counted in ``result_counts``: passed, failed, errored or unparsed."""
        if self.status == "graded":
            return "passed" if self.passed else "failed"
        if self.status == "unparsed":
            return "unparsed"
        return "errored"

    @property
    def category(self) -> str:
        """``metadata["category"]``, or ``general``."""
        return str(self.metadata.get("category") or "general")


class Aggregate(BaseModel):
    """A mean with its interval: ``ci_low <= mean <= ci_high`` at ``level`` (0.95).

    ``method`` names how the interval was computed: ``stderr`` (normal approximation on the standard
    error), ``clustered_stderr`` (``cluster`` names the metadata key), ``bootstrap`` (``seed`` and
    ``resamples`` make it repeatable), or ``none`` (one sample: no interval).

    Examples:
        >>> a = Aggregate(n=4, mean=0.5, ci_low=0.01, ci_high=0.99, method="stderr", stderr=0.25)
        >>> a.half_width
        0.49
    """

    model_config = _RECORD
    n: int = Field(ge=0)
    mean: float
    ci_low: float
    ci_high: float
    method: str = "stderr"
    level: float = 0.95
    stderr: float | None = None
    cluster: str | None = None
    seed: int | None = None
    resamples: int | None = None

    @property
    def half_width(self) -> float:
        return round((self.ci_high - self.ci_low) / 2, 12)


class ResultCounts(BaseModel):
    """How many samples passed, failed, errored or had an unparsable judge answer.

    ``total = passed + failed + errored + unparsed``; ``expired`` and ``cancelled`` break down
    ``errored`` further (requests the batch never ran).

    Examples:
        >>> ResultCounts.tally([])
        ResultCounts(total=0, passed=0, failed=0, errored=0, unparsed=0, expired=0, cancelled=0)
    """

    model_config = _RECORD
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0
    unparsed: int = 0
    expired: int = 0
    cancelled: int = 0

    @classmethod
    def tally(cls, samples: Iterable[SampleResult]) -> ResultCounts:
        """Count samples by :attr:`SampleResult.outcome`."""
        rows = list(samples)
        by = Counter(s.outcome for s in rows)
        codes = Counter(s.error_code for s in rows if s.outcome == "errored")
        return cls(total=len(rows), passed=by["passed"], failed=by["failed"], errored=by["errored"],
                   unparsed=by["unparsed"], expired=codes["batch_expired"], cancelled=codes["batch_cancelled"])

    @property
    def complete(self) -> bool:
        """Every sample graded (nothing errored, nothing unparsed)."""
        return self.errored == 0 and self.unparsed == 0


class GraderResult(BaseModel):
    """One grader's verdicts for one model (OpenAI's ``per_testing_criteria_results`` row, and more).

    Attributes:
        name: The grader's name (unique in the run).
        kind: ``exact``, ``includes``, ``regex``, ``numeric``, ``json_match``, ``f1``, ``python``,
            ``model_graded`` …
        passed / failed: Verdicts given; errored / unparsed: samples it could not grade.
        mean: Its mean score with interval, over the samples it graded.
        judge_models: For a model-graded grader, the pinned judge model(s).
    """

    model_config = _RECORD
    name: str
    kind: str
    passed: int = 0
    failed: int = 0
    errored: int = 0
    unparsed: int = 0
    mean: Aggregate | None = None
    judge_models: list[str] = Field(default_factory=list)


class TokenUsage(BaseModel):
    """Tokens used by a set of requests (a model's answers, or its judge calls)."""

    model_config = _RECORD
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Cost(BaseModel):
    """Money: the estimate made before submitting (a range) and the actual cost from usage at batch prices.

    Filled from :mod:`batch_ops.cost` (the estimate the submission core makes before each upload, the bill
    of the results' usage); a field stays None when it is unknown (no price for the model), never guessed.
    """

    model_config = _RECORD
    estimate_low: float | None = None
    estimate_high: float | None = None
    actual: float | None = None
    currency: str = "USD"


class Comparison(BaseModel):
    """A paired comparison of one model's per-item scores against a reference.

    ``kind`` is ``previous_run`` (the same model's last recorded run; ``reference`` = its run id) or
    ``baseline_model`` (another model of this run; ``reference`` = its name). ``diff`` = this minus the
    reference, over the ``n`` items both graded; ``ci_low``/``ci_high`` its interval; ``p_value`` the
    two-sided test of no difference; ``significant`` when the interval excludes zero.
    """

    model_config = _RECORD
    model: str
    kind: Literal["previous_run", "baseline_model"]
    reference: str
    n: int
    mean: float
    reference_mean: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    significant: bool = False
    method: str = "paired_stderr"


class GateDecision(BaseModel):
    """The regression gate's verdict on the run.

    ``status``: ``pass``, ``fail`` (a significant drop of at least ``min_drop``), ``incomplete``
    (a model's record is incomplete: reported, never scored as better) or ``no_reference``
    (nothing to compare with yet). ``reason`` is the sentence to show; ``failing`` the models
    that failed it.
    """

    model_config = _RECORD
    status: Literal["pass", "fail", "incomplete", "no_reference"]
    reason: str
    min_drop: float = 0.0
    alpha: float = 0.05
    failing: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless the gate fails the run."""
        return self.status != "fail"


class ModelRecord(BaseModel):
    """One model of the matrix: scores with intervals, counts, tokens, cost, time and batches.

    Attributes:
        model: The model name as sent (Azure: the deployment).
        provider: ``openai``, ``azure``, ``anthropic``, ``gemini`` or a profile name.
        connection: The Airflow connection id or Prefect block name it ran with (never a secret).
        overall: Mean score over *every* item (samples not graded count as 0 here: never a better
            score), with its interval.
        answered: Mean over the graded samples only (what the model scored where it answered).
        by_category: One :class:`Aggregate` per ``metadata.category``.
        result_counts: See :class:`ResultCounts`.
        graders: One :class:`GraderResult` per grader.
        usage / cost: The answers' tokens and cost; ``judge_usage`` / ``judge_cost``: the judge batch's.
        turnaround_s: Seconds from the answers batch's creation to its end (with retries: the first attempt's
            creation to the last one's end); ``judge_turnaround_s``: the same for the judge batches (the
            slowest, as they run at once).
        batch_ids: The answer batches, then the judge batches.
        complete: Every sample graded (see :attr:`ResultCounts.complete`).
        epochs: Samples per item; ``pass_at_k``: unbiased pass@k by k (with more than one epoch).
        samples: Every :class:`SampleResult`.
    """

    model_config = _RECORD
    model: str
    provider: str = "openai"
    connection: str | None = None
    overall: Aggregate
    answered: Aggregate | None = None
    by_category: dict[str, Aggregate] = Field(default_factory=dict)
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    graders: list[GraderResult] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost: Cost = Field(default_factory=Cost)
    judge_usage: TokenUsage | None = None
    judge_cost: Cost | None = None
    turnaround_s: float | None = None
    judge_turnaround_s: float | None = None
    batch_ids: list[str] = Field(default_factory=list)
    complete: bool = True
    epochs: int = 1
    pass_at_k: dict[int, float] = Field(default_factory=dict)
    samples: list[SampleResult] = Field(default_factory=list)

    def to_openai_run(self, *, run_id: str, eval_name: str, created_at: int | None = None) -> dict[str, Any]:
        """This model's run in the shape of OpenAI's ``eval.run`` object (``result_counts``,
        ``per_testing_criteria_results``, ``per_model_usage``), ``unparsed`` added to the counts."""
        usage = [_openai_usage(self.model, self.usage)]
        if self.judge_usage is not None:
            judges = sorted({j for g in self.graders for j in g.judge_models}) or ["judge"]
            usage.append(_openai_usage(",".join(judges), self.judge_usage))
        counts = self.result_counts
        return {
            "object": "eval.run",
            "id": f"{run_id}:{self.model}",
            "name": eval_name,
            "model": self.model,
            "status": "completed" if self.complete else "partial",
            "created_at": created_at,
            "result_counts": {"total": counts.total, "passed": counts.passed, "failed": counts.failed,
                              "errored": counts.errored, "unparsed": counts.unparsed},
            "per_testing_criteria_results": [
                {"testing_criteria": g.name, "passed": g.passed, "failed": g.failed} for g in self.graders],
            "per_model_usage": usage,
        }


def _openai_usage(name: str, usage: TokenUsage) -> dict[str, Any]:
    return {"model_name": name, "invocation_count": usage.requests, "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens, "cached_tokens": usage.cached_tokens,
            "total_tokens": usage.total_tokens}


class EvalSetInfo(BaseModel):
    """Which eval set ran: its name, the SHA-256 of its content (a changed set is a different set) and size."""

    model_config = _RECORD
    name: str
    hash: str
    n_items: int = 0
    source: str | None = None


class RunRecord(BaseModel):
    """One eval run over a matrix of models: what the report renders and the history keeps.

    Attributes:
        run_id: The orchestrator's run id.
        pipeline: ``airflow``, ``prefect`` or anything naming what ran it.
        started_at / finished_at: UTC times.
        eval_set: :class:`EvalSetInfo`.
        graders: Each grader's description (name, kind, options; judge models pinned), as configured.
        models: One :class:`ModelRecord` per model.
        comparisons: Paired comparisons (vs the previous run, vs the baseline model).
        gate: The regression gate's decision (None when no gate ran).
        baseline_model: The model the others are compared with, when one is named.
        schema_version: :data:`SCHEMA_VERSION` at writing.
    """

    model_config = _RECORD
    run_id: str
    pipeline: str = "batch_ops"
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    eval_set: EvalSetInfo
    graders: list[dict[str, Any]] = Field(default_factory=list)
    models: list[ModelRecord] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    gate: GateDecision | None = None
    baseline_model: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def complete(self) -> bool:
        """Every model's every sample graded."""
        return all(m.complete for m in self.models)

    def model(self, name: str) -> ModelRecord:
        """The record of model ``name`` (KeyError naming the models there are)."""
        for m in self.models:
            if m.model == name:
                return m
        raise KeyError(f"no model {name!r} in run {self.run_id!r}; it has {[m.model for m in self.models]}")

    def to_json(self, *, indent: int | None = 2) -> str:
        """The record as JSON (read it back with :meth:`from_json`)."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        return cls.model_validate_json(text)

    def to_openai_report(self) -> dict[str, Any]:
        """The run in OpenAI's eval-run report shape, summed over models, each model's own run under ``runs``.

        ``result_counts`` (with ``unparsed`` added), ``per_testing_criteria_results`` (one row per
        model and grader, ``testing_criteria`` = ``<model>/<grader>`` so rows stay distinct across models)
        and ``per_model_usage`` (each model's answers, then each judge's calls). OpenAI's object has no
        cost and no regression verdict: they are here as ``cost`` and ``gate``, apart.
        """
        created = int(self.started_at.timestamp()) if self.started_at else None
        runs = [m.to_openai_run(run_id=self.run_id, eval_name=self.eval_set.name, created_at=created)
                for m in self.models]
        counts: Counter[str] = Counter()
        for r in runs:
            counts.update(r["result_counts"])
        judge_usage: dict[str, TokenUsage] = {}
        for m in self.models:  # judges serve several models: one usage row per judge
            if m.judge_usage is None:
                continue
            name = ",".join(sorted({j for g in m.graders for j in g.judge_models})) or "judge"
            seen = judge_usage.get(name, TokenUsage())
            judge_usage[name] = TokenUsage(
                requests=seen.requests + m.judge_usage.requests, input_tokens=seen.input_tokens +
                m.judge_usage.input_tokens, output_tokens=seen.output_tokens + m.judge_usage.output_tokens,
                cached_tokens=seen.cached_tokens + m.judge_usage.cached_tokens)
        return {
            "object": "eval.run.report",
            "id": self.run_id,
            "name": self.eval_set.name,
            "status": "completed" if self.complete else "partial",
            "created_at": created,
            "eval_set": self.eval_set.model_dump(),
            "result_counts": {k: counts[k] for k in ("total", "passed", "failed", "errored", "unparsed")},
            "per_testing_criteria_results": [
                {"testing_criteria": f"{m.model}/{g.name}", "model": m.model, "grader": g.name,
                 "passed": g.passed, "failed": g.failed}
                for m in self.models for g in m.graders],
            "per_model_usage": [_openai_usage(m.model, m.usage) for m in self.models]
            + [_openai_usage(name, u) for name, u in judge_usage.items()],
            "cost": {m.model: {**m.cost.model_dump(), "judge": m.judge_cost.model_dump() if m.judge_cost else None}
                     for m in self.models},
            "gate": self.gate.model_dump() if self.gate else None,
            "runs": runs,
        }


# --- a fixture with fixed numbers, for reports and tests -----------------------------------------

def _fixture_samples(model: str, verdicts: Sequence[str]) -> list[SampleResult]:
    """Samples from a verdict string per item: P pass, F fail, H half credit, E errored, U unparsed."""
    categories = ("arithmetic", "geography", "science")
    out = []
    for i, v in enumerate(verdicts):
        item = f"q{i + 1:02d}"
        meta = {"category": categories[i % 3], "difficulty": "hard" if i % 4 == 3 else "easy"}
        common = {"custom_id": item, "item_id": item, "model": model, "metadata": meta, "expected": f"answer {i + 1}"}
        if v in "PFH":
            score = {"P": 1.0, "F": 0.0, "H": 0.5}[v]
            out.append(SampleResult(**common, status="graded", score=score, passed=score >= 0.5,
                                    scores={"exact": 1.0 if v == "P" else 0.0, "judge": score},
                                    answer=f"answer {i + 1}" if v == "P" else "something else"))
        elif v == "E":
            out.append(SampleResult(**common, status="failed", error_code="batch_expired"))
        else:
            out.append(SampleResult(**common, status="unparsed", error_code="judge_unparsed", answer="maybe",
                                    scores={"exact": 0.0, "judge": None}, detail="I cannot decide."))
    return out


def _fixture_aggregate(scores: Sequence[float]) -> Aggregate:
    # A plain stderr interval, written out here so that this module needs nothing from stats.py.
    n = len(scores)
    mean = sum(scores) / n if n else 0.0
    if n < 2:
        return Aggregate(n=n, mean=mean, ci_low=mean, ci_high=mean, method="none")
    var = sum((x - mean) ** 2 for x in scores) / (n - 1)
    se = (var / n) ** 0.5
    return Aggregate(n=n, mean=round(mean, 6), ci_low=round(max(0.0, mean - 1.96 * se), 6),
                     ci_high=round(min(1.0, mean + 1.96 * se), 6), method="stderr", stderr=round(se, 6))


def _fixture_model(model: str, provider: str, verdicts: str, *, cost: float, turnaround: float) -> ModelRecord:
    samples = _fixture_samples(model, verdicts)
    counts = ResultCounts.tally(samples)
    by_cat: dict[str, list[float]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s.score or 0.0)
    graded = [s for s in samples if s.status == "graded"]
    exact = [s.scores.get("exact") or 0.0 for s in samples if s.status in ("graded", "unparsed")]
    judge = [s.score or 0.0 for s in graded]
    n = len(samples)
    return ModelRecord(
        model=model, provider=provider, connection=f"{provider}_default",
        overall=_fixture_aggregate([s.score or 0.0 for s in samples]),
        answered=_fixture_aggregate([s.score or 0.0 for s in graded]),
        by_category={c: _fixture_aggregate(v) for c, v in sorted(by_cat.items())},
        result_counts=counts,
        graders=[
            GraderResult(name="exact", kind="exact", passed=sum(1 for x in exact if x >= 1.0),
                         failed=sum(1 for x in exact if x < 1.0), errored=counts.errored,
                         mean=_fixture_aggregate(exact)),
            GraderResult(name="judge", kind="model_graded", passed=sum(1 for x in judge if x >= 0.5),
                         failed=sum(1 for x in judge if x < 0.5), errored=counts.errored, unparsed=counts.unparsed,
                         mean=_fixture_aggregate(judge), judge_models=["judge-1"]),
        ],
        usage=TokenUsage(requests=n, input_tokens=40 * n, output_tokens=6 * n),
        cost=Cost(estimate_low=round(cost * 0.8, 6), estimate_high=round(cost * 1.25, 6), actual=cost),
        judge_usage=TokenUsage(requests=len(graded) + counts.unparsed, input_tokens=120 * n, output_tokens=4 * n),
        judge_cost=Cost(estimate_low=0.0004, estimate_high=0.0008, actual=0.0006),
        turnaround_s=turnaround,
        batch_ids=[f"batch_{model}", f"batch_{model}_judge"],
        complete=counts.complete,
        samples=samples,
    )


def example_run_record(run_id: str = "scheduled__2026-12-01T03:00:00+00:00") -> RunRecord:
    """A three-model run with fixed numbers (12 items, 3 categories, an exact and a model-graded grader).

    ``model-a`` is the best and the baseline, ``model-b`` weaker, ``model-c`` has one expired
    request and one unparsable judge answer (so it is incomplete); the gate passes with a note.
    Render reports from it, or write it to a file as a test fixture.
    """
    models = [
        _fixture_model("model-a", "openai", "PPPPPPPPPHFP", cost=0.0012, turnaround=312.0),
        _fixture_model("model-b", "anthropic", "PFPPFPFPPFHF", cost=0.0009, turnaround=605.5),
        _fixture_model("model-c", "gemini", "PPFPEFPUFPFP", cost=0.0004, turnaround=1804.0),
    ]
    base = models[0]
    comparisons = []
    for m in models[1:]:
        pairs = [(s.score or 0.0, b.score or 0.0) for s, b in zip(m.samples, base.samples, strict=True)]
        diffs = [a - b for a, b in pairs]
        n = len(diffs)
        d = sum(diffs) / n
        se = (sum((x - d) ** 2 for x in diffs) / (n - 1) / n) ** 0.5
        comparisons.append(Comparison(
            model=m.model, kind="baseline_model", reference=base.model, n=n,
            mean=round(sum(a for a, _ in pairs) / n, 6), reference_mean=round(sum(b for _, b in pairs) / n, 6),
            diff=round(d, 6), ci_low=round(d - 1.96 * se, 6), ci_high=round(d + 1.96 * se, 6),
            significant=(d + 1.96 * se) < 0 or (d - 1.96 * se) > 0))
    started = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
    return RunRecord(
        run_id=run_id, pipeline="airflow", started_at=started, finished_at=started + dt.timedelta(minutes=41),
        eval_set=EvalSetInfo(name="example", hash="sha256:" + "0" * 64, n_items=12, source="example"),
        graders=[{"name": "exact", "kind": "exact", "options": {"case": "fold", "whitespace": "collapse"}},
                 {"name": "judge", "kind": "model_graded", "template": "closed_qa", "judge_models": ["judge-1"]}],
        models=models,
        comparisons=comparisons,
        gate=GateDecision(status="incomplete", reason="model-c: 1 request errored and 1 judge answer unparsed; "
                          "its score counts them as 0, never better; no significant drop vs the previous run",
                          min_drop=0.05),
        baseline_model=base.model,
    )
