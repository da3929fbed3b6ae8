"""A model matrix eval, once, for both orchestrators: several models, a judge batch, one record, one report.

``dags/eval_matrix.py`` (Airflow: dynamic task mapping, every batch deferred) and
``flows/eval_matrix.py`` (Prefect: concurrent tasks) drive the same five steps; the batches run
in between, each through the orchestrator's own adapter and the model's own connection:

1. :func:`answer_requests` — per model, the eval set's requests (provider-neutral: any provider);
2. (the orchestrator runs one batch per model, all at once);
3. :func:`grade_answers` — per model, the answers graded by the deterministic graders, and the
   judge's requests (a **second batch**: grading at batch price, with its own cost line);
4. (the orchestrator runs one judge batch per model);
5. :func:`model_record` — per model, the judge's verdicts joined in: a
   :class:`~batch_ops.evals.record.ModelRecord`; then :func:`finish_run` — the run's record, the
   comparisons, the gate, the report (:mod:`batch_ops.evals.render`) and the history; the caller
   raises :class:`EvalGateError` afterwards (:func:`enforce_gate`), so a failing run has its report
   on disk to explain it.

Everything passed between steps is plain JSON (XCom, Prefect results): the config
(:class:`MatrixConfig`), the request lists, the result records every adapter reads
(``custom_id``, ``ok``, ``text``, ``usage``, ``error``; see ``OpenAIBatchHook.get_results`` and
``read_batch_results``), and the records.

Examples:
    >>> config = MatrixConfig.from_params({"models": ["demo-large", {"model": "demo-small", "connection": "c2"}],
    ...                                    "judge": {"model": "demo-judge"}})
    >>> [(m.model, m.connection) for m in config.models]
    [('demo-large', None), ('demo-small', 'c2')]
    >>> reqs = answer_requests(config, config.models[0])
    >>> len(reqs), reqs[0]["model"], reqs[0]["custom_id"]
    (210, 'demo-large', 'arith-000')
    >>> MatrixConfig.from_params({"models": ["a", "a"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.InputValidationError: models: 1 problem:
      models: duplicate_model: ...
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_ops import storage
from batch_ops.errors import BatchOpsError, InputValidationError, Problem
from batch_ops.evals.dataset import EvalItem, EvalSet, parse_custom_id, read_eval_set
from batch_ops.evals.record import (
    Aggregate,
    Comparison,
    Cost,
    EvalSetInfo,
    GateDecision,
    GraderResult,
    ModelRecord,
    ResultCounts,
    RunRecord,
    SampleResult,
    TokenUsage,
)
from batch_ops.evals.render import read_model_history, write_run_report
from batch_ops.evals.scoring import SCORERS
from batch_ops.models import Batch
from batch_ops.storage import StorageTarget

__all__ = [
    "DEMO_MATRIX",
    "MATRIX_RUN",
    "EvalGateError",
    "EvalRunError",
    "JudgeSpec",
    "MatrixConfig",
    "ModelSpec",
    "Price",
    "answer_requests",
    "enforce_gate",
    "with_times",
    "finish_run",
    "grade_answers",
    "model_record",
]


#: The recorded answers of the demo matrix (three models and a judge) that the local server replays:
#: ``batch-ops serve --engine replay --replay-file <MATRIX_RUN>`` (``scripts/make_matrix_sample.py`` makes it).
MATRIX_RUN = Path(__file__).with_name("data") / "matrix_run.jsonl"

#: The offline demo matrix: three "models" and a judge, all replayed by the local server on the default
#: connection. Their prices are made up (per million tokens, batch), to show the cost columns.
DEMO_MATRIX: dict[str, Any] = {
    "models": [
        {"model": "demo-large", "price": {"input_per_million": 1.25, "output_per_million": 5.0}},
        {"model": "demo-medium", "price": {"input_per_million": 0.2, "output_per_million": 0.8}},
        {"model": "demo-small", "price": {"input_per_million": 0.05, "output_per_million": 0.2}},
    ],
    "judge": {"model": "demo-judge", "price": {"input_per_million": 0.1, "output_per_million": 0.4}},
    "baseline": "demo-large",
    "min_drop": 0.02,
}


class EvalRunError(BatchOpsError):
    """A matrix run cannot go on: e.g. a model with no answer at all, so nothing to judge or report."""


class EvalGateError(BatchOpsError):
    """The regression gate failed the run: a model's score dropped significantly (and by at least the minimum)."""


