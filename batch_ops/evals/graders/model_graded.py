"""Model-graded scoring as a second batch: judge requests out, grades back.

The model under test answers in a first batch; its answers are then put to one or more *judge*
models in a second batch (at batch price, with its own cost line):

1. :meth:`ModelGraded.judge_requests` — one neutral :class:`~batch_ops.jsonl.neutral.ChatRequest`
   per answer and judge (``custom_id`` = ``<prefix><sample custom_id>__j<k>``), any provider;
2. (run them as batches: a batch file names one model, so :meth:`ModelGraded.judge_batches` gives
   one list per judge; write each for the judge's provider with :func:`batch_ops.jsonl.write_requests`);
3. :meth:`ModelGraded.grades_from_judge` — the judge results (``client.results(batch)``) become one
   :class:`~batch_ops.evals.graders.Grade` per sample.

The judge is pinned: named models only (an alias ending in ``latest`` is refused, since the grade
of the same answer must not drift between nights), temperature 0. Every template ends in a fixed
grade line found by ``grade_pattern`` (the last match counts); a reply without one is
``unparsed``: its own status, never a pass or a fail. With several judges the grade is the
majority of the parsed votes (a tie goes to the lower grade: a judge panel that cannot agree
does not award the better score); a sample whose judges all failed is ``errored``.

Templates (:data:`TEMPLATES`): ``closed_qa`` (does the answer meet the criterion — by default
"agrees with the expected answer"; C/I), ``rubric`` (grades against a rubric with partial
credit; C/P/I = 1/0.5/0), ``factuality`` (compares the facts of the answer with the expected
answer; A to E as in OpenAI's fact eval, D = they disagree fails). A template of your own is any
text with ``{input}``, ``{answer}``, ``{expected}``, ``{criterion}`` and metadata fields, giving
its ``grades``.

Examples:
    >>> from batch_ops.evals.dataset import EvalItem
    >>> from batch_ops.evals.record import SampleResult
    >>> from batch_ops.models import ResultLine
    >>> judge = ModelGraded(judges=["judge-a", "judge-b", "judge-c"])
    >>> item = EvalItem(id="q1", input="Capital of Peru?", expected="Lima")
    >>> sample = SampleResult(custom_id="q1", item_id="q1", model="m", status="graded", answer="It is Lima.")
    >>> reqs = judge.judge_requests([sample], {"q1": item})
    >>> [(r.custom_id, r.model) for r in reqs]
    [('q1__j1', 'judge-a'), ('q1__j2', 'judge-b'), ('q1__j3', 'judge-c')]
    >>> def said(cid, text):
    ...     return ResultLine(custom_id=cid, response={"status_code": 200, "body": {"choices": [
    ...         {"message": {"role": "assistant", "content": text}}]}})
    >>> grades = judge.grades_from_judge([said("q1__j1", "Right.\\nGRADE: C"), said("q1__j2", "GRADE: I"),
    ...                                   said("q1__j3", "**GRADE:** C")])
    >>> grades["q1"].score, grades["q1"].passed, grades["q1"].detail
    (1.0, True, 'votes C, I, C')
    >>> judge.grades_from_judge([said("q1__j1", "I think so")])["q1"].status
    'unparsed'
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from batch_ops.errors import ConfigurationError
from batch_ops.evals.dataset import EvalItem
from batch_ops.evals.graders.base import Grade
from batch_ops.evals.record import SampleResult, TokenUsage
from batch_ops.jsonl.neutral import ChatRequest
from batch_ops.models import ResultLine

__all__ = ["DEFAULT_GRADE_PATTERN", "TEMPLATES", "JudgeTemplate", "ModelGraded", "judge_usage"]

#: ``GRADE: X`` — also in bold or with spaces (``**GRADE:** X``, ``Grade : x``); the last one in a reply counts.
DEFAULT_GRADE_PATTERN = r"GRADE\s*\**\s*:\s*\**\s*([A-Za-z])\b"
_JUDGE_SUFFIX = re.compile(r"^(?P<sample>.+)__j(?P<k>[0-9]+)$")

_DATA = """[BEGIN DATA]
[Task]: {input}
[Submission]: {answer}
[Criterion]: {criterion}
[END DATA]"""


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: its text (``{input}``, ``{answer}``, ``{expected}``, ``{criterion}``, metadata fields),
    the grades it asks for with their scores, and the criterion used when the grader gives none."""

    text: str
    grades: Mapping[str, float]
    default_criterion: str = "The submission agrees with this expected answer: {expected}"
    needs_expected: bool = True


