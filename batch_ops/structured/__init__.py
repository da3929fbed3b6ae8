"""Structured outputs: a pydantic model or a JSON Schema as each provider's native form, answers parsed into it.

* :class:`ResponseSchema` — the schema (``ResponseSchema.of(Model)`` / ``.of({...})`` / ``.of("schema.json")``);
* :func:`schema_problems` — the provider's subset (by the dialect's ``structured_form``), checked before upload;
* :func:`with_schema` — the schema written into a request line in the provider's words;
* :func:`parse_line` — a result line read against the schema: ``parsed``, or ``invalid`` with the reason
  (``bad_json``, ``schema``, ``refusal``, ``truncated``);
* :func:`invalid_answers`, :func:`repair_input` — a chain's invalid answers and a repair round's input
  (the round itself is a plan: :mod:`batch_ops._repair`);
* :func:`minimal_instance` — the smallest value a schema accepts (the local server's answers).

See docs/structured-outputs.md.
"""

from __future__ import annotations

from batch_ops.structured.files import apply_schema_file, feedback_text, invalid_answers, repair_input
from batch_ops.structured.instance import minimal_instance
from batch_ops.structured.native import carries_schema, with_schema
from batch_ops.structured.parse import INVALID_REASONS, extract, parse_line
from batch_ops.structured.schema import ResponseSchema, strict_schema
from batch_ops.structured.subsets import FORMS, schema_problems
from batch_ops.structured.summary import structured_summary

__all__ = [
    "FORMS",
    "INVALID_REASONS",
    "ResponseSchema",
    "apply_schema_file",
    "carries_schema",
    "extract",
    "feedback_text",
    "invalid_answers",
    "minimal_instance",
    "parse_line",
    "repair_input",
    "schema_problems",
    "strict_schema",
    "structured_summary",
    "with_schema",
]