class Price(BaseModel):
    """Batch prices per million tokens (what a model's usage costs; PRICING.md lists the vendors')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    currency: str = "USD"

    def cost(self, usage: TokenUsage) -> float:
        return round((usage.input_tokens * self.input_per_million + usage.output_tokens * self.output_per_million)
                     / 1e6, 8)


class ModelSpec(BaseModel):
    """One model of the matrix and how to reach it.

    Attributes:
        model: The model name sent in every request (Azure: the deployment).
        connection: The Airflow connection id / Prefect credentials block name (None: the default one).
        provider: Shown in the report (``openai``, ``anthropic``, …); the connection decides what is spoken.
        price: Batch prices, for the actual cost from usage (None: the cost stays unknown, never guessed).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=1)
    connection: str | None = None
    provider: str | None = None
    price: Price | None = None


class JudgeSpec(ModelSpec):
    """The judge: a pinned model (and its connection) that grades answers in a second batch.

    ``template``: ``closed_qa`` (is the answer correct, given the expected one?).
    """

    template: str = "closed_qa"


class MatrixConfig(BaseModel):
    """What one matrix run evaluates: the eval set, the models, the judge, the baseline and the gate's minimum.

    Attributes:
        eval_set: A JSONL or CSV eval set (path or object storage URL); None: the shipped set.
        template: The user-message template (``{input}``, metadata fields); None: the set's default.
        models: The models (at least one; names unique).
        judge: The judge (None: deterministic graders only, no second batch).
        baseline: The model the others are compared with (default: the first).
        min_drop: The gate fails a model only on a significant drop of at least this much (0.02 = 2 points).
        alpha: The significance level of the gate's test.
        max_tokens: Most tokens per answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    eval_set: str | None = None
    template: str | None = None
    models: list[ModelSpec] = Field(min_length=1)
    judge: JudgeSpec | None = None
    baseline: str | None = None
    min_drop: float = Field(default=0.02, ge=0, le=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    max_tokens: int = Field(default=64, ge=1)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MatrixConfig:
        """The config from DAG params / flow parameters: a model may be a name or a mapping.

        Bad input is refused here, before any batch is paid for: an :class:`InputValidationError`
        naming each problem and its fix.
        """
        raw = dict(params)
        raw["models"] = [{"model": m} if isinstance(m, str) else m for m in raw.get("models") or []]
        if isinstance(raw.get("judge"), str):
            raw["judge"] = {"model": raw["judge"]}
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise InputValidationError(
                [Problem(rule="invalid_matrix_param", param=".".join(str(p) for p in e["loc"]) or "params",
                         message=e["msg"], fix="give models as names or {model, connection, provider, price}; "
                         "judge as a name or {model, connection}; see docs/evals.md") for e in exc.errors()],
                source="params") from None
        names = [m.model for m in config.models]
        problems = [Problem(rule="duplicate_model", param="models", message=f"model {n!r} appears twice",
                            fix="name each model once (two connections to one model: evaluate them in two runs)")
                    for n in sorted({n for n in names if names.count(n) > 1})]
        if config.baseline is not None and config.baseline not in names:
            problems.append(Problem(rule="unknown_baseline", param="baseline",
                                    message=f"baseline {config.baseline!r} is not one of the models {names}",
                                    fix="name one of the models, or leave baseline empty (the first model)"))
        if problems:
            raise InputValidationError(problems, source="models")
        return config

    @property
    def baseline_model(self) -> str:
        return self.baseline or self.models[0].model

    def spec(self, model: str) -> ModelSpec:
        for m in self.models:
            if m.model == model:
                return m
        raise KeyError(model)

    def eval_set_read(self) -> EvalSet:
        return read_eval_set(self.eval_set, template=self.template)


# ---- step 1: the answers' requests -------------------------------------------------------------

def answer_requests(config: MatrixConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    """The eval set's requests for one model: provider-neutral chat requests (the connection's provider
    writes them in its own words)."""
    return [r.as_dict() for r in config.eval_set_read().requests(spec.model, max_tokens=config.max_tokens)]


# ---- step 3: deterministic grades, and the judge's requests --------------------------------------

_JUDGE_SYSTEM = "You are a strict grader. You compare an answer with the expected answer."
_CLOSED_QA = ("Question: {input}\nExpected answer: {expected}\nSubmitted answer: {answer}\n\n"
              "Is the submitted answer correct, given the expected answer? Reply with one line: "
              "GRADE: C if it is correct, GRADE: I if it is not.")
_GRADE = re.compile(r"GRADE:\s*([CPI])\b")
_GRADE_VALUE = {"C": 1.0, "P": 0.5, "I": 0.0}


def judge_custom_id(model: str, custom_id: str) -> str:
    """The judge request's id for one model's sample: the model in it, as one judge grades every model.

    Examples:
        >>> judge_custom_id("demo-large", "arith-000")
        'judge:demo-large:arith-000'
    """
    return f"judge:{model}:{custom_id}"


def _records_by_id(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(r["custom_id"]): r for r in records}


def _deterministic(item: EvalItem, answer: str) -> float:
    scorer = SCORERS.get(item.scorer or "exact") or SCORERS["exact"]
    return 1.0 if scorer(answer, item) else 0.0


def grade_answers(config: MatrixConfig, spec: ModelSpec, records: Sequence[Mapping[str, Any]],
                  batch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One model's answers graded by the deterministic graders, and the judge batch's requests.

    A request with no successful result is a ``failed`` sample (``error_code`` says why: the
    error line's code, ``batch_expired``, ``missing_result``): counted apart, never a wrong
    answer. Returns JSON: ``model``, ``samples`` (without the judge's verdicts yet),
    ``judge_requests`` (empty without a judge), ``usage``, ``batch``.
    """
    items = {i.id: i for i in config.eval_set_read().items}
    by_id = _records_by_id(records)
    samples: list[SampleResult] = []
    judge: list[dict[str, Any]] = []
    usage = TokenUsage()
    expired = str((batch or {}).get("status")) in ("expired", "cancelled")
    for custom_id in (r["custom_id"] for r in answer_requests(config, spec)):
        item_id, epoch = parse_custom_id(custom_id)
        item = items[item_id]
        rec = by_id.get(custom_id)
        common = {"custom_id": custom_id, "item_id": item_id, "model": spec.model, "epoch": epoch,
                  "expected": item.expected, "metadata": {**item.metadata, "category": item.category}}
        if rec is not None:
            usage = _add_usage(usage, rec.get("usage"))
        if rec is None or not rec.get("ok") or rec.get("text") is None:
            code = ((rec or {}).get("error") or {}).get("code") if rec else None
            code = code or (f"batch_{(batch or {}).get('status')}" if expired else "missing_result")
            samples.append(SampleResult(**common, status="failed", error_code=str(code)))
            continue
        answer = str(rec["text"])
        exact = _deterministic(item, answer)
        samples.append(SampleResult(**common, status="graded", score=exact, passed=exact >= 1.0,
                                    scores={"exact": exact}, answer=answer))
        if config.judge is not None:
            judge.append({"custom_id": judge_custom_id(spec.model, custom_id), "model": config.judge.model,
                          "system": _JUDGE_SYSTEM, "max_tokens": 16, "temperature": 0.0,
                          "messages": [{"role": "user", "content": _CLOSED_QA.format(
                              input=item.input, expected=item.expected or "", answer=answer)}]})
    if config.judge is not None and not judge:
        # Nothing to judge: no answer came back. A judge batch of nothing cannot be created, and a report
        # of a model with no answer is no eval: say what happened, loudly.
        codes = sorted({str(s.error_code) for s in samples})
        raise EvalRunError(f"model {spec.model!r}: none of its {len(samples)} requests has an answer "
                           f"({', '.join(codes)}); nothing to judge. Fix: check the model's connection and "
                           f"batch {((batch or {}).get('batch_id'))!r}, then run again")
    return {"model": spec.model, "samples": [s.model_dump(mode="json") for s in samples], "judge_requests": judge,
            "usage": usage.model_dump(), "batch": _batch_summary(batch)}


