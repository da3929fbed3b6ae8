"""Turning finished batches into final results, resubmissions and one merged output.

Pure file work, no HTTP: the runner downloads, these functions decide and write.

- :func:`is_retryable` says which failed requests deserve another round.
- :func:`harvest_part` joins a part's requests with its batch's output and error files: each
  request ends up either *final* (a success, or a failure that will not be retried) in the
  part's results file, or in the next round's request file. Never both, never neither.
- :func:`apply_repair` puts a repair round's answers into a part's results (each request's latest answer);
  :func:`invalid_in_results` counts the answers there that do not follow the job's schema.
- :func:`merge` writes one line per input request, in input order, each with its provenance.
- :class:`UsageTotals` sums billed usage and prices it from a user-supplied table.

Examples:
    >>> from batch_ops.models import ResultLine
    >>> is_retryable(ResultLine(custom_id="a", error={"code": "batch_expired", "message": "x"}))
    True
    >>> is_retryable(ResultLine(custom_id="a", response={"status_code": 400, "body": {"error": {
    ...     "code": "invalid_value"}}}))
    False
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_ops._files import atomic_write
from batch_ops.errors import BatchOpsError
from batch_ops.jsonl import iter_request_lines
from batch_ops.models import ResultLine, answer_usage
from batch_ops.results import join_results
from batch_ops.structured import ResponseSchema, parse_line

__all__ = [
    "RETRYABLE_CODES",
    "HarvestCounts",
    "RepairCounts",
    "apply_repair",
    "UsageTotals",
    "harvest_part",
    "invalid_in_results",
    "is_retryable",
    "merge",
    "synthesize_failures",
]

#: Error codes worth another round: the request itself was fine, the run was not.
RETRYABLE_CODES = frozenset({
    "batch_expired", "batch_cancelled", "server_error", "internal_error", "rate_limit_exceeded",
    "timeout", "missing_result", "overloaded", "service_unavailable",
})


def is_retryable(line: ResultLine) -> bool:
    """True for failures caused by the run (5xx, 429, expiry, cancellation, a lost result)."""
    if line.ok:
        return False
    if line.response is not None and (line.response.status_code >= 500 or line.response.status_code in (408, 429)):
        return True
    return (line.error_code or "") in RETRYABLE_CODES


@dataclass
class HarvestCounts:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0


def _final_line(line: ResultLine, provenance: Mapping[str, Any]) -> bytes:
    doc = line.model_dump(mode="json")
    doc["batch_ops"] = dict(provenance)
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def harvest_part(
    *,
    part_path: Path,
    output_path: Path | None,
    error_path: Path | None,
    results_path: Path,
    retry_path: Path | None,
    provenance: Mapping[str, Any],
    usage: UsageTotals,
    id_field: str = "custom_id",
) -> HarvestCounts:
    """Split a finished part into final results and (when ``retry_path``) requests to rerun.

    Retryable failures go to ``retry_path`` as the original request lines (byte for byte)
    when it is given; otherwise they are final failures. Both files are written atomically,
    so harvesting the same part again after a crash gives the same files.
    """
    counts = HarvestCounts()
    retry_ids: set[str] = set()

    def finals() -> Iterator[bytes]:
        for line in join_results(input_path=part_path, output_path=output_path, error_path=error_path,
                                 id_field=id_field):
            if line.ok:
                counts.succeeded += 1
                usage.add(line.body)
            elif retry_path is not None and is_retryable(line):
                retry_ids.add(line.custom_id)
                continue
            else:
                counts.failed += 1
                if line.response is not None:
                    usage.add(line.body)  # a 4xx answer may still carry billed usage
            yield _final_line(line, provenance)

    atomic_write(results_path, finals())
    if retry_path is not None:
        counts.retried = len(retry_ids)
        if retry_ids:
            atomic_write(retry_path, _select_requests(part_path, retry_ids, id_field))
    return counts


def _select_requests(path: Path, wanted: set[str], id_field: str = "custom_id") -> Iterator[bytes]:
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            custom_id = json.loads(raw).get(id_field)
            if custom_id in wanted:
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def _invalid(line: ResultLine, schema: ResponseSchema) -> bool:
    return line.ok and parse_line(line, schema).invalid is not None


def invalid_in_results(results_path: Path, schema: ResponseSchema) -> int:
    """How many answers in a part's results file do not follow ``schema`` (failed requests are not answers)."""
    with results_path.open("rb") as fh:
        return sum(_invalid(ResultLine.model_validate_json(raw), schema) for raw in fh if raw.strip())


