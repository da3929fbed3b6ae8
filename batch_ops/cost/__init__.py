"""What a batch costs: input tokens, batch prices, an estimate before upload, a hard budget, the actual bill.

* :mod:`~batch_ops.cost.tokens` — exact counts where the tokenizer is offline, else a guaranteed bound;
* :mod:`~batch_ops.cost.prices` — genai-prices' batch prices, a user override table, the table's date;
* :mod:`~batch_ops.cost.estimate` — :func:`estimate`: per model, requests, tokens, output bound, cost range;
* :mod:`~batch_ops.cost.budget` — :func:`check_budget` (``max_cost_usd``), called by the submission core;
* :mod:`~batch_ops.cost.bill` — :func:`bill`: results' usage at batch prices.

The price table (genai-prices) is the ``cost`` extra: ``pip install 'openai-batch-ops[cost]'``; without it,
prices come from overrides only, and a model without one is an :class:`~batch_ops.errors.UnknownPriceError`.
"""

from __future__ import annotations

from batch_ops.cost.bill import Bill, ModelBill, bill
from batch_ops.cost.budget import Spent, check_budget
from batch_ops.cost.estimate import Estimate, ModelEstimate, estimate
from batch_ops.cost.prices import PriceTable, Rate
from batch_ops.cost.tokens import Count, count_request, count_text

__all__ = ["Bill", "Count", "Estimate", "ModelBill", "ModelEstimate", "PriceTable", "Rate", "Spent", "bill",
           "check_budget", "count_request", "count_text", "estimate"]
