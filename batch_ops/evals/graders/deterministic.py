"""Graders that need no model: exact, includes, regex, numeric, JSON fields/schema, token F1.

Each says how it normalises text, through a :class:`Normalise` given explicitly (the same choices
inspect_ai's ``match``/``exact``/``f1`` and OpenAI's ``string_check`` make, named): case,
whitespace, punctuation, English articles, accents. Defaults are printed in the record's
grader description, so a score always says what "equal" meant.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> item = EvalItem(id="q", input="Capital of the US?", expected="Washington, D.C.")
    >>> Exact().grade("washington, d.c.", item).passed, Exact(Normalise.NONE).grade("washington, d.c.", item).passed
    (True, False)
    >>> Exact(Normalise.SQUAD).grade("The Washington DC", item).passed
    True
    >>> Numeric(tolerance=0.01).grade("It costs $1,234.565", EvalItem(id="n", input="?", expected="1234.56")).passed
    True
    >>> round(F1().grade("the cat sat", EvalItem(id="f", input="?", expected="a cat sat down")).score, 4)
    0.8
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from batch_ops.errors import ConfigurationError
from batch_ops.evals.dataset import EvalItem
from batch_ops.evals.graders.base import Grade

__all__ = ["F1", "Exact", "Includes", "ItemScorer", "JsonMatch", "Normalise", "Numeric", "Regex"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
# Thousands separators and markdown / currency decorations around a number ("$1,234", "**42**"), not "%".
_NUMBER_NOISE = re.compile(r"(?<=\d)[,_](?=\d{3}\b)|[$€£¥*]")


@dataclass(frozen=True)
class Normalise:
    """How text is normalised before comparing; each step is named and off unless asked.

    Attributes:
        case: Case-fold (``"Paris" == "paris"``).
        whitespace: Strip the ends and collapse runs of whitespace to one space.
        punctuation: Remove punctuation (Unicode ``P*``: ``"D.C." -> "DC"``).
        articles: Remove the English articles a, an, the (SQuAD's normalisation).
        accents: Remove accents (``"São" -> "Sao"``).

    ``Normalise.NONE`` compares bytes; ``Normalise.SQUAD`` is SQuAD's (and inspect_ai's ``exact``/``f1``);
    the default is case and whitespace only.

    Examples:
        >>> Normalise.SQUAD("The  U.S. Army!")
        'us army'
        >>> Normalise(accents=True)("  São   Paulo ")
        'sao paulo'
    """

    case: bool = True
    whitespace: bool = True
    punctuation: bool = False
    articles: bool = False
    accents: bool = False

    NONE: ClassVar[Normalise]
    SQUAD: ClassVar[Normalise]

    def __call__(self, text: str) -> str:
        if self.accents:
            text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        if self.case:
            text = text.casefold()
        if self.punctuation:
            text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
        if self.articles:
            text = _ARTICLES.sub(" ", text)
        if self.whitespace:
            text = " ".join(text.split())
        return text

    def describe(self) -> dict[str, bool]:
        return asdict(self)


Normalise.NONE = Normalise(case=False, whitespace=False)
Normalise.SQUAD = Normalise(case=True, whitespace=True, punctuation=True, articles=True)


def _expected(item: EvalItem) -> str:
    if item.expected is None:  # refused up front by check_graders; a guard for direct calls
        raise ConfigurationError(f"item {item.id!r} has no expected answer; fix: give it one, or grade it "
                                 "with a grader that needs none (regex, json schema, python, model_graded)")
    return item.expected


@dataclass(frozen=True)
class Exact:
    """Pass when the normalised answer equals the normalised expected answer (OpenAI ``string_check`` ``eq``)."""

    normalise: Normalise = field(default_factory=Normalise)
    name: str = "exact"
    kind: ClassVar[str] = "exact"
    requires_expected: ClassVar[bool] = True

    def grade(self, answer: str, item: EvalItem) -> Grade:
        return Grade.of(self.normalise(answer) == self.normalise(_expected(item)))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "normalise": self.normalise.describe()}


@dataclass(frozen=True)
class Includes:
    """Pass when the normalised expected answer appears in the normalised answer (``like``/``ilike``).

    ``whole_words``: only as whole words (``"cat"`` is not in ``"concatenate"``).

    Examples:
        >>> item = EvalItem(id="q", input="?", expected="cat")
        >>> Includes().grade("concatenate", item).passed, Includes(whole_words=True).grade("concatenate", item).passed
        (True, False)
    """

    normalise: Normalise = field(default_factory=Normalise)
    whole_words: bool = False
    name: str = "includes"
    kind: ClassVar[str] = "includes"
    requires_expected: ClassVar[bool] = True

    def grade(self, answer: str, item: EvalItem) -> Grade:
        want, got = self.normalise(_expected(item)), self.normalise(answer)
        if self.whole_words:
            return Grade.of(re.search(rf"(?<!\w){re.escape(want)}(?!\w)", got) is not None)
        return Grade.of(want in got)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "whole_words": self.whole_words,
                "normalise": self.normalise.describe()}


@dataclass(frozen=True)
class Regex:
    """Pass when the pattern is found in the answer; with a capture group, when its (last) capture equals
    the expected answer, both normalised.

    ``{expected}`` in the pattern stands for the expected answer, escaped.

    Examples:
        >>> item = EvalItem(id="q", input="?", expected="B")
        >>> Regex(r"ANSWER:\\s*([A-D])").grade("I think... ANSWER: b", item).passed
        True
        >>> Regex(r"\\b{expected}\\b", ignore_case=False).grade("answer B", item).passed
        True
    """

    pattern: str
    ignore_case: bool = True
    normalise: Normalise = field(default_factory=Normalise)
    name: str = "regex"
    kind: ClassVar[str] = "regex"
    requires_expected: ClassVar[bool] = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern.replace("{expected}", "x"))
        except re.error as exc:
            raise ConfigurationError(f"regex grader {self.name!r}: bad pattern {self.pattern!r} ({exc}); "
                                     "fix: write a Python regular expression") from exc

    @property
    def requires_expected_answer(self) -> bool:
        """A pattern quoting ``{expected}`` needs every item's expected answer."""
        return "{expected}" in self.pattern

    def grade(self, answer: str, item: EvalItem) -> Grade:
        flags = re.IGNORECASE if self.ignore_case else 0
        uses_expected = "{expected}" in self.pattern
        pattern = self.pattern.replace("{expected}", re.escape(_expected(item))) if uses_expected else self.pattern
        matches = list(re.finditer(pattern, answer, flags))
        if not matches:
            return Grade.of(False, detail="no match")
        if matches[-1].re.groups and item.expected is not None and not uses_expected:
            got = matches[-1].group(1) or ""
            return Grade.of(self.normalise(got) == self.normalise(item.expected), detail=f"captured {got!r}")
        return Grade.of(True)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "pattern": self.pattern, "ignore_case": self.ignore_case,
                "normalise": self.normalise.describe()}


