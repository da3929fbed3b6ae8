"""Graders: deterministic, a user's Python function, and model-graded as a second batch.

==================  ==========================================================================
grader              passes when
==================  ==========================================================================
:class:`Exact`      the normalised answer equals the expected answer (:class:`Normalise` says how)
:class:`Includes`   the expected answer appears in the answer (optionally as whole words)
:class:`Regex`      a pattern matches (its capture equal to the expected answer, with a group)
:class:`Numeric`    the answer's number is within a tolerance (absolute or relative)
:class:`JsonMatch`  the answer's JSON is valid against a schema and/or its fields match
:class:`F1`         token F1 with the expected answer reaches a threshold (score = F1)
:class:`PythonGrader`  your ``fn(answer, item)`` says so (bool, score or ``{score, passed, reason}``)
:class:`ModelGraded`   a pinned judge (or the majority of several) grades it, in a second batch
:class:`ItemScorer`    the item's own ``scorer`` field says so (the shipped set's way)
==================  ==========================================================================

A sample passes when every grader passes it; its score is the mean of the graders' scores.
A grader that cannot give a verdict (``errored``, ``unparsed``) is never counted as pass or fail.
:func:`check_graders` refuses, before any batch is paid for, graders whose names repeat and items
lacking the expected answer a grader needs.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> check_graders([Exact(), Includes()], [EvalItem(id="q", input="?")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.InputValidationError: graders: 1 problem:
      line 1: missing_expected: item 'q' has no expected answer, which grader 'exact' needs ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batch_ops.errors import InputValidationError, Problem
from batch_ops.evals.dataset import EvalItem
from batch_ops.evals.graders.base import Grade, Grader, GradeStatus
from batch_ops.evals.graders.config import grader_from_config, graders_from_config
from batch_ops.evals.graders.custom import PythonGrader, load_function
from batch_ops.evals.graders.deterministic import (
    F1,
    Exact,
    Includes,
    ItemScorer,
    JsonMatch,
    Normalise,
    Numeric,
    Regex,
    parse_json_answer,
    parse_number,
    token_f1,
)
from batch_ops.evals.graders.model_graded import (
    DEFAULT_GRADE_PATTERN,
    TEMPLATES,
    JudgeTemplate,
    ModelGraded,
    judge_usage,
)

__all__ = [
    "DEFAULT_GRADE_PATTERN",
    "F1",
    "TEMPLATES",
    "Exact",
    "Grade",
    "GradeStatus",
    "Grader",
    "Includes",
    "ItemScorer",
    "JsonMatch",
    "JudgeTemplate",
    "ModelGraded",
    "Normalise",
    "Numeric",
    "PythonGrader",
    "Regex",
    "check_graders",
    "grader_from_config",
    "graders_from_config",
    "is_model_graded",
    "judge_usage",
    "load_function",
    "needs_expected",
    "parse_json_answer",
    "parse_number",
    "token_f1",
]


def is_model_graded(grader: Any) -> bool:
    """Whether the grader grades in a second (judge) batch."""
    return getattr(grader, "kind", None) == "model_graded"


def needs_expected(grader: Any) -> bool:
    """Whether the grader needs each item's expected answer."""
    if hasattr(grader, "requires_expected_answer"):  # depends on the grader's options (a pattern, a criterion)
        return bool(grader.requires_expected_answer)
    return bool(getattr(grader, "requires_expected", False))


def check_graders(graders: Sequence[Any], items: Sequence[EvalItem]) -> None:
    """Refuse graders with the same name, or items without the expected answer a grader needs (line = item's
    position in the set), before anything is spent."""
    problems: list[Problem] = []
    names = [g.name for g in graders]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(Problem(rule="duplicate_grader", message=f"two graders are named {name!r}",
                                fix="give each grader its own name=", param="graders"))
    if not graders:
        problems.append(Problem(rule="no_grader", message="no grader", fix="give at least one grader",
                                param="graders"))
    wanting = [g.name for g in graders if needs_expected(g)]
    if wanting:
        for n, item in enumerate(items, 1):
            if item.expected is None:
                problems.append(Problem(rule="missing_expected", line=n,
                                        message=f"item {item.id!r} has no expected answer, which grader "
                                                f"{wanting[0]!r} needs",
                                        fix="give the item an expected answer, or grade it with regex, a JSON "
                                            "schema, a python function or a judge criterion without {expected}"))
                if len(problems) >= 20:
                    break
    if problems:
        raise InputValidationError(problems, source="graders", truncated=len(problems) >= 20)