def _add_usage(usage: TokenUsage, raw: Any) -> TokenUsage:
    raw = raw if isinstance(raw, Mapping) else {}
    details = raw.get("input_tokens_details") or raw.get("prompt_tokens_details") or {}
    return TokenUsage(requests=usage.requests + 1,
                      input_tokens=usage.input_tokens + int(raw.get("input_tokens") or raw.get("prompt_tokens") or 0),
                      output_tokens=usage.output_tokens + int(raw.get("output_tokens")
                                                              or raw.get("completion_tokens") or 0),
                      cached_tokens=usage.cached_tokens + int((details or {}).get("cached_tokens") or 0))


def with_times(outcome: Mapping[str, Any], batches: Sequence[Batch]) -> dict[str, Any]:
    """A batch outcome (XCom, ``BatchResult``) with the times of its attempts: the first one's creation and
    the last one's end, so that the record can say how long the model's batch took (its turnaround).

    Examples:
        >>> b = Batch(id="b", endpoint="/v1/chat/completions", input_file_id="f", status="completed",
        ...           created_at=100, completed_at=460)
        >>> _batch_summary(with_times({"batch_id": "b", "status": "completed"}, [b]))["turnaround_s"]
        360.0
    """
    if not batches:
        return dict(outcome)
    last = batches[-1]
    ended = last.completed_at or last.failed_at or last.expired_at or last.cancelled_at
    return {**outcome, "created_at": batches[0].created_at, "ended_at": ended}


