"""What batch_ops keeps for the life of one process: one registry, and it never leaves the process.

A few things must outlive a call: the clients and webhook subscriptions shared by every wait on an
event loop (one connection pool per loop, not one per trigger), the tasks that close them when
the loop ends, the statuses seen on the wire that this release does not know (one object each),
the settings a Prefect flow run's tasks used (its cancellation hook needs them). They live in
:data:`STATE`, never in module globals, for one reason: Prefect pickles batch_ops *by value* into
work-pool bundles, and every module global goes along — a lock fails the pickle, a pending task
fails it, and an API key must never travel. :data:`STATE` pickles as a new, empty
registry, so a bundle carries none of it; the unpickling process builds what it needs again.

Rules that keep it so: a module asks for its slot when it needs it (``STATE.slot(...)``) and
keeps no module-level reference to what the slot holds; slot names are ``"<module>.<what>"``.
Slots in use:

==============================  ===========================================================
``models.unknown_statuses``     wire statuses this release does not know, one member each
``client.shared``               per event loop: the shared :class:`~batch_ops.AsyncBatchClient` s
``client.closers``              the tasks that close those clients when their loop ends
``webhooks.subscriptions``      per event loop: the shared events subscriptions
``prefect.run_settings``        per Prefect flow run: the settings its tasks used
``cost.encoding``               the offline ``cl100k_base`` tokenizer, loaded once (about a second)
``cost.genai_prices``           genai-prices' version and table date, read once
==============================  ===========================================================

Examples:
    >>> import pickle
    >>> state = ProcessState()
    >>> seen = state.slot("doc.seen", set)
    >>> seen.add("x")
    >>> state.slot("doc.seen", set) is seen
    True
    >>> with state.lock("doc.seen"):
    ...     copy = pickle.loads(pickle.dumps(state))
    >>> copy.slot("doc.seen", set), copy is state
    (set(), False)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["STATE", "ProcessState"]

_T = TypeVar("_T")


class ProcessState:
    """Named slots of process-lifetime state, created on first use; pickles (and copies) as empty."""

    __slots__ = ("_guard", "_locks", "_slots")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}

    def __reduce__(self) -> tuple[type[ProcessState], tuple[()]]:
        return (type(self), ())

    def slot(self, name: str, factory: Callable[[], _T]) -> _T:
        """The object held under ``name``, made by ``factory()`` the first time it is asked for."""
        found = self._slots.get(name)  # no lock on the hot path: a dict read is atomic
        if found is None:
            with self._guard:
                found = self._slots.get(name)
                if found is None:
                    found = self._slots[name] = factory()
        return cast(_T, found)

    def lock(self, name: str) -> threading.Lock:
        """A lock of this process for slot ``name`` (for slots whose updates take several steps)."""
        found = self._locks.get(name)
        if found is None:
            with self._guard:
                found = self._locks.setdefault(name, threading.Lock())
        return found

    def clear(self) -> None:
        """Forget every slot (tests; a process that forked and must not share its parent's clients)."""
        with self._guard:
            self._slots.clear()
            self._locks.clear()


#: The one registry of this process (see the module docstring).
STATE = ProcessState()
