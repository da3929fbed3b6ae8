"""A repair round: resubmit only the requests whose answers are invalid, as the chain's next attempt.

After a chain's latest attempt ended with an accepted outcome, :func:`repair_plan` reads every
attempt's output (the latest answer of each request wins), checks each answer against the response
schema (:func:`batch_ops.structured.invalid_answers`: bad JSON, schema mismatch, refusal, cut by the
token limit) and, when some are invalid, drives :func:`~batch_ops._submit.submit_plan` with a
:class:`~batch_ops._submit.Repair`: the attempt after the latest carries exactly those requests (with
the reason as a new user turn when ``feedback``). So a repair round

* is paid through the one submit: idempotent (a retried try attaches to the repair attempt it made),
  counted in the chain's usage and summary, and in every check the submit makes before it uploads;
* never pays again for a valid answer: only the invalid ones are carried;
* joins like any attempt: the results of the chain give each request its latest answer.

The adapters drive it: the client (:meth:`BatchClient.repair <batch_ops.BatchClient.repair>`), the
Airflow operator (the trigger fires, the operator submits the round and defers again), the Prefect
tasks and ``run_batch``, the CLI, and jobs (each part's chain, through the client's ``repair``; see
:mod:`batch_ops.jobs.runner`). Answers still invalid after the last round are delivered as such.

**A round the budget refuses** (``max_cost_usd``: the chain's spend plus the round's upper bound would pass
it) is not an error of the run: nothing of it was uploaded, the answers already paid for are all there,
and the invalid ones are delivered as invalid — as after the last round. So :func:`repair_plan` returns the
round with :attr:`RepairRound.refused` (the budget's message, naming the numbers) instead of raising, and
every adapter logs it as a warning and finishes the run with the rounds so far. Decided here, once: failing
the run would hide paid-for answers behind a failed task (Airflow would retry into the same refusal, a
Prefect flow would return nothing), and a budget caps spending; it is not a quality gate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from batch_ops._http import RetryPolicy
from batch_ops._plans import Send, Sleep, Work, chain_results_plan
from batch_ops._submit import Repair, Source, Submission, SubmitSpec, submit_plan
from batch_ops.chain import AttemptChain
from batch_ops.dialects import Dialect
from batch_ops.errors import BatchOpsError, BudgetExceededError
from batch_ops.identity.ledger import KeyLedger
from batch_ops.structured import invalid_answers

__all__ = ["RepairRound", "repair_plan"]


@dataclass(frozen=True)
class RepairRound:
    """What a repair round found and did: ``invalid`` answers found (by reason), and the ``submission`` of the
    repair attempt (None: every answer is valid, or the budget refused the round: nothing was submitted).

    ``refused``: the budget's message when ``max_cost_usd`` refused the round (its ``BudgetExceededError``,
    which names the chain's spend, the round's upper bound and the limit); ``upper_usd``: the round's upper
    bound in USD (its estimate; None when it was not estimated).
    """

    round: int
    invalid: dict[str, int]
    submission: Submission | None = None
    refused: str | None = None
    upper_usd: float | None = None

    @property
    def count(self) -> int:
        """How many answers were invalid."""
        return sum(self.invalid.values())

    def summary(self) -> dict[str, Any]:
        """The round as plain JSON (XCom, task results, a deferred task's kwargs): ``round``, ``invalid`` (by
        reason), ``batch_id`` and ``carried`` of the repair attempt (None: nothing submitted), ``upper_usd``
        (the round's upper bound) and ``refused`` (the budget's message when it refused the round, else None).

        Examples:
            >>> RepairRound(1, {"schema": 2}, upper_usd=0.5).summary()  # doctest: +NORMALIZE_WHITESPACE
            {'round': 1, 'invalid': {'schema': 2}, 'batch_id': None, 'carried': None, 'upper_usd': 0.5,
             'refused': None}
        """
        sub = self.submission
        return {"round": self.round, "invalid": dict(self.invalid), "batch_id": None if sub is None else sub.batch.id,
                "carried": None if sub is None else sub.carried, "upper_usd": self.upper_usd, "refused": self.refused}

    def line(self) -> str:
        """The round in words, for a log.

        Examples:
            >>> RepairRound(1, {}).line()
            'Repair round 1: every answer follows the schema; nothing to repair'
            >>> RepairRound(2, {"schema": 3, "bad_json": 1}).line()
            'Repair round 2: 4 invalid answers (schema 3, bad_json 1); nothing submitted'
            >>> RepairRound(1, {"schema": 1}, refused="Budget: attempt 1 would cost ...").line()  # doctest: +ELLIPSIS
            'Repair round 1: 1 invalid answers (schema 1); refused by the budget, delivered as invalid: Budget: ...'
        """
        if not self.count:
            return f"Repair round {self.round}: every answer follows the schema; nothing to repair"
        reasons = ", ".join(f"{r} {n}" for r, n in self.invalid.items())
        if self.refused is not None:
            done = f"refused by the budget, delivered as invalid: {self.refused}"
        elif self.submission is None:
            done = "nothing submitted"
        else:
            batch = self.submission.batch
            verb = "created" if self.submission.created else "attached to"
            carried = self.submission.carried if self.submission.carried is not None else batch.request_counts.total
            done = f"{verb} batch {batch.id} carrying {carried} requests"
        return f"Repair round {self.round}: {self.count} invalid answers ({reasons}); {done}"


def repair_plan(
    spec: SubmitSpec, source: Source, chain: AttemptChain, *, round: int = 1, feedback: bool = False,
    workdir: Path, dialect: Dialect, policy: RetryPolicy, lookback: float, ledger: KeyLedger | None = None,
) -> Generator[Send | Sleep | Work, Any, RepairRound]:
    """Read ``chain``'s answers against ``spec.response_schema``; submit the invalid ones' requests as the
    chain's next attempt (see the module). ``source`` and ``spec`` are the ones the chain was submitted with
    (the same requests: the same fingerprint, so the same chain is found)."""
    schema = spec.response_schema
    if schema is None:
        raise BatchOpsError("a repair round needs the response schema the answers must follow; fix: pass "
                            "response_schema (or response_model) with repair_rounds")
    last = chain.last
    if last is None or not last.batch.status.is_terminal:
        raise BatchOpsError(f"Repair round {round} of key {chain.key!r}: the chain's latest batch has not ended; "
                            "fix: wait for it first")
    results, scratch = workdir / "results", workdir / "submit"
    for directory in (results, scratch):
        yield Work(partial(directory.mkdir, parents=True, exist_ok=True))
    pairs = yield from chain_results_plan(chain, results, dialect=dialect, policy=policy)
    invalid: dict[str, str] = yield Work(partial(invalid_answers, [out for out, _err, _n in pairs], schema))
    reasons = dict(Counter(why.split(":", 1)[0] for why in invalid.values()).most_common())
    if not invalid:
        return RepairRound(round, {})
    repair = Repair(after=last.number, invalid=invalid, feedback=feedback, round=round)
    keyed = replace(spec, idempotency_key=chain.key, reattach=True, repair=repair)
    try:
        submission = yield from submit_plan(keyed, source, workdir=scratch, dialect=dialect, policy=policy,
                                            lookback=lookback, ledger=ledger)
    except BudgetExceededError as exc:
        # Nothing of the round was uploaded; what the chain paid for stays delivered (see the module).
        return RepairRound(round, reasons, refused=str(exc), upper_usd=exc.upper)
    priced = submission.estimate
    return RepairRound(round, reasons, submission, upper_usd=None if priced is None else float(priced.upper))

