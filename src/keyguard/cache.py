"""The in-process cache tier: TTL, a size bound, negative entries, single-flight.

`LocalCache` maps key ids to prepared entries, or to `ABSENT` for ids the store
does not know (negative caching, so a flood of well-formed fake tokens does
not reach the store). `SingleFlight` makes concurrent misses for one id cost
one load: threads wait on the leader's `Future`; coroutines wait on an
`anyio.Event`, so the event loop never blocks. No I/O happens here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
_RETRY: Final = object()


class LocalCache(Generic[T]):
    """A bounded dict of (deadline, value); the oldest insertion goes first."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[float, T | _Absent]] = {}
        self._maxsize = maxsize
        self._clock = clock

    def get(self, key: str) -> T | _Absent | None:
        """The cached value, ABSENT for a cached miss, None when not cached."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < self._clock():
            self._data.pop(key, None)
            return None
        return item[1]

    peek = get  # the same, left alone by metrics: `KeyGuard.warm` counts its hits itself

    def set(self, key: str, value: T | _Absent, ttl: float) -> None:
        data = self._data
        data.pop(key, None)
        data[key] = (self._clock() + ttl, value)
        while len(data) > self._maxsize:
            try:
                del data[next(iter(data))]
            except (StopIteration, KeyError, RuntimeError):  # raced with another thread
                break

    def drop(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class SingleFlight(Generic[T]):
    """One call of `load(key)` at a time per key, shared by every waiter."""

    def __init__(self, load: Callable[[str], T]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._threads: dict[str, Future[T]] = {}
        self._tasks: dict[str, tuple[anyio.Event, list[Any]]] = {}

    def __call__(self, key: str) -> T:
        with self._lock:
            fut = self._threads.get(key)
            leader = fut is None
            if fut is None:
                fut = self._threads[key] = Future()
        if not leader:
            return fut.result()
        try:
            fut.set_result(self._load(key))
        except BaseException as exc:
            fut.set_exception(exc)
        finally:
            with self._lock:
                del self._threads[key]
        return fut.result()

    async def acall(self, key: str) -> T:
        waiting = self._tasks.get(key)
        if waiting is not None:
            event, box = waiting
            await event.wait()
            if box[0] is _RETRY:  # the leader was cancelled: load for ourselves
                return await self.acall(key)
            if isinstance(box[0], Exception):
                raise box[0]
            return box[0]  # type: ignore[no-any-return]
        event, box = self._tasks[key] = (anyio.Event(), [_RETRY])
        try:
            box[0] = await anyio.to_thread.run_sync(self, key)
        except Exception as exc:
            box[0] = exc
            raise
        finally:
            del self._tasks[key]
            event.set()
        return box[0]  # type: ignore[no-any-return]
