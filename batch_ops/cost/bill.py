"""The actual bill of a batch: its results' usage priced at batch prices, per model.

Each successful result line's usage (:attr:`ResultLine.usage <batch_ops.models.ResultLine.usage>`, whichever
API wrote it) is priced with the rate of the model that answered (the body's ``model``/``modelVersion``,
else the batch's), at that request's own tier. Failed requests carry no usage and are not billed (the
providers bill completed work). Cache reads and writes are priced as plain input: genai-prices' cache rates
are not applied (the bill is then slightly high on cache reads, low on Anthropic's cache writes; stated in
docs/cost.md).

Example:
    >>> from batch_ops.models import ResultLine
    >>> line = ResultLine(custom_id="a", response={"status_code": 200, "body": {"model": "m",
    ...     "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}})
    >>> b = bill([line], provider="openai", prices={"m": {"input": 1, "output": 2}})
    >>> float(b.total), b.models["m"].input_tokens, b.models["m"].output_tokens
    (0.002, 1000, 500)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batch_ops.cost.prices import PriceTable
from batch_ops.dialects import Dialect, dialect_named
from batch_ops.errors import UnknownPriceError
from batch_ops.models import ResultLine

__all__ = ["Bill", "ModelBill", "bill"]


@dataclass
class ModelBill:
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "requests": self.requests, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": float(self.cost)}


@dataclass
class Bill:
    """What the results say was spent (USD at batch prices), per model; ``unpriced`` names models the table
    does not know (their tokens are counted, their cost is not: the total is then a floor, said so)."""

    table_source: str
    table_date: str
    models: dict[str, ModelBill] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((m.cost for m in self.models.values()), Decimal(0))

    def as_dict(self) -> dict[str, Any]:
        return {"cost_usd": float(self.total), "complete": not self.unpriced, "unpriced_models": self.unpriced,
                "price_table": self.table_source, "price_table_date": self.table_date,
                "models": [m.as_dict() for m in self.models.values()]}

    def summary(self) -> str:
        parts = "; ".join(f"{m.model}: {m.requests} requests, {m.input_tokens} in + {m.output_tokens} out tokens, "
                          f"${m.cost:.6f}" for m in self.models.values())
        unpriced = f"; no price for {', '.join(self.unpriced)} (not in the total)" if self.unpriced else ""
        return f"Actual: ${self.total:.6f} ({parts or 'no usage'}){unpriced}"


def _answer_model(body: Any) -> str | None:
    if isinstance(body, Mapping):
        for key in ("model", "modelVersion", "model_version"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    return None


def bill(lines: Iterable[ResultLine], *, provider: str | Dialect = "openai", model: str | None = None,
         prices: PriceTable | Mapping[str, Any] | None = None) -> Bill:
    """Price the usage of result ``lines`` (``model``: the batch's, for answers that name none)."""
    dialect = dialect_named(provider) if isinstance(provider, str) else provider
    table = PriceTable.of(prices)
    out = Bill(table.source, table.date)
    for line in lines:
        usage = line.usage if line.ok else None
        if usage is None:
            continue
        name = _answer_model(line.body) or model or "unknown"
        entry = out.models.setdefault(name, ModelBill(name))
        entry.requests += 1
        entry.input_tokens += usage.input_tokens
        entry.output_tokens += usage.output_tokens
        if name in out.unpriced:
            continue
        try:
            rate = table.rate(name, dialect.price_provider)
        except UnknownPriceError:
            out.unpriced.append(name)
            continue
        entry.cost += rate.cost(usage.input_tokens, usage.output_tokens)
    return out