def _batch_summary(batch: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the record keeps of a batch: ids, status, counts and its turnaround (created → ended)."""
    if not batch:
        return {}
    ids = list(batch.get("batch_ids") or ([batch["batch_id"]] if batch.get("batch_id") else []))
    created = batch.get("created_at")
    ended = batch.get("ended_at")
    turnaround = float(ended) - float(created) if isinstance(created, (int, float)) and isinstance(
        ended, (int, float)) else batch.get("turnaround_s")
    return {"batch_ids": ids, "status": batch.get("status"), "request_counts": batch.get("request_counts"),
            "turnaround_s": turnaround}


# ---- step 5: the judge's verdicts joined in: a ModelRecord ---------------------------------------

def model_record(config: MatrixConfig, spec: ModelSpec, graded: Mapping[str, Any],
                 judge_records: Sequence[Mapping[str, Any]] | None = None,
                 judge_batch: Mapping[str, Any] | None = None) -> ModelRecord:
    """One model's record: each sample's final status and score, aggregates with intervals, cost, time.

    With a judge, its verdict is the sample's score (``scores["judge"]``; the deterministic grade
    stays in ``scores["exact"]``); a judge answer with no ``GRADE:`` is ``unparsed`` and a failed
    judge request ``errored``: both counted apart, and 0 in ``overall``, never a better score.
    """
    samples = [SampleResult.model_validate(s) for s in graded["samples"]]
    judge_usage = None
    if config.judge is not None:
        by_id = _records_by_id(judge_records or [])
        judge_usage = TokenUsage()
        for i, s in enumerate(samples):
            if s.status != "graded":
                continue
            rec = by_id.get(judge_custom_id(spec.model, s.custom_id))
            if rec is not None:
                judge_usage = _add_usage(judge_usage, rec.get("usage"))
            if rec is None or not rec.get("ok") or rec.get("text") is None:
                code = ((rec or {}).get("error") or {}).get("code") if rec else "missing_result"
                samples[i] = s.model_copy(update={"status": "errored", "score": None, "passed": None,
                                                  "error_code": f"judge_{code or 'failed'}",
                                                  "scores": {**s.scores, "judge": None}})
                continue
            found = _GRADE.search(str(rec["text"]))
            if found is None:
                samples[i] = s.model_copy(update={"status": "unparsed", "score": None, "passed": None,
                                                  "error_code": "judge_unparsed", "detail": str(rec["text"])[:200],
                                                  "scores": {**s.scores, "judge": None}})
                continue
            value = _GRADE_VALUE[found.group(1)]
            samples[i] = s.model_copy(update={"score": value, "passed": value >= 0.5,
                                              "scores": {**s.scores, "judge": value}})
    counts = ResultCounts.tally(samples)
    usage = TokenUsage.model_validate(graded.get("usage") or {})
    answers_batch = graded.get("batch") or {}
    judges = _batch_summary(judge_batch)
    by_cat: dict[str, list[float]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s.score or 0.0)
    turnaround = [t for t in (answers_batch.get("turnaround_s"), judges.get("turnaround_s")) if t is not None]
    return ModelRecord(
        model=spec.model, provider=spec.provider or "openai", connection=spec.connection,
        overall=_mean_ci([s.score or 0.0 for s in samples]),
        answered=_mean_ci([s.score or 0.0 for s in samples if s.status == "graded"]),
        by_category={c: _mean_ci(v) for c, v in sorted(by_cat.items())},
        result_counts=counts,
        graders=_grader_results(config, samples),
        usage=usage,
        cost=Cost(actual=spec.price.cost(usage) if spec.price else None,
                  currency=spec.price.currency if spec.price else "USD"),
        judge_usage=judge_usage,
        judge_cost=None if config.judge is None else Cost(
            actual=config.judge.price.cost(judge_usage) if config.judge.price and judge_usage else None),
        turnaround_s=sum(turnaround) if turnaround else None,
        batch_ids=[*answers_batch.get("batch_ids", []), *judges.get("batch_ids", [])],
        complete=counts.complete,
        samples=samples,
    )


def _grader_results(config: MatrixConfig, samples: Sequence[SampleResult]) -> list[GraderResult]:
    out = []
    names = ["exact", *(["judge"] if config.judge is not None else [])]
    for name in names:
        values = [s.scores.get(name) for s in samples if name in s.scores]
        given = [v for v in values if v is not None]
        out.append(GraderResult(
            name=name, kind="model_graded" if name == "judge" else "exact",
            passed=sum(1 for v in given if v >= (0.5 if name == "judge" else 1.0)),
            failed=sum(1 for v in given if v < (0.5 if name == "judge" else 1.0)),
            errored=sum(1 for s in samples if s.status in ("failed", "errored") and s.scores.get(name) is None),
            unparsed=sum(1 for s in samples if s.status == "unparsed") if name == "judge" else 0,
            mean=_mean_ci(given) if given else None,
            judge_models=[config.judge.model] if name == "judge" and config.judge else []))
    return out


# ---- statistics --------------------------------------------------------------------------------

_Z = 1.959963984540054


def _mean_ci(values: Sequence[float]) -> Aggregate:
    """Mean with a 95 % normal interval on the standard error, clipped to 0..1."""
    n = len(values)
    if n == 0:
        return Aggregate(n=0, mean=0.0, ci_low=0.0, ci_high=0.0, method="none")
    mean = sum(values) / n
    if n < 2:
        return Aggregate(n=n, mean=mean, ci_low=mean, ci_high=mean, method="none")
    se = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n)
    return Aggregate(n=n, mean=round(mean, 6), ci_low=round(max(0.0, mean - _Z * se), 6),
                     ci_high=round(min(1.0, mean + _Z * se), 6), method="stderr", stderr=round(se, 6))


def _paired(model: ModelRecord, reference: Mapping[str, float], *, kind: str, ref_name: str,
            alpha: float) -> Comparison | None:
    """Paired difference (this minus reference) over the samples both have, with a normal interval and test."""
    mine = _scores_of(model)
    pairs = [(mine[k], reference[k]) for k in sorted(set(mine) & set(reference))]
    n = len(pairs)
    if n < 2:
        return None
    diffs = [a - b for a, b in pairs]
    d = sum(diffs) / n
    se = math.sqrt(sum((x - d) ** 2 for x in diffs) / (n - 1) / n)
    z = d / se if se > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
    p = math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else 0.0
    return Comparison(model=model.model, kind=kind, reference=ref_name, n=n,  # type: ignore[arg-type]
                      mean=round(sum(a for a, _ in pairs) / n, 6), reference_mean=round(sum(b for _, b in pairs) / n, 6),
                      diff=round(d, 6), ci_low=round(d - _Z * se, 6), ci_high=round(d + _Z * se, 6),
                      p_value=round(p, 6), significant=p < alpha)


def _scores_of(model: ModelRecord) -> dict[str, float]:
    return {f"{s.item_id}#{s.epoch}": s.score or 0.0 for s in model.samples}


def _previous_record(report_dir: StorageTarget, history: Sequence[Mapping[str, Any]], model: str,
                     eval_hash: str) -> tuple[str, ModelRecord] | None:
    """The model's newest recorded run of the same eval set, as its full record (for the paired comparison)."""
    runs = [h for h in history if h.get("eval_set_hash") == eval_hash]
    if not runs:
        return None
    text = storage.read_text(storage.join(report_dir, *str(runs[-1]["record"]).split("/")), default=None)
    if not text:
        return None
    try:
        return str(runs[-1]["run_id"]), RunRecord.from_json(text).model(model)
    except (ValueError, KeyError):  # a record from an older writer that lost the model: no comparison
        return None


