"""A model matrix eval, once, for both orchestrators: several models, a judge batch, one record, one report.

``dags/eval_matrix.py`` (Airflow: dynamic task mapping, every batch deferred) and
``flows/eval_matrix.py`` (Prefect: concurrent tasks) drive the same five steps; the batches run
in between, each through the orchestrator's own adapter and the model's own connection:

1. :func:`answer_requests` — per model, the eval set's requests (provider-neutral: any provider); with a
   run budget, :func:`answer_estimate` and :func:`batch_budgets` refuse the run before any upload and give
   each batch its share;
2. (the orchestrator runs one batch per model, all at once, with the run's price overrides
   :meth:`MatrixConfig.prices` and its budget share: the submission core estimates each batch before its
   upload and bills it after, :mod:`batch_ops.cost`);
3. :func:`grade_answers` — per model, the answers graded by the deterministic graders, and the
   judges' requests (a **second batch** per judge: grading at batch price, with its own cost line);
4. (the orchestrator runs one judge batch per model and judge);
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
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_ops import storage
from batch_ops.cost import Estimate, Spent, check_budget, estimate
from batch_ops.errors import BatchOpsError, InputValidationError, Problem
from batch_ops.evals import grading
from batch_ops.evals.dataset import EvalSet, read_eval_set
from batch_ops.evals.graders import ModelGraded, check_graders, grader_from_config
from batch_ops.evals.record import Cost, EvalSetInfo, ModelRecord, RunRecord, SampleResult, TokenUsage
from batch_ops.evals.render import read_model_history, write_run_report
from batch_ops.evals.report import ScoreRegressionError
from batch_ops.models import Batch, ResultLine
from batch_ops.storage import StorageTarget

__all__ = [
    "DEMO_MATRIX",
    "MATRIX_RUN",
    "EvalRunError",
    "JudgeSpec",
    "MatrixConfig",
    "ModelSpec",
    "Price",
    "answer_estimate",
    "answer_requests",
    "batch_budgets",
    "enforce_gate",
    "with_times",
    "finish_run",
    "build_grader",
    "grade_answers",
    "judge_prefix",
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


class Price(BaseModel):
    """A model's batch prices in USD per million tokens, given by the user: an **override** of the price table
    (:mod:`batch_ops.cost.prices`: genai-prices' batch variants), for a model the table does not know (the
    demo's replayed models, a fine-tune, a self-hosted model) or a negotiated price. The arithmetic is
    ``batch_ops.cost``'s, never the matrix's own.

    Example:
        >>> Price(input_per_million=1.25, output_per_million=5).override()
        {'input': 1.25, 'output': 5.0}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)

    def override(self) -> dict[str, float]:
        """The ``prices=`` entry of :mod:`batch_ops.cost` (USD per 1M tokens)."""
        return {"input": self.input_per_million, "output": self.output_per_million}