def parse_number(text: str, *, take: Literal["first", "last"] = "first") -> float | None:
    """The first (or last) number in ``text``, after dropping thousands separators and ``$ € £ ¥ *``.

    Examples:
        >>> parse_number("about $1,234.5 (or **7**)"), parse_number("1 or 2", take="last"), parse_number("none")
        (1234.5, 2.0, None)
    """
    found = _NUMBER.findall(_NUMBER_NOISE.sub("", text))
    if not found:
        return None
    return float(found[0] if take == "first" else found[-1])


@dataclass(frozen=True)
class Numeric:
    """Pass when the answer's number is within ``tolerance`` of the expected number.

    ``tolerance``: absolute (or a share of the expected value with ``relative``); None takes each
    item's own ``tolerance`` field. The score is 1 or 0.
    """

    tolerance: float | None = None
    relative: bool = False
    take: Literal["first", "last"] = "first"
    name: str = "numeric"
    kind: ClassVar[str] = "numeric"
    requires_expected: ClassVar[bool] = True

    def grade(self, answer: str, item: EvalItem) -> Grade:
        want = parse_number(_expected(item))
        if want is None:
            return Grade.errored(f"expected answer {item.expected!r} is not a number")
        got = parse_number(answer, take=self.take)
        if got is None:
            return Grade.of(False, detail="no number in the answer")
        tol = item.tolerance if self.tolerance is None else self.tolerance
        allowed = tol * abs(want) if self.relative else tol
        return Grade.of(abs(got - want) <= allowed + 1e-9, detail=f"read {got:g}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "tolerance": self.tolerance, "relative": self.relative,
                "take": self.take}


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json_answer(text: str) -> Any:
    """The JSON in an answer: the whole text, a fenced code block, or the first ``{…}``/``[…]`` span.

    Raises ValueError when there is none.
    """
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON in the answer")


