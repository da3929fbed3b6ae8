"""Superseded by :mod:`batch_ops.process_state`; kept, unchanged, for code that imported it.

batch_ops itself keeps no module-level state any more: what must outlive a call lives in
:data:`batch_ops.process_state.STATE`, which pickles as empty. The containers below still work.

Prefect pickles a flow with cloudpickle, and pickles a local (e.g. editable) package such as
batch_ops *by value*: the module globals its functions use go along. A ``threading.Lock()`` there
fails the whole flow with ``TypeError: cannot pickle '_thread.lock' object``. ``PicklableLock``
pickles as "a new, unlocked lock": what it guards is process-local state, so the unpickling
process gets a lock of its own. ``PicklableWeakKeyDictionary`` likewise pickles as an empty one
(a ``weakref.WeakKeyDictionary`` fails with ``cannot pickle 'weakref.ReferenceType' object``), and
``ProcessLocalSet`` pickles as an empty set (a set of pending ``asyncio.Task`` objects fails with
``cannot pickle '_asyncio.Task' object``) and ``ProcessLocalDict`` as an empty dict (a registry of
this process's objects, which the unpickling process builds again as it needs them).

Examples:
    >>> import pickle
    >>> lock = PicklableLock()
    >>> with lock:
    ...     copy = pickle.loads(pickle.dumps(lock))
    >>> lock.locked(), copy.locked(), copy is lock
    (False, False, False)
    >>> class Loop: ...
    >>> loop = Loop()
    >>> cache = PicklableWeakKeyDictionary({loop: "client"})
    >>> copy = pickle.loads(pickle.dumps(cache))
    >>> len(cache), len(copy), type(copy).__name__
    (1, 0, 'PicklableWeakKeyDictionary')
    >>> tasks = ProcessLocalSet({loop})
    >>> len(tasks), len(pickle.loads(pickle.dumps(tasks)))
    (1, 0)
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar

__all__ = ["PicklableLock", "PicklableWeakKeyDictionary", "ProcessLocalDict", "ProcessLocalSet"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")


class PicklableLock:
    """``threading.Lock()`` that pickles (and copies) as a fresh, unlocked lock."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[PicklableLock], tuple[()]]:
        return (type(self), ())

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class PicklableWeakKeyDictionary(weakref.WeakKeyDictionary[_K, _V]):
    """``weakref.WeakKeyDictionary`` that pickles as a new, empty one (its entries are process-local)."""

    def __reduce__(self) -> tuple[type[PicklableWeakKeyDictionary[_K, _V]], tuple[()]]:
        return (type(self), ())


class ProcessLocalSet(set[_T]):
    """``set`` whose members belong to this process (pending tasks): pickles as a new, empty one."""

    def __reduce__(self) -> tuple[type[ProcessLocalSet[_T]], tuple[()]]:  # type: ignore[override]
        return (type(self), ())


class ProcessLocalDict(dict[_K, _V]):
    """``dict`` of this process's objects (a registry): pickles as a new, empty one."""

    def __reduce__(self) -> tuple[type[ProcessLocalDict[_K, _V]], tuple[()]]:  # type: ignore[override]
        return (type(self), ())
