"""The key cache: in-process slots, the shared (Redis) tier, single-flight loads
and invalidation, in one place. No rule of SPEC section 4 lives here.

Look-up chain: in-process slot -> shared cache (Redis, when `cache` is a Redis
URL) -> store. A miss runs once per id however many requests wait for it
(`SingleFlight`: threads wait on the leader's Future, coroutines on an
`anyio.Event`, and the load itself runs in a worker thread, so the event loop
never blocks on a store). Unknown ids are cached too (`ABSENT`, for a short
time), so a flood of well-formed fake tokens does not reach the store.

Every change made through this guard drops the local slot and is published
(shared.py), or, where Redis cannot be reached, marked in the store so every
instance's shared cache stops serving its copy within `local_cache_ttl`. A load
that began before a change (its epoch is older) is answered but not cached.

The slot invariant (what the warm path may remember, `Slot`): a slot holds one
prepared `Entry` (never changed after it is made) and what requests learned
about that very entry: `proof`, a token whose checksum was valid and whose
secret matched the entry's *current* hash (not a rotate grace's previous one),
and `routes`, the (peer, method, route path) triples for which SPEC steps 4-7
passed for that entry with no forwarding header (so the client was the peer)
and no passphrase. Each is a pure function of the entry and the request, so it
holds until the entry's `until` (revocation or expiry; the step checks it) or
until the entry is replaced: a change of the record makes a new Entry in a new,
empty slot, and the memory goes with the old one. A slot is replaced whole
(`remember` swaps it only if it is still the one the request saw), never
changed in place, so no request can see another's half-written memory.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, TypeVar

import anyio
import anyio.to_thread

from .exceptions import ServiceUnavailable, StoreError
from .models import KeyRecord

if TYPE_CHECKING:
    from .shared import SharedCache
    from .stores import Store

log = logging.getLogger("keyguard")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
MAX_ROUTES = 256  # routes one slot remembers


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
_RETRY: Final = object()


class Slot(NamedTuple):
    """One cached key id (see the module docstring for what it may hold)."""

    until: float  # time.monotonic() after which the slot is gone
    entry: Any  # decision.Entry, or ABSENT for an id the store does not know
    proof: str | None = None
    routes: frozenset[tuple[str | None, str, str]] = frozenset()

    def __repr__(self) -> str:  # the proof is a token: never shown
        proof = "<token>" if self.proof is not None else None
        return f"Slot(until={self.until!r}, entry={self.entry!r}, proof={proof}, routes=...)"


class LocalCache:
    """A bounded dict of slots; the oldest insertion goes first."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, Slot] = {}
        self._maxsize = maxsize
        self._clock = clock

    def get(self, key: str) -> Slot | None:
        slot = self._data.get(key)
        if slot is None or slot.until < self._clock():
            return None
        return slot

    def set(self, key: str, value: Any, ttl: float) -> None:
        data = self._data
        data.pop(key, None)
        data[key] = Slot(self._clock() + ttl, value)
        while len(data) > self._maxsize:
            try:
                del data[next(iter(data))]
            except (StopIteration, KeyError, RuntimeError):  # raced with another thread
                break

    def swap(self, key: str, old: Slot, new: Slot) -> None:
        """Put `new` in place of `old`, only if `old` is still there."""
        if self._data.get(key) is old:
            self._data[key] = new

    def drop(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class SingleFlight(Generic[K, T]):
    """One call of `load(key)` at a time per key, shared by every waiter."""

    def __init__(self, load: Callable[[K], T]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._threads: dict[K, Future[T]] = {}
        self._tasks: dict[K, tuple[anyio.Event, list[Any]]] = {}

    def __call__(self, key: K) -> T:
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

    async def acall(self, key: K) -> T:
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


SharedFactory = Callable[[Callable[[str], None], Callable[[], None]], "SharedCache | None"]


class KeyCache:
    """The key cache of one guard (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        prepare: Callable[[KeyRecord], Any],
        setup: Callable[[], object],
        *,
        size: int,
        ttl: float,
        cache_positive: bool,
        shared: SharedFactory,
    ) -> None:
        self._store = store
        self._prepare = prepare
        self._setup = setup
        self._ttl = ttl
        self._cache_positive = cache_positive  # `cache: None` keeps only unknown ids
        self._local = LocalCache(size)
        self._epoch = 0  # bumped on every change seen; a load that saw an older one isn't cached
        self._epoch_lock = threading.Lock()
        self.shared = shared(self.dropped, self.dropped_all)
        self._flight: SingleFlight[tuple[str, int], Any] = SingleFlight(self._load)
        # The live slot for a key id, without I/O (the step's look-up): the local
        # cache's own `get`, with no call of ours around it.
        self.peek: Callable[[str], Slot | None] = self._local.get

    # -- reads ---------------------------------------------------------------

    def load(self, key_id: str) -> Any:
        """The entry (or ABSENT), from the shared cache or the store: I/O, single-flight.
        A call joins only a load that began after the last change it could have seen
        (the flight is per key id and epoch): a request that starts after a revoke
        returned never gets the record read before it."""
        return self._flight((key_id, self._epoch))

    async def aload(self, key_id: str) -> Any:
        return await self._flight.acall((key_id, self._epoch))

    def _load(self, flight: tuple[str, int]) -> Any:
        key_id, epoch = flight
        ttl = self._ttl
        try:
            self._setup()  # the store's schema and the pepper, once
            shared, fetch = self.shared, self._store.get
            if shared is None:
                record = fetch(key_id)
            else:
                record, keep_until = shared.load(key_id, fetch)
                ttl = min(ttl, keep_until - time.monotonic())
        except StoreError as exc:
            raise ServiceUnavailable() from exc
        value = ABSENT if record is None else self._prepare(record)
        if (self._cache_positive or value is ABSENT) and ttl > 0:
            with self._epoch_lock:  # no change may land between the check and the set
                if epoch == self._epoch:
                    self._local.set(key_id, value, ttl)
        return value

    def remember(
        self, slot: Slot, proof: str | None, route: tuple[str | None, str, str] | None
    ) -> None:
        """Learn `proof` and/or `route` about the entry in `slot` (if still cached)."""
        new = slot
        if proof is not None:
            new = new._replace(proof=proof)
        if route is not None and len(new.routes) < MAX_ROUTES:
            new = new._replace(routes=new.routes | {route})
        self._local.swap(slot.entry.record.id, slot, new)

    # -- changes -------------------------------------------------------------

    def forget(self, key_id: str) -> None:
        """Drop every cached copy of `key_id`, on every instance (after a change)."""
        self.dropped(key_id)
        if self.shared is None or not self.shared.publish(key_id):
            # No Redis to tell: mark the store, which every shared cache reads (shared.py).
            try:
                self._store.set_meta("changed", secrets.token_urlsafe(12))
            except StoreError:
                log.warning(
                    "keyguard: key %s changed, but the store did not take the change marker; "
                    "other instances' Redis cache may serve the old record for up to cache_ttl",
                    key_id,
                )

    def dropped(self, key_id: str) -> None:
        with self._epoch_lock:
            self._epoch += 1
            self._local.drop(key_id)

    def dropped_all(self) -> None:
        with self._epoch_lock:
            self._epoch += 1
            self._local.clear()

    def __len__(self) -> int:
        return len(self._local)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
