"""OpenAI's Files and Batches API: the dialect the others are told apart from.

Upload a JSONL file (``purpose=batch``), ``POST /batches`` with its id, poll ``GET /batches/{id}``
(eight lower-case statuses), read the output and error files; our key rides in the batch's
``metadata``. Every default of :class:`~batch_ops.dialects.base.Dialect` is OpenAI's, so this
class only names it.

Examples:
    >>> OpenAIDialect().create_batch({"input_file_id": "f"}).path
    '/batches'
"""

from __future__ import annotations

from batch_ops.dialects.base import Dialect

__all__ = ["OpenAIDialect"]


class OpenAIDialect(Dialect):
    """OpenAI (``https://api.openai.com/v1``) and servers that speak its Batch API unchanged (the
    local server, vLLM-style gateways)."""

    name = "openai"
    title = "OpenAI Batch API"
