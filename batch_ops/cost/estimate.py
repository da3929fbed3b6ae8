"""What a batch will cost, before it is uploaded: per model, a range from the input alone to the worst case.

For each request line (in the provider's own shape, or a provider-neutral chat request):

* **input tokens** — :func:`~batch_ops.cost.tokens.count_request`: exact where the tokenizer is offline,
  else a bound guaranteed at least the true count (labelled);
* **output bound** — the request's own limit, read per request shape: OpenAI chat
  ``max_completion_tokens`` / ``max_tokens`` (x ``n``), Responses ``max_output_tokens``, completions
  ``max_tokens`` (x ``n`` x prompts), embeddings and moderations 0; Anthropic ``max_tokens``; Gemini
  ``generationConfig.maxOutputTokens`` (x ``candidateCount``). Reasoning and thinking tokens are billed as
  output and count inside those limits. A request that sets none is bounded by the model's maximum output
  (:data:`MAX_OUTPUT`, else the price table's context window) and counted as **loose**;
* **cost** — ``lower`` prices the input alone, ``upper`` adds every request's output bound at the dearest
  tier its input can reach. Batch prices (:mod:`batch_ops.cost.prices`); the table's source and date
  are part of the estimate.

Example:
    >>> lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
    ...           "body": {"model": "gpt-4", "max_tokens": 100,
    ...                    "messages": [{"role": "user", "content": "hello"}]}} for i in range(2)]
    >>> est = estimate(lines, provider="openai", prices={"gpt-4": {"input": 15, "output": 30}})
    >>> m = est.models["gpt-4"]
    >>> m.requests, m.input_tokens, m.input_kind, m.output_bound, float(m.lower), float(m.upper)
    (2, 16, 'exact', 200, 0.00024, 0.00624)
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batch_ops.cost.prices import PriceTable, Rate
from batch_ops.cost.tokens import Count, count_request
from batch_ops.dialects import Dialect, dialect_named
from batch_ops.errors import InputValidationError, Problem
from batch_ops.jsonl.neutral import is_neutral, translate
from batch_ops.jsonl.read import iter_request_lines

__all__ = ["MAX_OUTPUT", "Estimate", "ModelEstimate", "RequestCost", "estimate", "output_limit"]

#: The largest output a model family can produce (tokens), for requests that set no limit: the
#: largest of the family, so a bound (loose). Prefixes, longest first wins. Checked 2026-12 against the
#: providers' model pages; a model not here falls back to its context window in the price table.
MAX_OUTPUT: dict[str, int] = {
    "gpt-3.5-turbo": 4_096, "gpt-4-turbo": 4_096, "gpt-4": 8_192, "gpt-4o": 16_384, "gpt-4.1": 32_768,
    "gpt-5": 128_000, "o1": 100_000, "o3": 100_000, "o4": 100_000,
    "claude": 128_000, "gemini-1.5": 8_192, "gemini-2.0": 8_192, "gemini-2.5": 65_536, "gemini-3": 65_536,
}
#: Endpoints whose answers have no generated tokens.
_NO_OUTPUT = ("embeddings", "moderations")


@dataclass(frozen=True)
class RequestCost:
    """One request's share, kept for the dearest few (what a budget error names)."""

    upper: Decimal
    request_id: str
    model: str


@dataclass
class ModelEstimate:
    """One model's part of an estimate. ``input_kind``: ``exact``, ``bound`` or ``unbounded`` (the worst of its
    requests); ``loose``: requests that set no output limit (bounded by the model's maximum)."""

    model: str
    rate: Rate | None = None
    requests: int = 0
    input_tokens: int = 0
    input_kind: str = "exact"
    output_bound: int = 0
    loose: int = 0
    unbounded_output: int = 0
    lower: Decimal = Decimal(0)
    upper: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "requests": self.requests, "input_tokens": self.input_tokens,
                "input_kind": self.input_kind, "output_bound": self.output_bound, "loose": self.loose,
                "lower_usd": float(self.lower), "upper_usd": float(self.upper),
                "price": self.rate.describe() if self.rate else None}


