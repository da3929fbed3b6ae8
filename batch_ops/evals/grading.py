"""From batch results to a :class:`~batch_ops.evals.record.RunRecord`: grade, judge, aggregate, compare, gate.

The steps, each a plain function the DAG, the flow or a notebook calls in turn:

1. :func:`grade_answers` — the answer batch's results + the graders → one
   :class:`~batch_ops.evals.record.SampleResult` per item and epoch (deterministic and Python graders
   grade now; model-graded ones are ``pending``);
2. for each :class:`~batch_ops.evals.graders.ModelGraded` grader: ``grader.judge_requests(samples, items)``
   → the judge batch → :func:`apply_judge` with ``grader.grades_from_judge(results)``;
3. :func:`model_record` — one model's samples → its :class:`~batch_ops.evals.record.ModelRecord`
   (overall and per-category intervals, counts, per-grader results, pass@k, usage and cost fields);
4. :func:`compare_to_baseline` / :func:`compare_to_previous` — paired comparisons;
5. :func:`run_record` — the whole run, the gate decided (:func:`batch_ops.evals.stats.gate`);
   :func:`check_gate` raises :class:`~batch_ops.evals.ScoreRegressionError` when it failed.

A request that failed, expired or was cancelled is a ``failed`` sample; a grader that could not
give a verdict makes the sample ``errored`` or ``unparsed``. In the overall score such a sample
counts as 0 (an outage can never raise a score), ``answered`` is the score over graded samples,
and the record is ``complete`` only when every sample was graded. Paired comparisons use the items
graded in both runs (or by both models), so that an outage on one side is reported, not scored as
a change of quality.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> from batch_ops.evals.graders import Exact, Numeric
    >>> from batch_ops.models import ResultLine
    >>> items = [EvalItem(id=f"q{i}", input="?", expected=str(i), category="c" + str(i % 2)) for i in range(4)]
    >>> def said(cid, text):
    ...     return ResultLine(custom_id=cid, response={"status_code": 200, "body": {"choices": [
    ...         {"message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": 5,
    ...         "completion_tokens": 1, "total_tokens": 6}}})
    >>> results = [said("q0", "0"), said("q1", "1"), said("q2", "7"),
    ...            ResultLine(custom_id="q3", error={"code": "batch_expired", "message": "expired"})]
    >>> samples = grade_answers(items, results, [Numeric()], model="m")
    >>> [(s.item_id, s.status, s.score) for s in samples]
    [('q0', 'graded', 1.0), ('q1', 'graded', 1.0), ('q2', 'graded', 0.0), ('q3', 'failed', None)]
    >>> rec = model_record(samples, model="m", graders=[Numeric()], usage=usage_of(results))
    >>> rec.overall.mean, rec.answered.mean, rec.complete, rec.result_counts.expired, rec.usage.input_tokens
    (0.5, 0.6666666666666666, False, 1, 15)
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from batch_ops.errors import ConfigurationError
from batch_ops.evals.dataset import EvalItem, EvalSet, sample_custom_id
from batch_ops.evals.graders import Grade, check_graders, is_model_graded
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
    Verdict,
)
from batch_ops.evals.stats import CiMethod, aggregate, gate, mean_interval, mean_pass_at_k, paired
from batch_ops.models import ResultLine

__all__ = [
    "apply_judge",
    "check_gate",
    "compare_to_baseline",
    "compare_to_previous",
    "grade_answers",
    "item_scores",
    "model_record",
    "run_record",
    "usage_of",
]


def _items_of(items: EvalSet | Sequence[EvalItem]) -> list[EvalItem]:
    return list(items.items) if isinstance(items, EvalSet) else list(items)


def usage_of(results: Iterable[ResultLine]) -> TokenUsage:
    """The tokens a batch's results used (any provider's usage shape)."""
    usage = TokenUsage()
    for r in results:
        usage.requests += 1
        u = r.usage
        if u is not None:
            usage.input_tokens += u.input_tokens
            usage.output_tokens += u.output_tokens
            usage.cached_tokens += u.input_tokens_details.cached_tokens
    return usage


def _verdict(grade: Grade) -> Verdict:
    return Verdict(status=grade.status, score=grade.score, passed=grade.passed, detail=grade.detail)


def _settle(sample: SampleResult) -> SampleResult:
    """Status, score and pass from the verdicts: all graded → mean score, passed if every grader passed."""
    if sample.status == "failed":
        return sample
    verdicts = sample.verdicts
    scores = {name: v.score if v.status == "graded" else None for name, v in verdicts.items()}
    update: dict[str, Any] = {"scores": scores, "score": None, "passed": None, "error_code": None,
                              "detail": None}
    bad = [(n, v) for n, v in verdicts.items() if v.status != "graded"]
    if any(v.status == "errored" for _, v in bad):
        name, v = next((n, v) for n, v in bad if v.status == "errored")
        update.update(status="errored", error_code="grader_errored", detail=f"{name}: {v.detail}")
    elif any(v.status == "pending" for _, v in bad):
        name = next(n for n, v in bad if v.status == "pending")
        update.update(status="errored", error_code="judge_missing",
                      detail=f"{name}: no judge grade was read for this answer")
    elif bad:
        name, v = bad[0]
        update.update(status="unparsed", error_code="judge_unparsed", detail=f"{name}: {v.detail}")
    else:
        graded = [v for v in verdicts.values()]
        update.update(status="graded", score=sum(v.score or 0.0 for v in graded) / len(graded),
                      passed=all(bool(v.passed) for v in graded),
                      detail="; ".join(f"{n}: {v.detail}" for n, v in verdicts.items() if v.detail) or None)
    return sample.model_copy(update=update)


def grade_answers(
    items: EvalSet | Sequence[EvalItem],
    results: Iterable[ResultLine],
    graders: Sequence[Any],
    *,
    model: str,
    epochs: int = 1,
) -> list[SampleResult]:
    """Grade one model's answers: one sample per item and epoch, in the set's order.

    ``results``: the answer batch's joined results (``client.results(batch)``, ``join_results``). A
    sample with no result, or an error / expired / cancelled one, is ``failed`` with its code
    (``missing_result``, ``batch_expired``…); results for unknown ids are ignored. Model-graded
    graders are left ``pending`` for :func:`apply_judge`.
    """
    chosen = _items_of(items)
    check_graders(graders, chosen)
    by_id: dict[str, ResultLine] = {}
    for r in results:
        by_id[r.custom_id] = r
    out: list[SampleResult] = []
    for item in chosen:
        for epoch in range(1, epochs + 1):
            cid = sample_custom_id(item.id, epoch, epochs)
            common: dict[str, Any] = {"custom_id": cid, "item_id": item.id, "model": model, "epoch": epoch,
                                      "expected": item.expected, "metadata": {"category": item.category,
                                                                              **item.metadata}}
            result = by_id.get(cid)
            if result is None or not result.ok:
                code = "missing_result" if result is None else (result.error_code or "error")
                out.append(SampleResult(**common, status="failed", error_code=code,
                                        detail=None if result is None else _short(result)))
                continue
            answer = result.text or ""
            verdicts = {}
            for g in graders:
                if is_model_graded(g):
                    verdicts[g.name] = Verdict(status="pending")
                    continue
                try:
                    verdicts[g.name] = _verdict(g.grade(answer, item))
                except ConfigurationError:
                    raise  # a grader set up wrong is the run's problem, not one sample's
                except Exception as exc:  # a grader's own failure on this answer: this sample, counted apart
                    verdicts[g.name] = Verdict(status="errored", detail=f"{type(exc).__name__}: {exc}"[:500])
            out.append(_settle(SampleResult(**common, status="graded", answer=answer, verdicts=verdicts)))
    return out


def _short(result: ResultLine) -> str | None:
    if result.error is not None:
        return (result.error.message or "")[:200] or None
    body = result.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or "")[:200] or None
    return None


def apply_judge(samples: Sequence[SampleResult], grader: Any, grades: Mapping[str, Grade]) -> list[SampleResult]:
    """Put a model-graded grader's grades (``grader.grades_from_judge(results)``) into the samples.

    A sample that was sent to the judge but has no grade back stays ``errored`` (``judge_missing``).
    """
    out = []
    for s in samples:
        if s.status == "failed" or grader.name not in s.verdicts:
            out.append(s)
            continue
        grade = grades.get(s.custom_id)
        verdict = _verdict(grade) if grade is not None else Verdict(status="pending")
        out.append(_settle(s.model_copy(update={"verdicts": {**s.verdicts, grader.name: verdict}})))
    return out


def item_scores(samples: Iterable[SampleResult], *, graded_only: bool = False) -> dict[str, float]:
    """Each item's score, the mean over its epochs.

    ``graded_only=False`` (the score): a sample not graded counts as 0. ``graded_only=True`` (for
    paired comparisons): only graded samples count, and items with none are left out.
    """
    by_item: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if s.status == "graded":
            by_item[s.item_id].append(s.score or 0.0)
        elif not graded_only:
            by_item[s.item_id].append(0.0)
        else:
            by_item.setdefault(s.item_id, [])
    return {k: sum(v) / len(v) for k, v in by_item.items() if v}


def _cluster_labels(samples: Sequence[SampleResult], key: str) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    missing = []
    for s in samples:
        if key not in s.metadata:
            missing.append(s.item_id)
        labels[s.item_id] = s.metadata.get(key)
    if missing:
        raise ConfigurationError(f"cluster={key!r}: items {sorted(set(missing))[:5]} have no {key!r} in their "
                                 "metadata; fix: give every item that key, or cluster by another")
    return labels


def model_record(
    samples: Sequence[SampleResult],
    *,
    model: str,
    graders: Sequence[Any] = (),
    provider: str = "openai",
    connection: str | None = None,
    ci: CiMethod = "stderr",
    cluster: str | None = None,
    seed: int = 0,
    resamples: int = 1000,
    pass_k: Sequence[int] = (1,),
    usage: TokenUsage | None = None,
    judge_usage: TokenUsage | None = None,
    cost: Cost | None = None,
    judge_cost: Cost | None = None,
    turnaround_s: float | None = None,
    batch_ids: Sequence[str] = (),
) -> ModelRecord:
    """One model's record from its samples (see the module for how not-graded samples count).

    Args:
        ci: The interval: ``stderr``, ``bootstrap`` (with ``seed``, ``resamples``) or ``clustered``
            (by the metadata key ``cluster``; giving ``cluster`` alone means ``clustered``).
        pass_k: With several epochs, the k of pass@k to report (those up to the number of epochs).
        usage: The answers' tokens (:func:`usage_of` the answer batch's results).
        judge_usage: The judge batches' tokens.
        cost: The answers' cost (estimate and actual), when known.
        judge_cost: The judge batches' cost.
        turnaround_s: Seconds from batch creation to its end.
        batch_ids: The answer batch, then the judge batches.
    """
    method: CiMethod = "clustered" if cluster and ci == "stderr" else ci
    if method == "clustered" and not cluster:
        raise ConfigurationError("ci='clustered' needs cluster=<metadata key>; fix: name the key")
    labels = _cluster_labels(samples, cluster) if cluster else {}
    epochs = max((s.epoch for s in samples), default=1)

    def agg(scores: Mapping[str, float]) -> Aggregate:
        ids = list(scores)
        return aggregate([scores[i] for i in ids], method=method, clusters=[labels.get(i) for i in ids],
                         cluster_key=cluster, seed=seed, resamples=resamples)

    overall_scores = item_scores(samples)
    categories: dict[str, dict[str, float]] = defaultdict(dict)
    first = {s.item_id: s for s in samples}
    for item_id, score in overall_scores.items():
        categories[first[item_id].category][item_id] = score
    counts = ResultCounts.tally(samples)
    passes: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        passes[s.item_id].append(s.status == "graded" and bool(s.passed))
    return ModelRecord(
        model=model, provider=provider, connection=connection,
        overall=agg(overall_scores),
        answered=agg(item_scores(samples, graded_only=True)),
        by_category={c: agg(v) for c, v in sorted(categories.items())},
        result_counts=counts,
        graders=[_grader_result(g, samples) for g in graders],
        usage=usage or TokenUsage(requests=len(samples)),
        cost=cost or Cost(),
        judge_usage=judge_usage,
        judge_cost=judge_cost,
        turnaround_s=turnaround_s,
        batch_ids=list(batch_ids),
        complete=counts.complete,
        epochs=epochs,
        pass_at_k={k: mean_pass_at_k(passes, k) for k in pass_k if 1 <= k <= epochs} if epochs > 1 else {},
        samples=list(samples),
    )


def _grader_result(grader: Any, samples: Sequence[SampleResult]) -> GraderResult:
    verdicts = [s.verdicts[grader.name] for s in samples if grader.name in s.verdicts]
    graded = [v for v in verdicts if v.status == "graded"]
    described = grader.describe() if hasattr(grader, "describe") else {}
    return GraderResult(
        name=grader.name, kind=getattr(grader, "kind", "custom"),
        passed=sum(1 for v in graded if v.passed), failed=sum(1 for v in graded if not v.passed),
        errored=sum(1 for v in verdicts if v.status in ("errored", "pending"))
        + sum(1 for s in samples if s.status == "failed"),
        unparsed=sum(1 for v in verdicts if v.status == "unparsed"),
        mean=mean_interval([v.score or 0.0 for v in graded]) if graded else None,
        judge_models=list(described.get("judges") or []),
    )


def _clusters_for(record: ModelRecord, cluster: str | None) -> dict[str, Any] | None:
    if not cluster:
        return None
    return {s.item_id: s.metadata.get(cluster) for s in record.samples}


def compare_to_baseline(records: Sequence[ModelRecord], baseline: str, *, cluster: str | None = None,
                        alpha: float = 0.05) -> list[Comparison]:
    """Each model against the baseline model of the same run, paired on the items both graded."""
    names = [r.model for r in records]
    if baseline not in names:
        raise ConfigurationError(f"baseline model {baseline!r} is not in the run; fix: one of {names}")
    base = next(r for r in records if r.model == baseline)
    ref = item_scores(base.samples, graded_only=True)
    out = []
    for r in records:
        if r.model == baseline:
            continue
        p = paired(item_scores(r.samples, graded_only=True), ref, clusters=_clusters_for(r, cluster))
        out.append(p.comparison(model=r.model, kind="baseline_model", reference=baseline, alpha=alpha))
    return out


def compare_to_previous(records: Sequence[ModelRecord], previous: RunRecord | None, *, cluster: str | None = None,
                        alpha: float = 0.05) -> list[Comparison]:
    """Each model against its own record in the previous run (models new to this run: no comparison).

    Compare only runs of the same eval set (the same ``eval_set.hash``): :func:`run_record` leaves a
    previous run of another version of the set out, and says so in the gate's reason.
    """
    if previous is None:
        return []
    out = []
    for r in records:
        try:
            before = previous.model(r.model)
        except KeyError:
            continue
        p = paired(item_scores(r.samples, graded_only=True), item_scores(before.samples, graded_only=True),
                   clusters=_clusters_for(r, cluster))
        out.append(p.comparison(model=r.model, kind="previous_run", reference=previous.run_id, alpha=alpha))
    return out


def _incomplete(record: ModelRecord) -> str | None:
    c = record.result_counts
    if record.complete:
        return None
    parts = []
    failed = sum(1 for s in record.samples if s.status == "failed")
    if failed:
        detail = ", ".join(f"{n} {k}" for n, k in ((c.expired, "expired"), (c.cancelled, "cancelled")) if n)
        parts.append(f"{failed} requests failed" + (f" ({detail})" if detail else ""))
    grader_errors = c.errored - failed
    if grader_errors:
        parts.append(f"{grader_errors} not graded (grader errored)")
    if c.unparsed:
        parts.append(f"{c.unparsed} judge answers unparsed")
    return ", ".join(parts) or "not every sample graded"


def run_record(
    *,
    run_id: str,
    eval_set: EvalSet | EvalSetInfo,
    models: Sequence[ModelRecord],
    graders: Sequence[Any] = (),
    previous: RunRecord | None = None,
    baseline_model: str | None = None,
    min_drop: float = 0.03,
    alpha: float = 0.05,
    gate_on: Sequence[str] = ("previous_run",),
    fail_on_incomplete: bool = False,
    cluster: str | None = None,
    pipeline: str = "batch_ops",
    started_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
) -> RunRecord:
    """The run's record: comparisons (previous run when given and of the same eval set; baseline when named)
    and the gate's decision (:func:`batch_ops.evals.stats.gate`)."""
    info = eval_set if isinstance(eval_set, EvalSetInfo) else EvalSetInfo(
        name=eval_set.name, hash=eval_set.hash, n_items=len(eval_set.items), source=eval_set.source)
    comparisons: list[Comparison] = []
    notes = []
    if previous is not None and previous.eval_set.hash != info.hash:
        notes.append(f"the previous run {previous.run_id!r} used another version of the eval set "
                     f"({previous.eval_set.hash[:19]}…): no comparison with it")
        previous = None
    comparisons += compare_to_previous(models, previous, cluster=cluster, alpha=alpha)
    if baseline_model:
        comparisons += compare_to_baseline(models, baseline_model, cluster=cluster, alpha=alpha)
    incomplete = {m.model: why for m in models if (why := _incomplete(m))}
    decision = gate(comparisons, min_drop=min_drop, alpha=alpha, against=gate_on, incomplete=incomplete,
                    fail_on_incomplete=fail_on_incomplete)
    if notes:
        decision = decision.model_copy(update={"reason": "; ".join([*notes, decision.reason])})
    return RunRecord(
        run_id=run_id, pipeline=pipeline, started_at=started_at, finished_at=finished_at or dt.datetime.now(dt.UTC),
        eval_set=info, graders=[g.describe() if hasattr(g, "describe") else {"name": g.name} for g in graders],
        models=list(models), comparisons=comparisons, gate=decision, baseline_model=baseline_model,
    )


def check_gate(decision: GateDecision | RunRecord | None) -> None:
    """Raise :class:`~batch_ops.evals.ScoreRegressionError` when the gate failed the run (its reason as the message)."""
    from batch_ops.evals.report import ScoreRegressionError

    if isinstance(decision, RunRecord):
        decision = decision.gate
    if decision is not None and decision.status == "fail":
        raise ScoreRegressionError(f"eval gate failed for {', '.join(decision.failing)}: {decision.reason}; see the "
                                   "report's per-item rows, or raise min_drop if the change is expected")