def _at(doc: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(doc, Mapping) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise KeyError(path)
    return doc


@dataclass(frozen=True)
class JsonMatch:
    """Grade a JSON answer: valid against a JSON schema, and/or fields equal to the expected JSON's.

    ``fields``: dot paths (``"address.city"``, ``"items.0.sku"``) compared with the same paths of the
    expected answer (itself JSON); the score is the share that match, passed when all do. Without
    ``fields``, the whole expected value must equal the answer's. Without an expected answer, only
    the schema is checked. Strings compare after ``normalise``; an answer without JSON fails (the
    model's fault, not the grader's). ``schema`` needs the ``jsonschema`` package.

    Examples:
        >>> item = EvalItem(id="j", input="?", expected='{"city": "Lima", "zip": 15001}')
        >>> JsonMatch(fields=["city", "zip"]).grade('```json\\n{"city": "lima", "zip": 15002}\\n```', item).score
        0.5
        >>> schema = {"type": "object", "required": ["city"]}
        >>> JsonMatch(schema=schema).grade('{"town": "Lima"}', EvalItem(id="k", input="?")).detail
        "schema: 'city' is a required property"
    """

    fields: Sequence[str] | None = None
    schema: Mapping[str, Any] | None = None
    normalise: Normalise = field(default_factory=Normalise)
    name: str = "json_match"
    kind: ClassVar[str] = "json_match"
    requires_expected: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.schema is not None:
            validator = _schema_validator()
            try:
                validator.check_schema(dict(self.schema))
            except Exception as exc:  # jsonschema.SchemaError; the library is imported lazily
                raise ConfigurationError(f"json_match grader {self.name!r}: the schema is not a JSON schema "
                                         f"({getattr(exc, 'message', exc)}); fix: the schema") from exc

    def _same(self, got: Any, want: Any) -> bool:
        if isinstance(got, str) and isinstance(want, str):
            return self.normalise(got) == self.normalise(want)
        if isinstance(got, int | float) and isinstance(want, int | float) and not isinstance(got, bool):
            return abs(float(got) - float(want)) <= 1e-9
        if isinstance(got, Mapping) and isinstance(want, Mapping):
            return got.keys() == want.keys() and all(self._same(got[k], want[k]) for k in want)
        if isinstance(got, list) and isinstance(want, list):
            return len(got) == len(want) and all(self._same(a, b) for a, b in zip(got, want, strict=True))
        return bool(got == want)

    def grade(self, answer: str, item: EvalItem) -> Grade:
        try:
            got = parse_json_answer(answer)
        except ValueError:
            return Grade.of(False, detail="no JSON in the answer")
        if self.schema is not None:
            errors = sorted(_schema_validator()(dict(self.schema)).iter_errors(got), key=lambda e: list(e.path))
            if errors:
                return Grade.of(False, detail=f"schema: {errors[0].message}")
        if item.expected is None:
            return Grade.of(True)
        try:
            want = json.loads(item.expected)
        except ValueError:
            return Grade.errored(f"expected answer of item {item.id!r} is not JSON")
        if not self.fields:
            return Grade.of(self._same(got, want))
        hits = 0
        missed = []
        for path in self.fields:
            try:
                ok = self._same(_at(got, path), _at(want, path))
            except KeyError:
                ok = False
            hits += ok
            if not ok:
                missed.append(path)
        return Grade.of(hits / len(self.fields), detail=f"differs: {', '.join(missed)}" if missed else None)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fields": list(self.fields or []),
                "schema": dict(self.schema) if self.schema is not None else None,
                "normalise": self.normalise.describe()}


def _schema_validator() -> Any:
    try:
        from jsonschema.validators import Draft202012Validator
    except ImportError as exc:
        raise ConfigurationError("a JSON schema grader needs the jsonschema package; fix: pip install "
                                 "jsonschema") from exc
    return Draft202012Validator


def token_f1(answer: str, expected: str, normalise: Normalise | None = None) -> float:
    """SQuAD-style token F1 of two texts (both normalised; default :attr:`Normalise.SQUAD`).

    Examples:
        >>> token_f1("cat sat", "the cat sat"), token_f1("", ""), token_f1("dog", "cat")
        (1.0, 1.0, 0.0)
    """
    norm = normalise or Normalise.SQUAD
    got, want = norm(answer).split(), norm(expected).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class F1:
    """Token F1 between answer and expected answer (SQuAD's normalisation by default); the score is the F1,
    passed at ``threshold``."""

    normalise: Normalise = field(default_factory=lambda: Normalise.SQUAD)
    threshold: float = 0.5
    name: str = "f1"
    kind: ClassVar[str] = "f1"
    requires_expected: ClassVar[bool] = True

    def grade(self, answer: str, item: EvalItem) -> Grade:
        return Grade.of(token_f1(answer, _expected(item), self.normalise), threshold=self.threshold)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "threshold": self.threshold,
                "normalise": self.normalise.describe()}


@dataclass(frozen=True)
class ItemScorer:
    """The shipped set's grading: each item names its scorer (``exact``, ``contains``, ``numeric`` or one
    registered with :func:`batch_ops.evals.register_scorer`), as :func:`batch_ops.evals.score_results` does."""

    name: str = "item_scorer"
    kind: ClassVar[str] = "item_scorer"
    requires_expected: ClassVar[bool] = True
    registry: Mapping[str, Callable[[str, EvalItem], bool]] | None = None

    def grade(self, answer: str, item: EvalItem) -> Grade:
        from batch_ops.evals.scoring import SCORERS

        scorer = (self.registry or SCORERS).get(item.scorer)
        if scorer is None:
            raise ConfigurationError(f"item {item.id!r} names scorer {item.scorer!r}; fix: use one of "
                                     f"{sorted(self.registry or SCORERS)} or register_scorer() your own")
        return Grade.of(bool(scorer(answer, item)))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}
