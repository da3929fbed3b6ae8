"""A user's own Python function as a grader (OpenAI's ``python`` grader, promptfoo's ``python`` assertion).

The function takes ``(answer, item)`` and returns a bool, a score in 0..1, a :class:`Grade`, or a
mapping ``{"score": float, "passed": bool (optional), "reason": str (optional)}``. It may be given as
the function itself or as ``"package.module:function"`` (what a DAG param or a flow parameter can
carry). A function that raises, or returns something else, gives an ``errored`` verdict for that
sample (with the exception named): counted apart, never a pass or a fail.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> def shorter_than_expected(answer, item):
    ...     return {"score": 1.0 if len(answer) <= len(item.expected) else 0.0, "reason": f"{len(answer)} chars"}
    >>> g = PythonGrader(shorter_than_expected)
    >>> g.name, g.grade("Lima", EvalItem(id="q", input="?", expected="Lima")).passed
    ('shorter_than_expected', True)
    >>> PythonGrader(lambda a, i: 1 / 0, name="broken").grade("x", EvalItem(id="q", input="?")).status
    'errored'
    >>> PythonGrader("string:capwords").name
    'capwords'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from batch_ops.errors import ConfigurationError
from batch_ops.evals.dataset import EvalItem
from batch_ops.evals.graders.base import Grade

__all__ = ["PythonGrader", "load_function"]


def load_function(ref: str) -> Callable[..., Any]:
    """The function named ``"package.module:function"`` (ConfigurationError naming the fix otherwise)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"grader function {ref!r}: fix: name it as 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"grader function {ref!r} cannot be imported ({exc}); fix: install the module "
                                 "on the workers, or correct the name") from exc
    if not callable(target):
        raise ConfigurationError(f"grader function {ref!r} is not callable; fix: name a function")
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PythonGrader:
    """Grade with ``fn(answer, item)``; ``threshold`` is the pass mark of a returned score."""

    fn: Callable[[str, EvalItem], Any] | str
    name: str = ""
    threshold: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "python"
    requires_expected: ClassVar[bool] = False

    def __post_init__(self) -> None:
        ref = self.fn if isinstance(self.fn, str) else None
        fn = load_function(self.fn) if isinstance(self.fn, str) else self.fn
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "_ref", ref or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}")
        if not self.name:
            object.__setattr__(self, "name", getattr(fn, "__name__", "python").replace("<lambda>", "python"))

    def grade(self, answer: str, item: EvalItem) -> Grade:
        assert callable(self.fn)
        try:
            value = self.fn(answer, item, **self.options) if self.options else self.fn(answer, item)
        except Exception as exc:  # the user's code: any failure is this sample's, not the run's
            return Grade.errored(f"{type(exc).__name__}: {exc}")
        return _as_grade(value, self.threshold)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "function": getattr(self, "_ref", None),
                "threshold": self.threshold}


def _as_grade(value: Any, threshold: float) -> Grade:
    if isinstance(value, Grade):
        return value
    if isinstance(value, bool | int | float) and not (isinstance(value, float) and value != value):
        return Grade.of(value if isinstance(value, bool) else float(value), threshold=threshold)
    if isinstance(value, Mapping) and isinstance(value.get("score"), bool | int | float):
        grade = Grade.of(float(value["score"]), threshold=threshold, detail=value.get("reason"))
        if isinstance(value.get("passed"), bool):
            return Grade(status="graded", score=grade.score, passed=value["passed"], detail=grade.detail)
        return grade
    return Grade.errored(f"the grader returned {type(value).__name__}, not a bool, a score or "
                         "{'score': ..., 'passed': ...}")
