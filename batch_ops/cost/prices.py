"""Batch prices: genai-prices' batch variants, a user override table, and the table's date.

Where a price comes from, in order:

1. the **override table** the caller passes (``prices={"my-model": {"input": 0.1, "output": 0.4}}``, USD per
   1M tokens, batch prices as the user states them; a key may be ``"provider/model"`` to price one
   provider only; ``"*"`` prices any model the rest of the table does not know);
2. **genai-prices** (the ``cost`` extra), with ``price_context={"processing": "batch"}``: a model whose entry
   has a batch variant gets it (OpenAI, Anthropic, Google and a few Groq, Mistral, xAI models in 0.2.5).
   A model with no batch variant (Azure, Together, most Groq models) gets its **standard** price, said so
   in :attr:`Rate.source` — never below the batch price, so an upper bound stays an upper bound, but the
   estimate is high: an override gives the batch price. Its network updater is never started: prices
   are the bundled snapshot's;
3. nothing: :class:`~batch_ops.errors.UnknownPriceError`, naming the model and the fix (an override).

Prices may be tiered by a request's input tokens (long-context tiers): the tier applies to the whole
request — input and output — once its input passes the tier's start (genai-prices' "cliff" model), per
request, never on a sum over requests.

Examples:
    >>> table = PriceTable({"local-echo": {"input": 0.5, "output": 1.5}}, use_genai_prices=False)
    >>> rate = table.rate("local-echo", "openai")
    >>> rate.cost(2_000_000, 1_000_000), rate.source
    (Decimal('2.5'), 'override')
    >>> table.rate("nope", "openai")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.UnknownPriceError: No batch price for model 'nope' (provider openai): ... Fix: ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from batch_ops.errors import UnknownPriceError
from batch_ops.process_state import STATE

__all__ = ["BATCH_CONTEXT", "PriceTable", "Rate", "genai_prices_info"]

#: The genai-prices context that selects batch price variants.
BATCH_CONTEXT = {"processing": "batch"}
_MTOK = Decimal(1_000_000)
Tiers = tuple[tuple[int, Decimal], ...]


@dataclass(frozen=True)
class Rate:
    """One model's price per 1M tokens, with long-context tiers (``(start, price)``: the price once a request's
    input tokens exceed ``start``). ``source`` says where it came from; ``context_window`` (tokens, or None)
    bounds the output of a request that sets no limit."""

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    input_tiers: Tiers = ()
    output_tiers: Tiers = ()
    source: str = "override"
    context_window: int | None = None

    @staticmethod
    def _at(base: Decimal, tiers: Tiers, input_tokens: int) -> Decimal:
        price = base
        for start, tier in tiers:
            if input_tokens > start:
                price = tier
        return price

    @staticmethod
    def _most(base: Decimal, tiers: Tiers, input_tokens: int) -> Decimal:
        # The dearest price any request of at most ``input_tokens`` can be charged at: an upper bound
        # whatever the true count below the bound is.
        return max([base, *(tier for start, tier in tiers if input_tokens > start)])

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """The price of one request with these tokens (its tier chosen by its input tokens)."""
        return (input_tokens * self._at(self.input_per_mtok, self.input_tiers, input_tokens)
                + output_tokens * self._at(self.output_per_mtok, self.output_tiers, input_tokens)) / _MTOK

    def cost_upper(self, input_tokens: int, output_tokens: int) -> Decimal:
        """At least the price of one request with *at most* these tokens (tiers cannot make it dearer)."""
        return (input_tokens * self._most(self.input_per_mtok, self.input_tiers, input_tokens)
                + output_tokens * self._most(self.output_per_mtok, self.output_tiers, input_tokens)) / _MTOK

    def describe(self) -> str:
        tiers = " (+long-context tiers)" if self.input_tiers or self.output_tiers else ""
        return f"${self.input_per_mtok}/M in, ${self.output_per_mtok}/M out{tiers} [{self.source}]"


def _decimal(value: Any, what: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except Exception as exc:
        raise UnknownPriceError(f"price override {what}: {value!r} is not a number of USD per 1M tokens") from exc
    if not number.is_finite() or number < 0:
        raise UnknownPriceError(f"price override {what}: {value!r} must be a finite number >= 0 (USD per 1M tokens)")
    return number


def _override(model: str, value: Any) -> Rate:
    if isinstance(value, Rate):
        return value
    if not isinstance(value, Mapping) or "input" not in value or "output" not in value:
        raise UnknownPriceError(f"price override for {model!r}: {value!r} is not "
                                "{'input': USD per 1M input tokens, 'output': USD per 1M output tokens}")
    window = value.get("context_window")
    return Rate(model=model, input_per_mtok=_decimal(value["input"], f"{model}.input"),
                output_per_mtok=_decimal(value["output"], f"{model}.output"), source="override",
                context_window=int(window) if window is not None else None)


def genai_prices_info() -> tuple[str, str] | None:
    """``(version, date)`` of the installed genai-prices table, or None when it is not installed.

    The table carries no date of its own; its date here is the newest day its maintainers note having
    checked or verified a price ("checked 2026-11-19"), read from its price comments (once per process).
    """
    found: dict[str, Any] = STATE.slot("cost.genai_prices", dict)
    if "info" not in found:
        found["info"] = _genai_prices_info()
    return found["info"]  # type: ignore[no-any-return]


def _genai_prices_info() -> tuple[str, str] | None:
    try:
        import genai_prices
        from genai_prices.data_snapshot import get_snapshot
    except ImportError:
        return None
    days: list[str] = []
    pattern = re.compile(r"(?:checked|verified|as of|updated)\D{0,20}(20\d\d-\d\d-\d\d)", re.IGNORECASE)
    for provider in get_snapshot().providers:
        for text in (provider.price_comments, *(m.price_comments for m in provider.models)):
            if text:
                days.extend(pattern.findall(text))
    return str(genai_prices.__version__), (max(days) if days else "undated")


def _tiers(value: Any) -> tuple[Decimal, Tiers] | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value, ()
    base, tiers = getattr(value, "base", None), getattr(value, "tiers", None)
    if isinstance(base, Decimal) and tiers is not None:
        return base, tuple((int(t.start), Decimal(t.price)) for t in tiers)
    return None


def _from_genai_prices(model: str, provider: str | None) -> Rate | None:
    info = genai_prices_info()
    if info is None or provider is None:
        return None
    from genai_prices.data_snapshot import get_snapshot

    try:
        found, entry = get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    now = datetime.now(timezone.utc)
    # A model another provider's entry serves (Azure's gpt-4o is OpenAI's) gets no variants from
    # genai-prices: ask the entry itself whether a batch variant applies.
    own = any(entry is m for m in found.models)
    batch = own and any(v.when == BATCH_CONTEXT and (v.constraint is None or v.constraint.active(now))
                        for v in entry.price_variants or ())
    price = entry.get_prices(now, BATCH_CONTEXT if batch else None)
    inp, out = _tiers(getattr(price, "input_mtok", None)), _tiers(getattr(price, "output_mtok", None))
    if inp is None:
        return None
    out = out or (Decimal(0), ())
    kind = "batch price" if batch else "standard price: the table has no batch price for it (an upper bound)"
    return Rate(model=model, input_per_mtok=inp[0], output_per_mtok=out[0], input_tiers=inp[1],
                output_tiers=out[1], source=f"genai-prices {info[0]} {found.id}/{entry.id}, {kind}",
                context_window=entry.context_window)


class PriceTable:
    """Batch prices per model: the user's ``overrides`` first, then genai-prices (when installed and
    ``use_genai_prices``). ``date`` and ``source`` name the table for every estimate and bill.

    Example:
        >>> PriceTable({"openai/gpt-4o": {"input": 1.0, "output": 4.0}}).rate("gpt-4o", "openai").output_per_mtok
        Decimal('4.0')
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, use_genai_prices: bool = True,
                 date: str | None = None) -> None:
        self._overrides = {str(k).lower(): _override(str(k), v) for k, v in (overrides or {}).items()}
        self._use = use_genai_prices
        self._date = date
        self._cache: dict[tuple[str, str | None], Rate] = {}

    @classmethod
    def of(cls, prices: PriceTable | Mapping[str, Any] | None) -> PriceTable:
        return prices if isinstance(prices, PriceTable) else cls(prices)

    @property
    def source(self) -> str:
        info = genai_prices_info() if self._use else None
        parts = (["overrides"] if self._overrides else []) + ([f"genai-prices {info[0]}"] if info else [])
        return " + ".join(parts) or "no price table"

    @property
    def date(self) -> str:
        """The table's date: the overrides' (as given), else genai-prices' newest checked price."""
        info = genai_prices_info() if self._use else None
        if self._date:
            return self._date
        return info[1] if info else "undated"

    def rate(self, model: str, provider: str | None) -> Rate:
        """The batch rate of ``model`` at ``provider`` (a genai-prices provider id, or None: overrides only).

        Raises:
            UnknownPriceError: neither the overrides nor genai-prices know the model.
        """
        key = (model, provider)
        if key not in self._cache:
            found = (self._overrides.get(f"{provider}/{model}".lower()) or self._overrides.get(model.lower())
                     or (_from_genai_prices(model, provider) if self._use else None) or self._overrides.get("*"))
            if found is None:
                why = ("genai-prices is not installed (pip install 'openai-batch-ops[cost]')"
                       if self._use and genai_prices_info() is None else
                       f"genai-prices has no such model for provider {provider!r}" if self._use else
                       "the table holds overrides only")
                raise UnknownPriceError(
                    f"No batch price for model {model!r} (provider {provider}): {why}. Fix: pass a price for it, "
                    f"e.g. prices={{{model!r}: {{'input': USD per 1M input tokens, 'output': USD per 1M output "
                    "tokens}} (CLI: --prices FILE.json)")
            self._cache[key] = found
        return self._cache[key]