class ModelSpec(BaseModel):
    """One model of the matrix and how to reach it.

    Attributes:
        model: The model name sent in every request (Azure: the deployment).
        connection: The Airflow connection id / Prefect credentials block name (None: the default one).
        provider: Shown in the report (``openai``, ``anthropic``, …); the connection decides what is spoken.
        price: Batch prices overriding the price table (None: genai-prices' batch price; a model it does not
            know has no estimate and no cost, never a guessed one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=1)
    connection: str | None = None
    provider: str | None = None
    price: Price | None = None


class JudgeSpec(ModelSpec):
    """The judge: a pinned model (and its connection) that grades answers in a second batch.

    Attributes:
        template: ``closed_qa``, ``rubric`` or ``factuality`` (:data:`~batch_ops.evals.graders.TEMPLATES`).
        criterion: The criterion or rubric (``{expected}`` and metadata fields allowed); None: the template's.
        pass_threshold: The score a sample needs to pass.
        max_tokens: The judge's answer length (it reasons before its grade).
    """

    template: str = "closed_qa"
    criterion: str | None = None
    pass_threshold: float = Field(default=1.0, ge=0, le=1)
    max_tokens: int = Field(default=512, ge=1)


class MatrixConfig(BaseModel):
    """What one matrix run evaluates: the eval set, the models, the judge, the baseline and the gate's minimum.

    Attributes:
        eval_set: A JSONL or CSV eval set (path or object storage URL); None: the shipped set.
        template: The user-message template (``{input}``, metadata fields); None: the set's default.
        models: The models (at least one; names unique).
        judge: The judge (None: deterministic graders only, no second batch); its template, criterion,
            threshold and answer length apply to every judge.
        judges: More pinned judges (model, connection, price): each grades every answer in its own batch and
            the grade is their majority (a tie goes to the lower grade; :class:`ModelGraded`). Params may
            give ``judge`` as a list instead: its first entry is ``judge``, the rest ``judges``.
        max_cost_usd: The run's budget in USD at batch prices (None: none): the answers' estimates are checked
            against it before any upload (:func:`batch_budgets`), and every batch, judges' too, carries its
            share as its own ``max_cost_usd``, so the submission core refuses a batch that could pass it.
        baseline: The model the others are compared with (default: the first).
        min_drop: The gate fails a model only on a significant drop of at least this much (0.02 = 2 points).
        alpha: The significance level of the gate's test.
        max_tokens: Most tokens per answer.
        epochs: Answers per item (one batch still: ``<id>__e<k>`` request ids); the item's score is the mean
            over its epochs, and the report adds pass@k (unbiased estimator) for k = 1 and k = epochs.
        temperature: The answers' sampling temperature (default 0; several epochs need more than 0, or every
            epoch repeats the first).
        graders: The deterministic / Python graders (:func:`build_grader` forms); default ``item_scorer``,
            each item's own scorer (the shipped set's way).
        ci / cluster: How intervals are computed (``stderr``, ``bootstrap``, ``clustered`` by a metadata key).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    eval_set: str | None = None
    template: str | None = None
    models: list[ModelSpec] = Field(min_length=1)
    judge: JudgeSpec | None = None
    judges: list[ModelSpec] = Field(default_factory=list)
    max_cost_usd: float | None = Field(default=None, ge=0)
    baseline: str | None = None
    min_drop: float = Field(default=0.02, ge=0, le=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    max_tokens: int = Field(default=64, ge=1)
    epochs: int = Field(default=1, ge=1, le=100)
    temperature: float | None = Field(default=None, ge=0, le=2)
    graders: list[str | dict[str, Any]] = Field(default_factory=lambda: list[str | dict[str, Any]](["item_scorer"]))
    ci: Literal["stderr", "bootstrap", "clustered"] = "stderr"
    cluster: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MatrixConfig:
        """The config from DAG params / flow parameters: a model may be a name or a mapping.

        Bad input is refused here, before any batch is paid for: an :class:`InputValidationError`
        naming each problem and its fix.
        """
        raw = dict(params)
        raw["models"] = [{"model": m} if isinstance(m, str) else m for m in raw.get("models") or []]
        judge = raw.get("judge")
        if isinstance(judge, list):  # several judges: the first carries the grading settings
            raw["judge"], raw["judges"] = (judge[0] if judge else None), [*judge[1:], *(raw.get("judges") or [])]
        elif judge is None and raw.get("judges"):
            raw["judge"], raw["judges"] = raw["judges"][0], raw["judges"][1:]
        if isinstance(raw.get("judge"), str):
            raw["judge"] = {"model": raw["judge"]}
        raw["judges"] = [{"model": j} if isinstance(j, str) else j for j in raw.get("judges") or []]
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise InputValidationError(
                [Problem(rule="invalid_matrix_param", param=".".join(str(p) for p in e["loc"]) or "params",
                         message=e["msg"], fix="give models as names or {model, connection, provider, price}; "
                         "judge as a name, {model, connection, price, template, ...} or a list of them; "
                         "see docs/evals.md") for e in exc.errors()],
                source="params") from None
        names = [m.model for m in config.models]
        problems = [Problem(rule="duplicate_model", param="models", message=f"model {n!r} appears twice",
                            fix="name each model once (two connections to one model: evaluate them in two runs)")
                    for n in sorted({n for n in names if names.count(n) > 1})]
        judges = [j.model for j in config.judge_specs()]
        problems += [Problem(rule="duplicate_judge", param="judge", message=f"judge {n!r} appears twice",
                             fix="name each judge once (a majority of one model's votes is that model's vote)")
                     for n in sorted({n for n in judges if judges.count(n) > 1})]
        if config.epochs > 1 and not config.temperature:
            problems.append(Problem(rule="epochs_without_temperature", param="temperature",
                                    message=f"epochs={config.epochs} at temperature {config.temperature or 0}: "
                                    "every epoch would repeat the first answer",
                                    fix="give a temperature above 0 (e.g. 0.7), or epochs=1"))
        if config.baseline is not None and config.baseline not in names:
            problems.append(Problem(rule="unknown_baseline", param="baseline",
                                    message=f"baseline {config.baseline!r} is not one of the models {names}",
                                    fix="name one of the models, or leave baseline empty (the first model)"))
        if problems:
            raise InputValidationError(problems, source="models")
        config.all_graders()  # a grader or judge set up wrong is refused here, before anything is spent
        return config

    def check(self) -> EvalSet:
        """Read the eval set and refuse, before any batch is paid for, what would fail later: template fields
        an item lacks, graders needing an expected answer an item has not (line-numbered errors)."""
        eval_set = self.eval_set_read()
        eval_set.check()
        check_graders(self.all_graders(), eval_set.items)
        return eval_set

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

    def grader_objects(self) -> list[Any]:
        """The graders that grade as the answers come back (the judge is :meth:`judge_grader`)."""
        return [build_grader(g) for g in self.graders]

    def judge_specs(self) -> list[ModelSpec]:
        """Every judge, the first (``judge``) first: one judge batch each, per model."""
        return [self.judge, *self.judges] if self.judge is not None else []

    def judge_spec(self, model: str) -> ModelSpec:
        return next(j for j in self.judge_specs() if j.model == model)

    def prices(self) -> dict[str, dict[str, float]]:
        """The price overrides the params give (``batch_ops.cost``'s ``prices=``), for every batch of the run:
        the estimate before each upload, the budget, and the actual bill all read this one table."""
        return {m.model: m.price.override() for m in [*self.models, *self.judge_specs()] if m.price is not None}

    def judge_grader(self) -> ModelGraded | None:
        """The model-graded grader of the judges, pinned to their models (None without a judge)."""
        if self.judge is None:
            return None
        return ModelGraded(judges=[j.model for j in self.judge_specs()], template=self.judge.template,
                           criterion=self.judge.criterion, pass_threshold=self.judge.pass_threshold,
                           max_tokens=self.judge.max_tokens)

    def all_graders(self) -> list[Any]:
        judge = self.judge_grader()
        return [*self.grader_objects(), *([judge] if judge is not None else [])]


# ---- step 1: the answers' requests -------------------------------------------------------------

def answer_requests(config: MatrixConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    """The eval set's requests for one model: provider-neutral chat requests (the connection's provider
    writes them in its own words)."""
    return [r.as_dict() for r in config.eval_set_read().requests(
        spec.model, max_tokens=config.max_tokens, epochs=config.epochs, temperature=config.temperature or 0.0)]


def answer_estimate(config: MatrixConfig, requests: Sequence[Mapping[str, Any]], *,
                    provider: str = "openai") -> Estimate:
    """What one model's answers may cost, before anything is uploaded: :func:`batch_ops.cost.estimate`, the
    function the submission core runs before each upload, with the run's price overrides (:meth:`MatrixConfig.prices`).
    ``provider``: the connection's (its request shape and its prices)."""
    return estimate(requests, provider=provider, prices=config.prices())


def batch_budgets(config: MatrixConfig, estimates: Mapping[str, Estimate]) -> dict[str, Any]:
    """Each batch's share of the run's budget ``max_cost_usd``, refused before any upload when the answers alone
    could pass it.

    With ``U_i`` each model's answers' upper bound and ``slack`` = budget - sum(U_i), shared evenly by every
    batch of the run (one answers batch and one batch per judge, per model): an answers batch may spend
    ``U_i + share`` and a judge batch ``share``. The caps add up to the budget, and the submission core
    refuses any batch (or retry) whose upper bound, with what its chain spent, passes its cap: the run
    cannot spend more than its budget. Returns ``{"answers": {model: usd}, "judge": usd}``; all None
    without a budget.

    Example:
        >>> from decimal import Decimal
        >>> from batch_ops.cost import Estimate, ModelEstimate
        >>> config = MatrixConfig.from_params({"models": ["a", "b"], "judge": "j", "max_cost_usd": 1.0})
        >>> est = {m: Estimate("openai", "overrides", "today", models={m: ModelEstimate(m, upper=Decimal(u))})
        ...        for m, u in (("a", "0.3"), ("b", "0.1"))}
        >>> batch_budgets(config, est)
        {'answers': {'a': 0.45, 'b': 0.25}, 'judge': 0.15}
    """
    if config.max_cost_usd is None:
        return {"answers": {m.model: None for m in config.models}, "judge": None}
    combined = Estimate("mixed", "", "")
    for one in estimates.values():
        combined.models.update(one.models)
        combined.problems.extend(one.problems)
        combined.dearest.extend(one.dearest)
        combined.table_source, combined.table_date, combined.provider = one.table_source, one.table_date, one.provider
    combined.dearest = sorted(combined.dearest, key=lambda c: -c.upper)[:3]
    check_budget(config.max_cost_usd, combined, Spent(), attempt=0)  # the whole run's answers, before any upload
    batches = len(config.models) * (1 + len(config.judge_specs()))
    share = (Decimal(str(config.max_cost_usd)) - combined.upper) / batches
    return {"answers": {m: _down(e.upper + share) for m, e in estimates.items()},
            "judge": _down(share) if config.judge_specs() else None}


def _down(usd: Decimal) -> float:
    """Rounded down to a billionth of a dollar: caps that add up to the budget never pass it by rounding."""
    return float(usd.quantize(Decimal("1e-9"), rounding=ROUND_DOWN))


# ---- step 3: deterministic grades, and the judge's requests --------------------------------------

def judge_prefix(model: str) -> str:
    """What prefixes the judge's request ids for one model's answers: one judge grades every model, so its
    ids (and the replay of a recorded judge) name the model whose answer it grades. Kept to the characters
    and length every provider takes in an id (Anthropic: ``[A-Za-z0-9_-]{1,64}``); each model has its own
    judge batch, so two models whose names read alike here never share one.

    Examples:
        >>> judge_prefix("demo-large") + "arith-000__j1", judge_prefix("gpt-4.1-mini")
        ('demo-large__arith-000__j1', 'gpt-4-1-mini__')
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "-", model)[:24] + "__"


def build_grader(spec: str | Mapping[str, Any]) -> Any:
    """A grader from its params form: a kind name, or ``{"kind": ..., options}``
    (:func:`batch_ops.evals.graders.grader_from_config`).

    Examples:
        >>> build_grader("exact").name, build_grader({"kind": "numeric", "tolerance": 0.01}).tolerance
        ('exact', 0.01)
    """
    return grader_from_config({"kind": spec} if isinstance(spec, str) else spec)


def _records_to_results(records: Iterable[Mapping[str, Any]]) -> list[ResultLine]:
    """The adapters' result records (``OpenAIBatchHook.get_results``, ``read_batch_results``) as result lines."""
    out = []
    for r in records:
        if r.get("ok"):
            out.append(ResultLine(custom_id=str(r["custom_id"]), response={"status_code": 200, "body": r.get("body")}))
        else:
            error = r.get("error") or {}
            out.append(ResultLine(custom_id=str(r["custom_id"]),
                                  error={"code": error.get("code") or "error", "message": error.get("message")}))
    return out


def grade_answers(config: MatrixConfig, spec: ModelSpec, records: Sequence[Mapping[str, Any]],
                  batch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One model's answers graded by the deterministic graders, and the judge batch's requests.

    A request with no successful result is a ``failed`` sample (``error_code`` says why: the
    error line's code, ``batch_expired``, ``missing_result``): counted apart, never a wrong
    answer. Returns JSON: ``model``, ``samples`` (the judge's verdicts pending), ``judge_batches``
    (one ``{"judge", "connection", "requests"}`` per judge, in :meth:`MatrixConfig.judge_specs` order; empty
    without a judge), ``usage``, ``batch`` (ids, times, the estimate and the bill: :func:`with_times`).
    """
    eval_set = config.eval_set_read()
    results = _records_to_results(records)
    samples = grading.grade_answers(eval_set, results, config.all_graders(), model=spec.model, epochs=config.epochs)
    judge: list[dict[str, Any]] = []
    judge_grader = config.judge_grader()
    if judge_grader is not None:
        items = {i.id: i for i in eval_set.items}
        split = judge_grader.judge_batches(samples, items, prefix=judge_prefix(spec.model))
        judge = [{"judge": j.model, "connection": j.connection, "requests": [r.as_dict() for r in split[j.model]]}
                 for j in config.judge_specs() if split.get(j.model)]
        if not judge:
            # Nothing to judge: no answer came back. A judge batch of nothing cannot be created, and a report
            # of a model with no answer is no eval: say what happened, loudly.
            codes = sorted({str(s.error_code) for s in samples})
            raise EvalRunError(f"model {spec.model!r}: none of its {len(samples)} requests has an answer "
                               f"({', '.join(codes)}); nothing to judge. Fix: check the model's connection and "
                               f"batch {((batch or {}).get('batch_id'))!r}, then run again")
    return {"model": spec.model, "samples": [s.model_dump(mode="json") for s in samples], "judge_batches": judge,
            "usage": grading.usage_of(results).model_dump(), "batch": _batch_summary(batch)}


def with_times(outcome: Mapping[str, Any], batches: Sequence[Batch]) -> dict[str, Any]:
    """A batch outcome (XCom, ``BatchResult``) with the times of its attempts: the first one's creation and
    the last one's end, so that the record can say how long the model's batch took (its turnaround). The
    outcome's other fields ride along, ``estimate`` (made by the submission core before the upload) and ``cost``
    (the chain's bill) among them: the record's cost columns.

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
    """What the record keeps of a batch: ids, status, counts, its turnaround (created → ended) and its cost:
    the estimate the submission core made before the upload and the actual bill (the adapters' ``estimate``
    and ``cost``, :mod:`batch_ops.cost`), as a :class:`Cost`.

    Examples:
        >>> _batch_summary({"batch_id": "b", "estimate": {"lower_usd": 0.1, "upper_usd": 0.5},
        ...                 "cost": {"cost_usd": 0.2, "complete": True}})["cost"]
        {'estimate_low': 0.1, 'estimate_high': 0.5, 'actual': 0.2, 'currency': 'USD'}
    """
    if not batch:
        return {}
    ids = list(batch.get("batch_ids") or ([batch["batch_id"]] if batch.get("batch_id") else []))
    created, ended = batch.get("created_at"), batch.get("ended_at")
    turnaround = float(ended) - float(created) if isinstance(created, (int, float)) and isinstance(
        ended, (int, float)) else batch.get("turnaround_s")
    return {"batch_ids": ids, "status": batch.get("status"), "request_counts": batch.get("request_counts"),
            "turnaround_s": turnaround, "cost": _cost_of(batch).model_dump()}


def _cost_of(batch: Mapping[str, Any]) -> Cost:
    """The batch's estimate range and actual bill (USD, batch prices); a bill missing a model's price is no
    actual cost (a floor is not the cost), and no estimate stays None, never a guess."""
    est, bill = batch.get("estimate") or {}, batch.get("cost") or {}
    return Cost(estimate_low=est.get("lower_usd"), estimate_high=est.get("upper_usd"),
                actual=bill.get("cost_usd") if bill.get("complete", True) else None)


def _sum_costs(costs: Sequence[Mapping[str, Any]]) -> Cost:
    """Several batches' costs added (a model's judge batches); a part unknown makes the sum unknown."""
    def total(key: str) -> float | None:
        values = [c.get(key) for c in costs]
        known = [float(v) for v in values if v is not None]
        return round(sum(known), 10) if values and len(known) == len(values) else None
    return Cost(estimate_low=total("estimate_low"), estimate_high=total("estimate_high"), actual=total("actual"))


# ---- step 5: the judge's verdicts joined in: a ModelRecord ---------------------------------------

def model_record(config: MatrixConfig, spec: ModelSpec, graded: Mapping[str, Any],
                 judge_records: Sequence[Mapping[str, Any]] | None = None,
                 judge_batch: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> ModelRecord:
    """One model's record: each sample's final status and score, aggregates with intervals, cost, time.

    ``judge_records``: every judge batch's result records (several judges: all of them, their majority is
    the grade); ``judge_batch``: the judge batches' outcomes (one, or a list). A judge answer with no grade
    is ``unparsed`` and a failed judge request ``errored``: both counted apart, and 0 in ``overall``, never
    a better score (:mod:`batch_ops.evals.grading`). Cost: the answers' and the judges' estimates (made
    before their uploads) and actual bills, from the batch outcomes (:mod:`batch_ops.cost`); time: the
    answers batch's turnaround and the judges' (the slowest of them: they run at once).
    """
    samples = [SampleResult.model_validate(s) for s in graded["samples"]]
    judge_grader = config.judge_grader()
    judge_usage = None
    if judge_grader is not None:
        results = _records_to_results(judge_records or [])
        grades = judge_grader.grades_from_judge(results, prefix=judge_prefix(spec.model))
        samples = grading.apply_judge(samples, judge_grader, grades)
        judge_usage = grading.usage_of(results)
    usage = TokenUsage.model_validate(graded.get("usage") or {})
    answers_batch = graded.get("batch") or {}
    outcomes = [judge_batch] if isinstance(judge_batch, Mapping) else list(judge_batch or [])
    judges = [_batch_summary(b) for b in outcomes]
    judge_times = [j["turnaround_s"] for j in judges if j.get("turnaround_s") is not None]
    record = grading.model_record(
        samples, model=spec.model, graders=config.all_graders(), provider=spec.provider or "openai",
        connection=spec.connection, ci=config.ci, cluster=config.cluster, usage=usage, judge_usage=judge_usage,
        pass_k=sorted({1, config.epochs}), cost=Cost.model_validate(answers_batch.get("cost") or {}),
        judge_cost=None if judge_usage is None else _sum_costs([j.get("cost") or {} for j in judges]),
        turnaround_s=answers_batch.get("turnaround_s"),
        batch_ids=[*answers_batch.get("batch_ids", []), *(i for j in judges for i in j.get("batch_ids", []))],
    )
    return record.model_copy(update={"judge_turnaround_s": max(judge_times) if judge_times else None})


# ---- the run: record, comparisons, gate, report -------------------------------------------------

def _previous_run(report_dir: StorageTarget, history: Mapping[str, Sequence[Mapping[str, Any]]],
                  eval_hash: str) -> RunRecord | None:
    """Each model's newest recorded run of the same eval set, as one record to compare with (None: none yet)."""
    models: list[ModelRecord] = []
    runs: list[str] = []
    info: EvalSetInfo | None = None
    for model, entries in history.items():
        same = [h for h in entries if h.get("eval_set_hash") == eval_hash]
        if not same:
            continue
        text = storage.read_text(storage.join(report_dir, *str(same[-1]["record"]).split("/")), default=None)
        if not text:
            continue
        try:
            record = RunRecord.from_json(text)
            models.append(record.model(model))
        except (ValueError, KeyError):  # a record that lost the model, or unreadable: no comparison for it
            continue
        info = record.eval_set
        runs.append(record.run_id)
    if not models or info is None:
        return None
    return RunRecord(run_id=",".join(sorted(set(runs))), eval_set=info, models=models)


def finish_run(config: MatrixConfig, models: Sequence[ModelRecord | Mapping[str, Any]], *, run_id: str,
               pipeline: str, report_dir: StorageTarget, started_at: dt.datetime | None = None,
               ) -> tuple[RunRecord, dict[str, str]]:
    """Compare, gate, write the report and the history; returns the record and where the report is.

    The gate's verdict is in the record; :func:`enforce_gate` raises on it *after* the report is written.
    """
    records = [m if isinstance(m, ModelRecord) else ModelRecord.model_validate(m) for m in models]
    eval_set = config.eval_set_read()
    history = read_model_history(report_dir, [m.model for m in records])
    run = grading.run_record(
        run_id=run_id, eval_set=eval_set, models=records, graders=config.all_graders(),
        previous=_previous_run(report_dir, history, eval_set.hash), baseline_model=config.baseline_model,
        min_drop=config.min_drop, alpha=config.alpha, cluster=config.cluster, pipeline=pipeline,
        started_at=started_at or dt.datetime.now(dt.UTC))
    with storage.local_folder(report_dir) as root:
        files = write_run_report(run, root, history)
        shown = files.as_dict()
        if storage.is_remote(report_dir):  # name the files where they went, not the staging folder
            shown = {k: storage.display(storage.join(report_dir, *Path(v).relative_to(root).parts))
                     for k, v in shown.items()}
    return run, shown


def enforce_gate(run: RunRecord, report: Mapping[str, str] | None = None) -> None:
    """Raise :class:`~batch_ops.evals.ScoreRegressionError` when the gate failed the run (the report is
    written already: its place is in the message)."""
    try:
        grading.check_gate(run)
    except ScoreRegressionError as exc:
        if report:
            raise ScoreRegressionError(f"{exc}; report: {report.get('html')}") from None
        raise