@dataclass
class RepairCounts:
    """What a repair round changed in a part's results: ``answered`` (requests it carried that have its answer
    now), ``valid`` (of those, the ones that follow the schema) and ``still_invalid`` (the part's answers that
    still do not, after it)."""

    answered: int = 0
    valid: int = 0
    still_invalid: int = 0


def apply_repair(
    *,
    part_path: Path,
    output_path: Path | None,
    error_path: Path | None,
    results_path: Path,
    repaired_path: Path,
    provenance: Mapping[str, Any],
    usage: UsageTotals,
    schema: ResponseSchema,
    id_field: str = "custom_id",
) -> RepairCounts:
    """The part's results (``results_path``) with each request a repair round answered given its new answer (the
    latest answer wins, as in the results of a chain), written to ``repaired_path``; a request it did not answer
    (it failed again, or the batch expired) keeps the one it had. Written atomically, and ``results_path`` is
    left as it is, so applying the same round again after a crash gives the same file.

    One pass: the part's results are in the part's order (:func:`harvest_part` writes them so), and so is the
    join of the repair's files with the part's requests; memory holds the join's index, never the files.
    """
    counts = RepairCounts()

    def lines() -> Iterator[bytes]:
        answers = join_results(input_path=part_path, output_path=output_path, error_path=error_path,
                               id_field=id_field)
        with results_path.open("rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                line = ResultLine.model_validate_json(raw)
                new = next((a for a in answers if a.custom_id == line.custom_id), None)
                if new is None:
                    raise BatchOpsError(f"{results_path} names {line.custom_id!r}, which {part_path} does not hold "
                                     "in that order: the part's results were not written by its harvest")
                if new.response is not None:
                    usage.add(new.body)  # billed, whatever it answered
                if new.ok:
                    counts.answered += 1
                    counts.valid += not _invalid(new, schema)
                    line, raw = new, _final_line(new, provenance)
                counts.still_invalid += _invalid(line, schema)
                yield raw

    atomic_write(repaired_path, lines())
    return counts


def synthesize_failures(*, part_path: Path, results_path: Path, code: str, message: str,
                        provenance: Mapping[str, Any], id_field: str = "custom_id") -> int:
    """Final failure lines for every request of a part whose batch failed as a whole."""

    def lines() -> Iterator[bytes]:
        for _, request in iter_request_lines(part_path):
            line = ResultLine(custom_id=str(request.get(id_field)), response=None,
                              error={"code": code, "message": message})  # type: ignore[arg-type]
            yield _final_line(line, provenance)

    return atomic_write(results_path, lines())


def merge(*, input_path: Path, results_paths: Iterable[Path], output_path: Path,
          id_field: str = "custom_id") -> tuple[int, int, int, int]:
    """Write one line per input request, in input order; return (succeeded, failed, missing, duplicates).

    ``duplicates`` counts custom_ids that more than one results file finalised; by
    construction it is 0, and the job reports it so a test (and a user) can check.
    """
    index: dict[str, tuple[int, int]] = {}
    files = [p for p in results_paths if p.exists()]
    duplicates = 0
    for which, path in enumerate(files):
        with path.open("rb") as fh:
            offset = 0
            for raw in fh:
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                custom_id = json.loads(raw)["custom_id"]
                if custom_id in index:
                    duplicates += 1
                    continue
                index[custom_id] = (which, start)
    succeeded = failed = missing = 0
    handles = [p.open("rb") for p in files]
    try:

        def lines() -> Iterator[bytes]:
            nonlocal succeeded, failed, missing
            for _, request in iter_request_lines(input_path):
                custom_id = request.get(id_field)
                entry = index.get(str(custom_id))
                if entry is None:
                    missing += 1
                    failed += 1
                    line = ResultLine(custom_id=str(custom_id), error={  # type: ignore[arg-type]
                        "code": "missing_result", "message": "the job recorded no result for this request"})
                    yield _final_line(line, {"batch_id": None, "round": None})
                    continue
                handle = handles[entry[0]]
                handle.seek(entry[1])
                raw = handle.readline()
                if ResultLine.model_validate_json(raw).ok:
                    succeeded += 1
                else:
                    failed += 1
                yield raw

        atomic_write(output_path, lines())
    finally:
        for h in handles:
            h.close()
    return succeeded, failed, missing, duplicates


@dataclass
class UsageTotals:
    """Billed tokens summed from response bodies, per model, and a cost estimate.

    ``prices`` maps a model name (or ``"*"``) to USD per 1M tokens:
    ``{"gpt-4o-mini": {"input": 0.075, "cached_input": 0.0375, "output": 0.30}}`` (batch prices).

    Examples:
        >>> u = UsageTotals()
        >>> u.add({"model": "m", "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
        ...                                "prompt_tokens_details": {"cached_tokens": 200}}})
        >>> u.summary(prices={"m": {"input": 1.0, "cached_input": 0.5, "output": 2.0}})["cost_usd"]
        0.0019
    """

    per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if not isinstance(body.get("usage"), dict):
            other = answer_usage(body)  # an answer that counts tokens elsewhere (Gemini's usageMetadata)
            if other is not None:
                self._add(str(body.get("model") or body.get("modelVersion") or "unknown"), other.input_tokens, 0,
                          other.output_tokens, 0)
            return
        usage = body["usage"]
        model = str(body.get("model") or "unknown")
        if "prompt_tokens" in usage:
            inp = usage.get("prompt_tokens") or 0
            out = usage.get("completion_tokens") or 0
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        else:
            inp = usage.get("input_tokens") or 0
            out = usage.get("output_tokens") or 0
            cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
            reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
        self._add(model, inp, cached, out, reasoning)

    def _add(self, model: str, inp: int, cached: int, out: int, reasoning: int) -> None:
        row = self.per_model.setdefault(model, {"input": 0, "cached": 0, "output": 0, "reasoning": 0})
        row["input"] += int(inp)
        row["cached"] += int(cached)
        row["output"] += int(out)
        row["reasoning"] += int(reasoning)

    def merge_from(self, other: Mapping[str, Mapping[str, int]]) -> None:
        for model, row in other.items():
            mine = self.per_model.setdefault(model, {"input": 0, "cached": 0, "output": 0, "reasoning": 0})
            for key, value in row.items():
                mine[key] = mine.get(key, 0) + int(value)

    def summary(self, *, prices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        totals = {"input": 0, "cached": 0, "output": 0, "reasoning": 0}
        for row in self.per_model.values():
            for key in totals:
                totals[key] += row.get(key, 0)
        result: dict[str, Any] = {"tokens": totals, "by_model": self.per_model}
        if prices:
            cost = 0.0
            unpriced = []
            for model, row in self.per_model.items():
                price = prices.get(model) or prices.get("*")
                if price is None:
                    unpriced.append(model)
                    continue
                cached_price = price.get("cached_input", price.get("input", 0.0))
                cost += (row["input"] - row["cached"]) * price.get("input", 0.0) / 1e6
                cost += row["cached"] * cached_price / 1e6
                cost += row["output"] * price.get("output", 0.0) / 1e6  # reasoning is billed as output
            result["cost_usd"] = round(cost, 6)
            if unpriced:
                result["unpriced_models"] = unpriced
        return result