# ---- the run: record, comparisons, gate, report -------------------------------------------------

def finish_run(config: MatrixConfig, models: Sequence[ModelRecord | Mapping[str, Any]], *, run_id: str,
               pipeline: str, report_dir: StorageTarget, started_at: dt.datetime | None = None,
               ) -> tuple[RunRecord, dict[str, str]]:
    """Compare, gate, write the report and the history; returns the record and where the report is.

    The gate's verdict is in the record; :func:`enforce_gate` raises on it *after* the report is written.
    """
    records = [m if isinstance(m, ModelRecord) else ModelRecord.model_validate(m) for m in models]
    eval_set = config.eval_set_read()
    info = EvalSetInfo(name=eval_set.name, hash=eval_set.hash, n_items=len(eval_set.items), source=eval_set.source)
    comparisons: list[Comparison] = []
    base = next((m for m in records if m.model == config.baseline_model), None)
    history = read_model_history(report_dir, [m.model for m in records])
    for m in records:
        previous = _previous_record(report_dir, history.get(m.model, []), m.model, info.hash)
        if previous is not None:
            c = _paired(m, _scores_of(previous[1]), kind="previous_run", ref_name=previous[0], alpha=config.alpha)
            if c is not None:
                comparisons.append(c)
        if base is not None and m is not base:
            c = _paired(m, _scores_of(base), kind="baseline_model", ref_name=base.model, alpha=config.alpha)
            if c is not None:
                comparisons.append(c)
    now = dt.datetime.now(dt.UTC)
    run = RunRecord(run_id=run_id, pipeline=pipeline, started_at=started_at or now, finished_at=now, eval_set=info,
                    graders=_grader_descriptions(config), models=records, comparisons=comparisons,
                    gate=_gate(config, records, comparisons), baseline_model=config.baseline_model)
    with storage.local_folder(report_dir) as root:
        files = write_run_report(run, root, history)
        shown = files.as_dict()
        if storage.is_remote(report_dir):  # name the files where they went, not the staging folder
            shown = {k: storage.display(storage.join(report_dir, *Path(v).relative_to(root).parts))
                     for k, v in shown.items()}
    return run, shown