TEMPLATES: dict[str, JudgeTemplate] = {
    "closed_qa": JudgeTemplate(
        text="You are grading a submission against a criterion.\n\n" + _DATA + "\n\n"
             "Decide whether the submission meets the criterion. Reason in a few sentences first, "
             "then write the grade alone on the last line as 'GRADE: C' if it meets the criterion "
             "or 'GRADE: I' if it does not.",
        grades={"C": 1.0, "I": 0.0},
    ),
    "rubric": JudgeTemplate(
        text="You are grading a submission with a rubric.\n\n" + _DATA.replace("[Criterion]", "[Rubric]") + "\n\n"
             "Apply the rubric. Reason briefly first, then write the grade alone on the last line: "
             "'GRADE: C' if the submission fully satisfies the rubric, 'GRADE: P' if it partly does, "
             "'GRADE: I' if it does not.",
        grades={"C": 1.0, "P": 0.5, "I": 0.0},
        default_criterion="The submission is correct, complete and consistent with: {expected}",
    ),
    "factuality": JudgeTemplate(
        text="You are comparing the facts of a submitted answer with an expert answer to the same question.\n\n"
             "[BEGIN DATA]\n[Question]: {input}\n[Expert]: {expected}\n[Submission]: {answer}\n[END DATA]\n\n"
             "Ignore style, grammar and punctuation. Say which holds:\n"
             "(A) the submission is a subset of the expert answer and consistent with it;\n"
             "(B) the submission is a superset of the expert answer and consistent with it;\n"
             "(C) the submission has the same details as the expert answer;\n"
             "(D) the submission and the expert answer disagree;\n"
             "(E) they differ, but the differences do not matter for factuality.\n"
             "Reason briefly first, then write the letter alone on the last line as 'GRADE: X'.",
        grades={"A": 1.0, "B": 1.0, "C": 1.0, "D": 0.0, "E": 1.0},
    ),
}


