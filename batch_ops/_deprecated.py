"""Names that moved: still importable from their old module, with a ``DeprecationWarning``.

A module whose names moved ends with ``__getattr__ = moved(__name__, {...})``; Python calls it only
for names the module no longer defines.

Examples:
    >>> import types, warnings
    >>> new = types.SimpleNamespace(__name__="pkg.new", thing=42)
    >>> getattr_ = moved("pkg.old", {"thing": new})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     getattr_("thing"), str(caught[0].message)
    (42, 'pkg.old.thing moved to pkg.new.thing: import it from there (the old name will be removed)')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["moved"]


def moved(old: str, names: Mapping[str, ModuleType | Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each of ``names`` from the module it moved to, with a warning."""

    def __getattr__(name: str) -> Any:
        home = names.get(name)
        if home is None:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {home.__name__}.{name}: import it from there (the old name will be "
                      "removed)", DeprecationWarning, stacklevel=2)
        return getattr(home, name)

    return __getattr__
