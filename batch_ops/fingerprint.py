"""Moved to :mod:`batch_ops.identity.fingerprint`; every name is still importable from here, with a
``DeprecationWarning``."""

from __future__ import annotations

from batch_ops._deprecated import moved
from batch_ops.identity import fingerprint as _fingerprint

__getattr__ = moved(__name__, dict.fromkeys(_fingerprint.__all__, _fingerprint))