@dataclass(frozen=True)
class ModelGraded:
    """A judge-model grader, run as a second batch (see the module).

    Attributes:
        judges: The pinned judge model(s); several: majority of their votes.
        template: A name from :data:`TEMPLATES` or a :class:`JudgeTemplate`.
        criterion: The criterion or rubric (``{expected}`` and metadata fields allowed); default: the
            template's, which compares with the expected answer.
        grade_pattern: Finds the grade letter (group 1) in a reply, ignoring case; the last match counts.
        pass_threshold: The score a sample needs to pass (1.0: ``P`` partial credit fails).
        max_tokens / temperature: The judge's generation settings (temperature 0: repeatable grades).
        name: The grader's name in the record.
    """

    judges: Sequence[str]
    template: str | JudgeTemplate = "closed_qa"
    criterion: str | None = None
    grade_pattern: str = DEFAULT_GRADE_PATTERN
    pass_threshold: float = 1.0
    max_tokens: int = 512
    temperature: float = 0.0
    name: str = "judge"
    kind: ClassVar[str] = "model_graded"
    requires_expected: ClassVar[bool] = False
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        judges = [self.judges] if isinstance(self.judges, str) else list(self.judges)
        object.__setattr__(self, "judges", tuple(judges))
        if not judges or any(not j or not isinstance(j, str) for j in judges):
            raise ConfigurationError(f"model-graded grader {self.name!r}: no judge model; fix: name the judge "
                                     "model(s), e.g. judges=['gpt-4o-2024-08-06']")
        floating = [j for j in judges if j.lower().endswith("latest")]
        if floating:
            raise ConfigurationError(f"model-graded grader {self.name!r}: judge {floating[0]!r} is an alias that "
                                     "moves; fix: pin a dated model so grades stay comparable between runs")
        if isinstance(self.template, str) and self.template not in TEMPLATES:
            raise ConfigurationError(f"model-graded grader {self.name!r}: no template {self.template!r}; fix: "
                                     f"one of {sorted(TEMPLATES)} or a JudgeTemplate")
        try:
            compiled = re.compile(self.grade_pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigurationError(f"model-graded grader {self.name!r}: bad grade_pattern ({exc})") from exc
        if compiled.groups < 1:
            raise ConfigurationError(f"model-graded grader {self.name!r}: grade_pattern needs a group capturing "
                                     "the grade")
        object.__setattr__(self, "_compiled", compiled)

    @property
    def judge_template(self) -> JudgeTemplate:
        return TEMPLATES[self.template] if isinstance(self.template, str) else self.template

    @property
    def requires_expected_answer(self) -> bool:
        """Whether items need an expected answer (the default criteria and ``factuality`` quote it)."""
        tpl = self.judge_template
        return "{expected}" in tpl.text or "{expected}" in (self.criterion or tpl.default_criterion)

    def describe(self) -> dict[str, Any]:
        tpl = self.judge_template
        return {"name": self.name, "kind": self.kind, "judges": list(self.judges),
                "template": self.template if isinstance(self.template, str) else {
                    "text": tpl.text, "grades": dict(tpl.grades), "default_criterion": tpl.default_criterion},
                "criterion": self.criterion, "grades": dict(tpl.grades), "grade_pattern": self.grade_pattern,
                "pass_threshold": self.pass_threshold, "temperature": self.temperature,
                "reducer": "majority" if len(self.judges) > 1 else None}

    def grade(self, answer: str, item: EvalItem) -> Grade:
        raise ConfigurationError(f"{self.name!r} is model-graded: it grades in a second batch; fix: send "
                                 "judge_requests(...) as a batch and read grades_from_judge(results)")

    def prompt(self, item: EvalItem, answer: str) -> str:
        """The judge prompt for one answer (KeyError: a field the item lacks)."""
        values = {**item.metadata, "id": item.id, "input": item.input, "answer": answer,
                  "category": item.category, "expected": item.expected if item.expected is not None else ""}
        criterion = (self.criterion or self.judge_template.default_criterion).format_map(values)
        return self.judge_template.text.format_map({**values, "criterion": criterion})

    def judge_requests(self, samples: Iterable[SampleResult], items: Mapping[str, EvalItem], *,
                       prefix: str = "") -> list[ChatRequest]:
        """One request per answered sample and judge; samples without an answer (failed requests) get none.

        ``prefix`` keeps ids distinct when several models' answers share one judge batch
        (``"m1__"``…); give the same one to :meth:`grades_from_judge`.
        """
        out = []
        for sample in samples:
            if sample.status == "failed" or sample.answer is None:
                continue
            item = items[sample.item_id]
            if self.requires_expected_answer and item.expected is None:
                raise ConfigurationError(f"model-graded grader {self.name!r}: item {item.id!r} has no expected "
                                         "answer and the criterion quotes it; fix: give one, or a criterion "
                                         "without {expected}")
            text = self.prompt(item, sample.answer)
            for k, judge in enumerate(self.judges, 1):
                out.append(ChatRequest(custom_id=f"{prefix}{sample.custom_id}__j{k}", model=judge,
                                       messages=[{"role": "user", "content": text}],
                                       max_tokens=self.max_tokens, temperature=self.temperature))
        return out

    def judge_batches(self, samples: Iterable[SampleResult], items: Mapping[str, EvalItem], *,
                      prefix: str = "") -> dict[str, list[ChatRequest]]:
        """:meth:`judge_requests` split by judge model: one batch each (a batch file names one model)."""
        out: dict[str, list[ChatRequest]] = {j: [] for j in self.judges}
        for r in self.judge_requests(samples, items, prefix=prefix):
            out[r.model or ""].append(r)
        return {j: reqs for j, reqs in out.items() if reqs}

    def parse(self, reply: str) -> str | None:
        """The grade letter in a judge's reply (the last match, upper-cased), or None when there is none
        the template knows."""
        grades = self.judge_template.grades
        for match in reversed(list(self._compiled.finditer(reply))):
            letter = match.group(1).upper()
            if letter in grades:
                return letter
        return None

    def grades_from_judge(self, results: Iterable[ResultLine], *, prefix: str = "") -> dict[str, Grade]:
        """One grade per sample ``custom_id``, from the judge batch's results (see the module for the rules)."""
        votes: dict[str, dict[int, ResultLine]] = defaultdict(dict)
        for r in results:
            cid = r.custom_id[len(prefix):] if prefix and r.custom_id.startswith(prefix) else r.custom_id
            m = _JUDGE_SUFFIX.match(cid)
            if m is None or (prefix and not r.custom_id.startswith(prefix)):
                continue  # not one of ours
            votes[m["sample"]][int(m["k"])] = r
        return {sample: self._combine(by_judge) for sample, by_judge in votes.items()}

    def _combine(self, by_judge: Mapping[int, ResultLine]) -> Grade:
        grades = self.judge_template.grades
        letters: list[str] = []
        unparsed: list[str] = []
        failed: list[str] = []
        for _, r in sorted(by_judge.items()):
            if not r.ok:
                failed.append(r.error_code or "error")
                continue
            reply = r.text or ""
            letter = self.parse(reply)
            if letter is None:
                unparsed.append(reply.strip()[-200:])
            else:
                letters.append(letter)
        if not letters:
            if unparsed:
                return Grade.unparsed(f"no grade in the judge's reply: {unparsed[0]!r}")
            return Grade.errored(f"judge request failed: {', '.join(failed)}")
        counts = Counter(letters)
        top = max(counts.values())
        # A tie goes to the lowest score among the tied grades: disagreement never awards the better grade.
        winner = min((g for g, c in counts.items() if c == top), key=lambda g: grades[g])
        detail = f"votes {', '.join(letters)}" if len(self.judges) > 1 else f"grade {winner}"
        if unparsed or failed:
            detail += f" ({len(unparsed)} unparsed, {len(failed)} failed)"
        return Grade.of(grades[winner], threshold=self.pass_threshold, detail=detail)


def judge_usage(results: Iterable[ResultLine]) -> TokenUsage:
    """The tokens a judge batch used (its own cost line)."""
    usage = TokenUsage()
    for r in results:
        u = r.usage
        usage.requests += 1
        if u is not None:
            usage.input_tokens += u.input_tokens
            usage.output_tokens += u.output_tokens
            usage.cached_tokens += u.input_tokens_details.cached_tokens
    return usage
