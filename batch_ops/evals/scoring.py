"""Scoring batch results against expected answers, with pluggable scorers.

Built-in scorers: ``exact`` (normalised equality), ``contains`` (expected text appears in the
answer) and ``numeric`` (the first number in the answer within ``tolerance``). Add your own
with :func:`register_scorer`. A request that failed (error file, missing result) scores as
``failed``, never silently as wrong or right.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> item = EvalItem(id="q", question="12*12?", expected="144", scorer="numeric")
    >>> SCORERS["numeric"]("The answer is 144.", item), SCORERS["exact"]("Paris.", item.model_copy(
    ...     update={"expected": "paris"}))
    (True, True)
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from batch_ops.evals.dataset import EvalItem
from batch_ops.models import ECHO_FINGERPRINT, ResultLine, Usage, answer_text, answer_usage

__all__ = [
    "SCORERS",
    "EvalRun",
    "ItemScore",
    "Scorer",
    "extract_answer",
    "register_scorer",
    "score_results",
]

Scorer = Callable[[str, EvalItem], bool]
SCORERS: dict[str, Scorer] = {}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Register ``fn(answer, item) -> bool`` under ``name`` (the item's ``scorer`` field).

    Examples:
        >>> @register_scorer("startswith")
        ... def _startswith(answer, item):
        ...     return normalise(answer).startswith(normalise(item.expected))
        >>> "startswith" in SCORERS
        True
    """

    def add(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return add


def normalise(text: str) -> str:
    """Case-folded, accent-free, punctuation-free, single-spaced text."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", " ", text.casefold())
    return " ".join(text.split())


@register_scorer("exact")
def _exact(answer: str, item: EvalItem) -> bool:
    return item.expected is not None and normalise(answer) == normalise(item.expected)


@register_scorer("contains")
def _contains(answer: str, item: EvalItem) -> bool:
    return item.expected is not None and f" {normalise(item.expected)} " in f" {normalise(answer)} "


@register_scorer("numeric")
def _numeric(answer: str, item: EvalItem) -> bool:
    match = _NUMBER.search(answer)
    if match is None or item.expected is None:
        return False
    try:
        got = float(match.group().replace(",", ""))
        want = float(item.expected)
    except ValueError:
        return False
    return abs(got - want) <= item.tolerance + 1e-9


def extract_answer(body: Any) -> str | None:
    """The answer text of a chat completion, a Responses API response, a completion, or any other batch
    API's answer (Anthropic, Gemini: :func:`batch_ops.models.answer_text`)."""
    return answer_text(body)


class ItemScore(BaseModel):
    """How one item fared."""

    model_config = ConfigDict(frozen=True)
    id: str
    category: str
    expected: str | None
    answer: str | None
    outcome: Literal["correct", "wrong", "failed"]
    error_code: str | None = None


class EvalRun(BaseModel):
    """The scored run: totals, per-category scores, usage and every item's row.

    ``score`` is correct / total: a failed request counts against it, so an outage cannot
    look like an improvement; ``failed`` says how many did not get an answer at all.
    """

    model_config = ConfigDict(frozen=True)
    total: int
    correct: int
    wrong: int
    failed: int
    score: float
    accuracy_answered: float
    by_category: dict[str, float]
    usage: Usage
    items: list[ItemScore]
    #: Answers that came from the local server's ``echo`` engine: it repeats each prompt instead of
    #: answering it, so a score computed from them says nothing about a model.
    echo_answers: int = 0

    @property
    def echo_warning(self) -> str | None:
        """A plain sentence for reports and logs when the answers came from the echo engine."""
        if not self.echo_answers:
            return None
        return (f"{self.echo_answers} of {self.correct + self.wrong} answers came from the local server's echo engine, "
                "which repeats each prompt instead of answering it: this score says nothing about a model. For a "
                "meaningful offline run start the server with the recorded sample (`batch-ops serve --eval-sample`, "
                "what `make demo` does), or point the pipeline at OpenAI.")

    def summary(self) -> dict[str, Any]:
        """The headline figures as plain JSON (XCom, task results, history)."""
        return {
            "total": self.total, "correct": self.correct, "wrong": self.wrong, "failed": self.failed,
            "score": round(self.score, 4), "accuracy_answered": round(self.accuracy_answered, 4),
            "by_category": {k: round(v, 4) for k, v in self.by_category.items()},
            "usage": self.usage.model_dump(),
            **({"warning": self.echo_warning} if self.echo_warning else {}),
        }


def _usage_of(body: Any) -> Usage:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return answer_usage(body) or Usage()  # Gemini's usageMetadata
    if "prompt_tokens" in usage:  # chat / completions naming
        return Usage(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            input_tokens_details={"cached_tokens": int((usage.get("prompt_tokens_details") or {}).get(
                "cached_tokens") or 0)},
            output_tokens=int(usage.get("completion_tokens") or 0),
            output_tokens_details={"reasoning_tokens": int((usage.get("completion_tokens_details") or {}).get(
                "reasoning_tokens") or 0)},
            total_tokens=int(usage.get("total_tokens") or 0),
        )
    return Usage.model_validate(usage)


def score_results(items: Sequence[EvalItem], results: Iterable[ResultLine]) -> EvalRun:
    """Score joined results (``client.results(batch)`` or ``jsonl.join_results``) against items.

    Every item gets a row; an item with no result line at all is ``failed`` with
    ``missing_result``. Results for ids that are not in the set are ignored.
    """
    by_id = {r.custom_id: r for r in results}
    rows: list[ItemScore] = []
    usage = Usage()
    echoed = 0
    for item in items:
        result = by_id.get(item.id)
        if result is None or not result.ok:
            code = "missing_result" if result is None else (result.error_code or "error")
            rows.append(ItemScore(id=item.id, category=item.category, expected=item.expected, answer=None,
                                  outcome="failed", error_code=code))
            continue
        usage = usage + _usage_of(result.body)
        if isinstance(result.body, dict) and result.body.get("system_fingerprint") == ECHO_FINGERPRINT:
            echoed += 1
        answer = extract_answer(result.body)
        scorer = SCORERS.get(item.scorer)
        if scorer is None:
            raise ValueError(f"item {item.id!r} names scorer {item.scorer!r}; fix: use one of {sorted(SCORERS)} "
                             "or register_scorer() your own")
        correct = answer is not None and scorer(answer, item)
        rows.append(ItemScore(id=item.id, category=item.category, expected=item.expected, answer=answer,
                              outcome="correct" if correct else "wrong"))
    counts = Counter(r.outcome for r in rows)
    total = len(rows)
    answered = counts["correct"] + counts["wrong"]
    per_cat_total = Counter(r.category for r in rows)
    per_cat_ok = Counter(r.category for r in rows if r.outcome == "correct")
    return EvalRun(
        total=total,
        correct=counts["correct"],
        wrong=counts["wrong"],
        failed=counts["failed"],
        score=counts["correct"] / total if total else 0.0,
        accuracy_answered=counts["correct"] / answered if answered else 0.0,
        by_category={cat: per_cat_ok[cat] / n for cat, n in sorted(per_cat_total.items())},
        usage=usage,
        items=rows,
        echo_answers=echoed,
    )