@dataclass
class Estimate:
    """An estimate of a request file: per model, and in total (USD, batch prices).

    ``complete`` is False when some request could not be bounded (media in the prompt, no output limit
    and no known maximum): then ``upper`` is not an upper bound, and a budget refuses the file, naming
    :attr:`problems`.
    """

    provider: str
    table_source: str
    table_date: str
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    dearest: list[RequestCost] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models.values())

    @property
    def lower(self) -> Decimal:
        return sum((m.lower for m in self.models.values()), Decimal(0))

    @property
    def upper(self) -> Decimal:
        return sum((m.upper for m in self.models.values()), Decimal(0))

    @property
    def complete(self) -> bool:
        return not self.problems

    def contributors(self, top: int = 3) -> list[tuple[str, Decimal]]:
        """The models with the largest upper bound, dearest first."""
        return sorted(((m.model, m.upper) for m in self.models.values()), key=lambda p: -p[1])[:top]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for XCom, task results, artifacts and the CLI's ``--json``."""
        return {"requests": self.requests, "lower_usd": float(self.lower), "upper_usd": float(self.upper),
                "complete": self.complete, "problems": self.problems[:10], "provider": self.provider,
                "price_table": self.table_source, "price_table_date": self.table_date,
                "models": [m.as_dict() for m in self.models.values()]}

    def summary(self) -> str:
        """One line, for logs: ``Estimate: 120 requests, $0.0123..$0.0456 (gpt-4o-mini: input exact ...)``.

        Example:
            >>> Estimate("openai", "overrides", "2026-11-19").summary()
            'Estimate: 0 requests, $0.000000..$0.000000 (batch prices: overrides, dated 2026-11-19)'
        """
        parts = "; ".join(
            f"{m.model}: {m.requests} requests, {m.input_tokens} input tokens ({m.input_kind}), "
            f"output <= {m.output_bound}{f' ({m.loose} loose: no limit set)' if m.loose else ''}, "
            f"${m.lower:.6f}..${m.upper:.6f}" for m in self.models.values())
        tail = f"; NOT BOUNDED: {self.problems[0]}" if self.problems else ""
        if any(m.input_kind != "exact" for m in self.models.values()):
            tail += "; input counted as a bound, so the lower end is not a floor"
        return (f"Estimate: {self.requests} requests, ${self.lower:.6f}..${self.upper:.6f} "
                f"({parts + '; ' if parts else ''}batch prices: {self.table_source}, dated {self.table_date}){tail}")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _model_max(model: str, rate: Rate | None) -> int | None:
    name = model.lower().split("/")[-1]
    best = max((p for p in MAX_OUTPUT if name.startswith(p)), key=len, default=None)
    if best is not None:
        return MAX_OUTPUT[best]
    return rate.context_window if rate is not None else None


def output_limit(body: Mapping[str, Any], vocabulary: str, endpoint: str | None) -> tuple[int | None, int]:
    """``(limit, multiplier)``: the output limit a request sets (None: none) and how many answers it asks for.

    Examples:
        >>> output_limit({"max_completion_tokens": 50, "n": 3}, "openai", "/v1/chat/completions")
        (50, 3)
        >>> output_limit({"input": "x"}, "openai", "/v1/embeddings")
        (0, 1)
        >>> output_limit({"generationConfig": {"maxOutputTokens": 64, "candidateCount": 2}}, "gemini", None)
        (64, 2)
    """
    if vocabulary == "anthropic":
        return _int(body.get("max_tokens")), 1
    if vocabulary == "gemini":
        config = body.get("generationConfig") or body.get("generation_config") or {}
        if not isinstance(config, Mapping):
            config = {}
        limit = _int(config.get("maxOutputTokens", config.get("max_output_tokens")))
        return limit, _int(config.get("candidateCount", config.get("candidate_count"))) or 1
    if endpoint and any(endpoint.rstrip("/").endswith(e) for e in _NO_OUTPUT):
        return 0, 1
    n = _int(body.get("n")) or 1
    if "max_output_tokens" in body:  # the Responses API
        return _int(body.get("max_output_tokens")), 1
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        n *= len(prompt)  # completions: n answers per prompt
    return _int(body.get("max_completion_tokens", body.get("max_tokens"))), n


