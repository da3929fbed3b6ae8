"""Graders from plain JSON: what a DAG param or a flow parameter can carry.

Each grader is a mapping with its ``kind`` and its options, the same shape a grader's
``describe()`` gives (so a run record's ``graders`` list builds the same graders again):

.. code-block:: json

    [{"kind": "exact", "normalise": "squad"},
     {"kind": "numeric", "tolerance": 0.01},
     {"kind": "python", "function": "team_evals.graders:cites_a_source", "threshold": 0.5},
     {"kind": "model_graded", "judges": ["gpt-4o-2024-08-06"], "template": "closed_qa", "name": "judge"}]

``normalise`` is a preset name (``default``, ``none``, ``squad``) or the options
(``{"case": true, "punctuation": true}``). An unknown kind or option is refused, naming the fix.

Examples:
    >>> graders_from_config([{"kind": "exact", "normalise": "squad"}, {"kind": "numeric", "tolerance": 0.5}])
    [Exact(normalise=Normalise(case=True, whitespace=True, punctuation=True, articles=True, accents=False), \
name='exact'), Numeric(tolerance=0.5, relative=False, take='first', name='numeric')]
    >>> g = grader_from_config({"kind": "model_graded", "judges": ["judge-1"], "template": "rubric"})
    >>> grader_from_config(g.describe()) == g
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batch_ops.errors import ConfigurationError
from batch_ops.evals.graders.custom import PythonGrader
from batch_ops.evals.graders.deterministic import F1, Exact, Includes, ItemScorer, JsonMatch, Normalise, Numeric, Regex
from batch_ops.evals.graders.model_graded import JudgeTemplate, ModelGraded

__all__ = ["grader_from_config", "graders_from_config"]

_PRESETS = {"default": Normalise(), "none": Normalise.NONE, "squad": Normalise.SQUAD}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "exact": ("name", "normalise"),
    "includes": ("name", "normalise", "whole_words"),
    "regex": ("name", "pattern", "ignore_case", "normalise"),
    "numeric": ("name", "tolerance", "relative", "take"),
    "json_match": ("name", "fields", "schema", "normalise"),
    "f1": ("name", "threshold", "normalise"),
    "python": ("name", "function", "threshold", "options"),
    "item_scorer": ("name",),
    "model_graded": ("name", "judges", "template", "criterion", "grade_pattern", "pass_threshold", "max_tokens",
                     "temperature", "grades", "reducer"),
}
_KINDS: dict[str, Any] = {"exact": Exact, "includes": Includes, "regex": Regex, "numeric": Numeric,
                          "json_match": JsonMatch, "f1": F1, "item_scorer": ItemScorer}


def _normalise(value: Any, where: str) -> Normalise:
    if isinstance(value, Normalise):
        return value
    if isinstance(value, str):
        if value.lower() not in _PRESETS:
            raise ConfigurationError(f"{where}: no normalisation preset {value!r}; fix: one of {sorted(_PRESETS)} "
                                     "or the options as a mapping")
        return _PRESETS[value.lower()]
    if isinstance(value, Mapping):
        try:
            return Normalise(**value)
        except TypeError as exc:
            raise ConfigurationError(f"{where}: {exc}; fix: normalise options are case, whitespace, punctuation, "
                                     "articles, accents") from exc
    raise ConfigurationError(f"{where}: normalise={value!r}; fix: a preset name or a mapping of options")


def grader_from_config(spec: Mapping[str, Any] | Any) -> Any:
    """One grader from its JSON description (a grader object is returned as it is)."""
    if not isinstance(spec, Mapping):
        if hasattr(spec, "kind") and hasattr(spec, "name"):
            return spec
        raise ConfigurationError(f"grader {spec!r}: fix: give a mapping with 'kind', e.g. {{'kind': 'exact'}}")
    kind = str(spec.get("kind", ""))
    where = f"grader {spec.get('name') or kind!r}"
    if kind not in _OPTIONS:
        raise ConfigurationError(f"{where}: unknown kind {kind!r}; fix: one of {sorted(_OPTIONS)}")
    unknown = sorted(set(spec) - {"kind", *_OPTIONS[kind]})
    if unknown:
        raise ConfigurationError(f"{where}: unknown options {unknown}; fix: {kind} takes {list(_OPTIONS[kind])}")
    options = {k: v for k, v in spec.items() if k != "kind" and v is not None}
    if "normalise" in options:
        options["normalise"] = _normalise(options["normalise"], where)
    if kind == "python":
        if "function" not in options:
            raise ConfigurationError(f"{where}: no function; fix: 'function': 'package.module:function'")
        return PythonGrader(options.pop("function"), **options)
    if kind == "model_graded":
        options.pop("reducer", None)  # majority is the one reducer; describe() names it
        options.pop("grades", None)  # the template's own: describe() shows them, the template sets them
        template = options.get("template", "closed_qa")
        if isinstance(template, Mapping):
            try:
                options["template"] = JudgeTemplate(**template)
            except TypeError as exc:
                raise ConfigurationError(f"{where}: template {exc}; fix: {{'text': ..., 'grades': {{'C': 1, "
                                         "'I': 0}}, 'default_criterion': ...}}") from exc
        return ModelGraded(**options)
    if kind == "json_match" and "fields" in options:
        options["fields"] = tuple(options["fields"])
    return _KINDS[kind](**options)


def graders_from_config(specs: Sequence[Mapping[str, Any] | Any]) -> list[Any]:
    """Graders from a list of JSON descriptions (see the module)."""
    return [grader_from_config(s) for s in specs]
