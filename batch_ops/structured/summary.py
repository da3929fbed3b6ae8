"""What a run with a response schema adds to its result dict (XCom, task results, the CLI's summary)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from batch_ops.structured.schema import ResponseSchema

__all__ = ["structured_summary"]


def structured_summary(schema: ResponseSchema, rounds: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What a run with a response schema adds to its result dict, under ``structured``: the schema (so the
    results can be read against it: ``OpenAIBatchHook.get_results``, ``read_batch_results``) and each repair
    round (:meth:`batch_ops.RepairRound.summary`); ``repair_requests`` is what the repair rounds carried (paid for).

    Examples:
        >>> s = ResponseSchema.of({"type": "object"}, name="a")
        >>> out = structured_summary(s, [{"round": 1, "invalid": {"schema": 2}, "batch_id": "b", "carried": 2}])
        >>> out["repair_rounds"], out["repair_requests"], out["response_schema"]["name"]
        (1, 2, 'a')
    """
    done = [dict(r) for r in rounds]
    return {"response_schema": schema.to_json(), "repair_rounds": sum(1 for r in done if r.get("batch_id")),
            "repair_requests": sum(int(r.get("carried") or 0) for r in done), "rounds": done}