class _Accumulator:
    def __init__(self, dialect: Dialect, table: PriceTable, model: str | None, endpoint: str | None) -> None:
        self.dialect, self.table, self.model, self.endpoint = dialect, table, model, endpoint
        self.shape = dialect.line_shape
        self.result = Estimate(dialect.name, table.source, table.date)
        self._heap: list[tuple[Decimal, int, RequestCost]] = []
        self._seen = 0

    def add(self, line: Mapping[str, Any]) -> None:
        shape = self.shape
        if is_neutral(line):
            line = translate(line, shape.name, id_field=shape.id_field, body_field=shape.body_field,
                             method_url=shape.method_url, endpoint=self.endpoint, model=self.model).line
        body = line.get(shape.body_field)
        rid = str(line.get(shape.id_field, f"#{self._seen + 1}"))
        if not isinstance(body, Mapping):
            raise InputValidationError([Problem(
                rule="missing_body", param=shape.body_field, message=f"request {rid!r} has no {shape.body_field!r} "
                f"object: not a {self.dialect.title} request line", fix=f"write lines like {shape.example}")],
                source="estimate")
        model = str(body.get("model") or self.model or "unknown")
        endpoint = line.get("url") if isinstance(line.get("url"), str) else self.endpoint
        entry = self.result.models.get(model)
        if entry is None:
            rate = self.table.rate(model, self.dialect.price_provider)  # unknown: the error names the fix
            entry = self.result.models[model] = ModelEstimate(model, rate)
        count: Count = count_request(body, shape.name, model)
        limit, times = output_limit(body, shape.name, endpoint)
        if limit is None:
            limit = _model_max(model, entry.rate)
            if limit is None:
                entry.unbounded_output += 1
                self._problem(f"request {rid!r} sets no output limit and model {model!r} has no known maximum "
                              "output: set its limit (max_tokens / max_completion_tokens / maxOutputTokens)")
                limit = 0
            else:
                entry.loose += 1
        out = limit * times
        if count.kind == "unbounded":
            self._problem(f"request {rid!r} holds images, audio or files, whose tokens its text cannot bound")
        order = ("exact", "bound", "unbounded")
        entry.input_kind = max(entry.input_kind, count.kind, key=order.index)
        entry.requests += 1
        entry.input_tokens += count.tokens
        entry.output_bound += out
        assert entry.rate is not None
        lower = entry.rate.cost(count.tokens, 0)
        upper = entry.rate.cost_upper(count.tokens, out)
        entry.lower += lower
        entry.upper += upper
        self._seen += 1
        item = (upper, self._seen, RequestCost(upper, rid, model))
        if len(self._heap) < 3:
            heapq.heappush(self._heap, item)
        else:
            heapq.heappushpop(self._heap, item)

    def _problem(self, text: str) -> None:
        if len(self.result.problems) < 100:  # bounded, whatever the file
            self.result.problems.append(text)

    def done(self) -> Estimate:
        self.result.dearest = [c for _, _, c in sorted(self._heap, reverse=True)]
        return self.result


def estimate(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    provider: str | Dialect = "openai",
    model: str | None = None,
    endpoint: str | None = None,
    prices: PriceTable | Mapping[str, Any] | None = None,
) -> Estimate:
    """Estimate a request file (a path) or request dicts: per model, requests, input tokens (exact or bound),
    the output bound and the cost range, at batch prices. Streams the file: memory stays flat.

    Args:
        source: A JSONL request file, or request lines (the provider's shape, or neutral chat requests).
        provider: The provider whose request shape and prices apply (a name, or a dialect).
        model: The model of lines that name none (Gemini: the batch's model).
        endpoint: The batch's endpoint, for lines that carry no ``url``.
        prices: Price overrides (``{"model": {"input": .., "output": ..}}`` per 1M tokens) or a :class:`PriceTable`.

    Raises:
        UnknownPriceError: A model has no batch price: pass an override.
        InputValidationError: A line is not JSON.
    """
    dialect = dialect_named(provider) if isinstance(provider, str) else provider
    acc = _Accumulator(dialect, PriceTable.of(prices), model, endpoint)
    if isinstance(source, (str, os.PathLike)):
        for _, request in iter_request_lines(source):
            acc.add(request)
    else:
        for item in source:
            acc.add(item)
    return acc.done()
