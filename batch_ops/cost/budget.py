"""The hard budget (``max_cost_usd``): decided here, checked by the submission core before every upload.

Every path that pays for a batch — a first submit, a retry attempt, a resubmission, a repair round,
a job part — passes :func:`batch_ops._submit.submit_plan`, which calls :func:`check_budget` after it
knows what the attempt will carry and before anything is uploaded or created. The check is
``spent + upper > limit`` → :class:`~batch_ops.errors.BudgetExceededError`, where

* ``upper`` is this attempt's upper bound (:mod:`batch_ops.cost.estimate`: exact-or-bound input at the
  dearest reachable tier plus every request's output limit);
* ``spent`` is what the chain's earlier attempts cost: **actual** from their results' usage where the
  attempt has ended (an ended attempt with no output completed nothing, and providers bill completed
  work only), else their **upper bound** (an attempt still running may still spend it).

An estimate that cannot be bounded (media in a prompt; no output limit and no known model maximum)
is refused under a budget too: a budget needs an upper bound, never a guess.

Example:
    >>> from batch_ops.cost.estimate import Estimate, ModelEstimate
    >>> est = Estimate("openai", "overrides", "2026-11-19",
    ...                models={"gpt-4o": ModelEstimate("gpt-4o", requests=10, upper=Decimal("0.8"))})
    >>> check_budget(1.0, est, Spent(actual=Decimal("0.1")), attempt=1)
    >>> check_budget(0.5, est, Spent(), attempt=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.BudgetExceededError: Budget: attempt 0 would cost up to $0.800000 ... > max_cost_usd $0.500000...
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from batch_ops.cost.estimate import Estimate
from batch_ops.errors import BudgetExceededError

__all__ = ["Spent", "check_budget"]


@dataclass(frozen=True)
class Spent:
    """What a chain's earlier attempts cost: ``actual`` (priced usage of ended attempts) and ``bounded`` (the
    upper bounds of attempts whose cost is not known yet)."""

    actual: Decimal = Decimal(0)
    bounded: Decimal = Decimal(0)
    attempts: int = 0

    @property
    def total(self) -> Decimal:
        return self.actual + self.bounded


def check_budget(limit: float | None, estimate: Estimate, spent: Spent, *, attempt: int) -> None:
    """Raise :class:`BudgetExceededError` when ``spent`` plus ``estimate``'s upper bound passes ``limit``
    (None: no budget), or when the estimate cannot be bounded. Nothing has been uploaded when it raises."""
    if limit is None:
        return
    cap = Decimal(str(limit))
    upper = estimate.upper
    top = estimate.contributors()
    contributors = tuple((m, float(u)) for m, u in top)
    named = ", ".join(f"{m} up to ${u:.6f}" for m, u in top) or "none"
    dearest = ", ".join(f"{c.request_id!r} (${c.upper:.6f})" for c in estimate.dearest)
    so_far = (f" + the chain's earlier attempts ${spent.total:.6f} (actual ${spent.actual:.6f}, "
              f"bound ${spent.bounded:.6f} for attempts still running)" if spent.attempts else "")
    if not estimate.complete:
        raise BudgetExceededError(
            f"Budget: attempt {attempt} cannot be bounded ({estimate.problems[0]}; {len(estimate.problems)} such "
            f"problem(s)), so max_cost_usd ${cap:.6f} cannot be guaranteed. Nothing was uploaded. Fix: set every "
            "request's output limit and keep media out of budgeted batches, or submit without max_cost_usd.",
            limit=float(cap), spent=float(spent.total), upper=float(upper), lower=float(estimate.lower),
            contributors=contributors)
    if spent.total + upper > cap:
        raise BudgetExceededError(
            f"Budget: attempt {attempt} would cost up to ${upper:.6f} (from ${estimate.lower:.6f} for the input "
            f"alone; {estimate.requests} requests){so_far} = ${spent.total + upper:.6f} > max_cost_usd ${cap:.6f}. "
            f"Nothing was uploaded. Biggest contributors: {named}; dearest requests: {dearest or 'none'}. Prices: "
            f"{estimate.table_source}, dated {estimate.table_date}. Fix: raise max_cost_usd, lower the requests' "
            "output limits (max_tokens), or submit fewer requests.",
            limit=float(cap), spent=float(spent.total), upper=float(upper), lower=float(estimate.lower),
            contributors=contributors)
