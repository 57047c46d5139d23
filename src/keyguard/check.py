"""The two drivers of the step (decision.py): `run` (sync: `verify`, the WSGI
door) and `arun` (async: `averify`, the ASGI door, the admin app).

Each calls `step` until it answers with a `Verdict`, doing the I/O each `Need`
names in between; they differ only in how: `run` inline, `arun` on the event
loop for what costs nothing (in-memory counters and replay cache, a signed
request's target) and in a worker thread for anything that may block (a store
or Redis call; argon2, at most `SLOW_THREADS` at a time) or by awaiting the
ASGI body. Then `settle`
(one function for both) applies what the verdict says besides the answer: the
memo the warm path may keep, the buffered last use, and the observers (audit,
metrics). The async driver's first step call is plain (`start`): a request
the step answers at once (the warm path) never creates a coroutine. A refusal
raised by the I/O itself (a store down, a rate limit spent, a replayed
signature) goes back to the step, which turns it into the verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from . import body
from .decision import (
    ADMIT,
    BODY,
    FETCH,
    REMEMBER,
    SLOW,
    TARGET,
    Facts,
    Known,
    Need,
    Verdict,
    step,
)
from .exceptions import RequestRejected

if TYPE_CHECKING:
    from .decision import Parts
    from .ratelimit import Abuse
    from .replay import ReplayCache

SLOW_THREADS = 2  # worker threads that may run argon2 for requests at once
FLUSH_INTERVAL = 60.0  # seconds between writes of the buffered last uses

Observer = Callable[[Facts, Verdict, "Known | None"], None]


class Drivers:
    """What the drivers need besides the step's parts: where each Need is done,
    the buffer of last uses, and who observes verdicts (`observers` see every
    verdict, `refusals` only the refused ones)."""

    def __init__(
        self,
        parts: Parts,
        cache: Any,
        abuse: Abuse,
        replay: ReplayCache,
        clock: Callable[[], float],
        flush: Callable[[], None],
    ) -> None:
        self.parts = parts
        self.cache = cache
        self.abuse = abuse
        self.replay = replay
        self.clock = clock
        self.flush = flush  # writes `used` out; run in a thread once a minute
        # key id -> (time, client): an address, or the peer's text (a verdict whose
        # client is the peer does not parse it), made text when written.
        self.used: dict[str, tuple[float, Any]] = {}
        self.next_flush = clock() + FLUSH_INTERVAL
        self.observers: list[Observer] = []
        self.refusals: list[Observer] = []
        self.slow = anyio.CapacityLimiter(SLOW_THREADS)

    def run(self, facts: Facts) -> Verdict:
        """The sync driver."""
        parts = self.parts
        out = step(parts, facts)
        known = None
        while isinstance(out, Need):
            kind, arg, known = out
            try:
                if kind is FETCH:
                    known.entry, known.fetched = self.cache.load(arg), True
                elif kind is TARGET:
                    body.target(facts, arg)
                elif kind is BODY:
                    body.read(facts, arg)
                elif kind is SLOW:
                    known.slow[arg[0]] = _hasher(parts).slow(*arg)
                elif kind is ADMIT:
                    self.abuse.admit(arg)
                    known.admitted = True
                elif kind is REMEMBER:
                    self.replay.remember(arg.key_id, arg.mac, arg.ts)
                    known.remembered = True
                else:  # FAILED
                    known.counted = True
                    self.abuse.failed(arg)
            except RequestRejected as exc:
                known.error = exc
            out = step(parts, facts, known)
        self.settle(facts, out, known)
        return out

    def start(self, facts: Facts) -> Verdict | Need:
        """The async driver's first call, which needs no await: the step's first
        answer, settled when it is a verdict (the warm path ends here)."""
        out = step(self.parts, facts)
        if out.__class__ is Verdict:
            self.settle(facts, out, None)
        return out

    async def arun(self, facts: Facts) -> Verdict:
        """The async driver: `start`, then the same loop as `run` with blocking I/O
        in worker threads."""
        out = self.start(facts)
        if out.__class__ is Verdict:
            return out
        return await self.finish(facts, out)

    async def finish(self, facts: Facts, out: Verdict | Need) -> Verdict:
        """The async driver after `start` answered a Need."""
        parts = self.parts
        known = None
        while isinstance(out, Need):
            kind, arg, known = out
            try:
                if kind is FETCH:
                    known.entry, known.fetched = await self.cache.aload(arg), True
                elif kind is TARGET:
                    body.atarget(facts, arg)
                elif kind is BODY:
                    await body.aread(facts, arg)
                elif kind is SLOW:
                    check = _hasher(parts).slow
                    known.slow[arg[0]] = await anyio.to_thread.run_sync(
                        check, *arg, limiter=self.slow
                    )
                elif kind is ADMIT:
                    await self.abuse.aadmit(arg)
                    known.admitted = True
                elif kind is REMEMBER:
                    remember = self.replay.remember
                    if self.replay.shared:  # Redis: in a worker thread
                        await anyio.to_thread.run_sync(remember, arg.key_id, arg.mac, arg.ts)
                    else:
                        remember(arg.key_id, arg.mac, arg.ts)
                    known.remembered = True
                else:  # FAILED
                    known.counted = True
                    await self.abuse.afailed(arg)
            except RequestRejected as exc:
                known.error = exc
            out = step(parts, facts, known)
        self.settle(facts, out, known)
        return out

    def settle(self, facts: Facts, verdict: Verdict, known: Known | None) -> None:
        """After the answer: the memo, the last use, the observers (for both drivers)."""
        entry = verdict.entry
        if entry is not None:
            if verdict.memo is not None:
                self.cache.remember(*verdict.memo)
            now = self.clock()  # `last_used_at` and `_from`, buffered
            self.used[entry.id] = (now, facts.peer if verdict.peer_is_client else verdict.client)
            if now >= self.next_flush:
                self._flush_soon(now)
        elif verdict.error is not None:
            for observe in self.refusals:
                observe(facts, verdict, known)
        if self.observers:
            for observe in self.observers:
                observe(facts, verdict, known)

    def _flush_soon(self, now: float) -> None:
        self.next_flush = now + FLUSH_INTERVAL
        threading.Thread(target=self.flush, name="keyguard-flush", daemon=True).start()

    def refused_later(self, facts: Facts, exc: RequestRejected, key_id: str | None) -> None:
        """A refusal made outside the step (a route dependency or view decorator such
        as `require_scopes`, for the key `key_id` that passed; the admin app's own
        checks), shown to the observers as the step's verdicts are."""
        client = self.parts.clients.resolve(facts.peer, facts.headers)
        verdict = Verdict(None, exc, key_id, key_id is not None, client, False)
        for observe in (*self.refusals, *self.observers):
            observe(facts, verdict, None)


def _hasher(parts: Parts) -> Any:
    return parts.hasher or parts.setup()
