"""Dialects: one object per batch API, so plans, polling, money rules and adapters never branch on a provider.

See :mod:`batch_ops.dialects.base` for what a dialect holds. :func:`dialect_for` picks the one a
client's settings name (``ClientSettings.provider``; when unset, Azure OpenAI if an
``api_version`` is set, else OpenAI).

Examples:
    >>> from batch_ops.settings import ClientSettings
    >>> dialect_for(ClientSettings(api_key="k")).name
    'openai'
    >>> dialect_for(ClientSettings(api_key="k", api_version="2024-10-21")).name
    'azure'
    >>> sorted(DIALECTS)
    ['anthropic', 'azure', 'deepinfra', 'gemini', 'groq', 'novita', 'openai', 'openai_compatible', 'together']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_ops.dialects.anthropic import AnthropicDialect
from batch_ops.dialects.azure import AzureDialect
from batch_ops.dialects.base import Dialect, Limits, ResultFile
from batch_ops.dialects.gemini import GeminiDialect
from batch_ops.dialects.openai import OpenAIDialect
from batch_ops.dialects.profiles import (
    DeepInfraDialect,
    GroqDialect,
    NovitaDialect,
    OpenAICompatibleDialect,
    TogetherDialect,
)

if TYPE_CHECKING:
    from batch_ops.settings import ClientSettings

__all__ = ["ANTHROPIC", "AZURE", "DIALECTS", "GEMINI", "OPENAI", "AnthropicDialect", "AzureDialect", "DeepInfraDialect",
           "Dialect", "GeminiDialect", "GroqDialect", "Limits", "NovitaDialect", "OpenAICompatibleDialect",
           "OpenAIDialect", "ResultFile", "TogetherDialect", "dialect_for", "dialect_named"]

OPENAI = OpenAIDialect()
AZURE = AzureDialect()
ANTHROPIC = AnthropicDialect()
GEMINI = GeminiDialect()
#: Every dialect, by the provider name settings use.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (OPENAI, AZURE, ANTHROPIC, GEMINI, GroqDialect(), TogetherDialect(),
                                                    DeepInfraDialect(), NovitaDialect(), OpenAICompatibleDialect())}


def dialect_named(name: str) -> Dialect:
    """The dialect of provider ``name`` (case-insensitive); raises ``ValueError`` naming the known ones."""
    found = DIALECTS.get(name.strip().lower())
    if found is None:
        raise ValueError(f"unknown provider {name!r}: use one of {', '.join(sorted(DIALECTS))}")
    return found


def dialect_for(settings: ClientSettings) -> Dialect:
    """The dialect ``settings`` speak: their ``provider``, else Azure OpenAI when an ``api_version`` is set."""
    if settings.provider:
        return dialect_named(settings.provider)
    return AZURE if settings.api_version is not None else OPENAI
