"""What every grader is: ``grade(answer, item) -> Grade``, a name, a kind, and a description for the record.

A :class:`Grade` is a score in 0..1 and a pass/fail, or no verdict at all: ``errored`` (the grader
could not run on this answer: a user's function raised) or ``unparsed`` (a judge answered without
a grade the pattern finds). No verdict is never a pass or a fail: the record counts it apart.

Examples:
    >>> Grade.of(True), Grade.of(0.25, threshold=0.5).passed
    (Grade(status='graded', score=1.0, passed=True, detail=None), False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from batch_ops.evals.dataset import EvalItem

__all__ = ["Grade", "GradeStatus", "Grader"]

GradeStatus = Literal["graded", "errored", "unparsed"]


@dataclass(frozen=True)
class Grade:
    """One grader's verdict on one answer.

    Attributes:
        status: ``graded`` (``score`` and ``passed`` set), ``errored`` or ``unparsed`` (neither set).
        score: 0..1.
        passed: Whether the score reached the grader's pass mark.
        detail: Why (an explanation, the exception, the judge's reply), short.
    """

    status: GradeStatus
    score: float | None = None
    passed: bool | None = None
    detail: str | None = None

    @classmethod
    def of(cls, value: bool | float, *, threshold: float = 1.0, detail: str | None = None) -> Grade:
        """A graded verdict from a bool (1/0) or a score (clipped to 0..1; passed at ``threshold``)."""
        score = (1.0 if value else 0.0) if isinstance(value, bool) else min(1.0, max(0.0, float(value)))
        return cls(status="graded", score=score, passed=score >= threshold - 1e-12, detail=detail)

    @classmethod
    def errored(cls, detail: str) -> Grade:
        return cls(status="errored", detail=detail[:500])

    @classmethod
    def unparsed(cls, detail: str) -> Grade:
        return cls(status="unparsed", detail=detail[:500])


@runtime_checkable
class Grader(Protocol):
    """Anything with a ``name``, a ``kind``, ``grade(answer, item) -> Grade`` and ``describe()``.

    Model-graded graders (:class:`~batch_ops.evals.graders.ModelGraded`) grade in a second batch
    instead: they have ``judge_requests``/``grades_from_judge`` and are told apart by
    ``kind == "model_graded"``.
    """

    name: str
    kind: str

    def grade(self, answer: str, item: EvalItem) -> Grade: ...

    def describe(self) -> dict[str, Any]: ...