def _grader_descriptions(config: MatrixConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "exact", "kind": "exact", "options": {"scorer": "per item (exact, "
                                                                                "contains, numeric)"}}]
    if config.judge is not None:
        out.append({"name": "judge", "kind": "model_graded", "template": config.judge.template,
                    "judge_models": [config.judge.model], "grade_pattern": _GRADE.pattern})
    return out


def _gate(config: MatrixConfig, models: Sequence[ModelRecord], comparisons: Sequence[Comparison]) -> GateDecision:
    """Fail on a drop vs the previous run that is significant AND at least ``min_drop``; incomplete apart."""
    previous = [c for c in comparisons if c.kind == "previous_run"]
    failing = [c for c in previous if c.significant and c.diff < 0 and -c.diff >= config.min_drop - 1e-12]
    incomplete = [m for m in models if not m.complete]
    if failing:
        reason = "; ".join(f"{c.model}: {c.reference_mean:.1%} → {c.mean:.1%} ({c.diff * 100:+.1f} points, "
                           f"95% CI [{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}], p={c.p_value:.3g})"
                           for c in failing)
        return GateDecision(status="fail", reason=f"significant drop of at least {config.min_drop * 100:.1f} points "
                            f"vs the previous run: {reason}", min_drop=config.min_drop, alpha=config.alpha,
                            failing=[c.model for c in failing])
    if incomplete:
        reason = "; ".join(f"{m.model}: {m.result_counts.errored} errored, {m.result_counts.unparsed} unparsed"
                           for m in incomplete)
        return GateDecision(status="incomplete", reason=f"{reason} (counted as 0, never a better score); "
                            "no significant drop vs the previous run", min_drop=config.min_drop, alpha=config.alpha)
    if not previous:
        return GateDecision(status="no_reference", reason="first recorded run of this eval set: nothing to compare "
                            "with yet", min_drop=config.min_drop, alpha=config.alpha)
    return GateDecision(status="pass", reason="no significant drop of at least "
                        f"{config.min_drop * 100:.1f} points vs the previous run", min_drop=config.min_drop,
                        alpha=config.alpha)


def enforce_gate(run: RunRecord, report: Mapping[str, str] | None = None) -> None:
    """Raise :class:`EvalGateError` when the gate failed the run (the report is written already)."""
    if run.gate is not None and run.gate.status == "fail":
        where = f"; report: {report.get('html')}" if report else ""
        raise EvalGateError(f"eval gate failed: {run.gate.reason}{where}; fix the regression, or raise min_drop "
                            "if the change is expected")
