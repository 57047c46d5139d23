"""The request target and body of a signed request, for both doors.

Only signed requests come here (a bearer request's body is never touched),
and only once the step has checked all it can without the body (the headers,
the timestamp, the key: decision.py). The body is read once, bounded by
`signing.max_body_bytes` (413 `payload_too_large`, also when Content-Length
says so before any byte is read) and in time (`READ_SECONDS` from the first
read: 400 `invalid_request` when the body has not arrived by then, so a client
that stops sending holds a connection no longer), and handed back to the app
unchanged: ASGI wraps `receive`, WSGI replaces `wsgi.input` with a `BytesIO`
and sets `CONTENT_LENGTH`. Chunked and empty bodies work. A body that ends
before its Content-Length (the client stopped sending) is a 400, not a hang,
and so is one the WSGI server's reader refuses (a malformed chunk), never a
500.

The deadline: on ASGI the reading is cancelled (on asyncio by one timer per
event loop that sweeps the reads in progress, `_LateReads`; elsewhere by
`anyio.fail_after`). A WSGI app under an ASGI server through a2wsgi has its
body read from a2wsgi's ASGI `receive`, each message awaited no longer than
the deadline. Otherwise, on WSGI
a blocked `wsgi.input.read` cannot be cancelled, so where the server hands the
app its connection's socket (gunicorn's `gunicorn.socket`, werkzeug's
`werkzeug.socket`) one watchdog thread per process shuts that socket's read
side at the deadline: the read returns, the answer is still written, and the
server closes the connection after it. Elsewhere the deadline is checked
between reads, and the server's own timeouts bound a read that hangs (waitress
and uWSGI read the body before the app runs; set mod_wsgi's
`request-timeout`). 408 would name the case, but SPEC section 5's codes are
answered with their own statuses: it is 400 `invalid_request`, with a detail
that says the body came too slowly. The deadline is shorter than the freshness
window on purpose: a request whose body came later than that would find its
timestamp stale anyway (the step judges freshness again once the body is in).

The target is the raw path and query as sent (a client signs the bytes it
puts on the wire, not their percent-decoded form).

`target`/`atarget` and `read`/`aread` do the step's target and body needs for
a door's facts: `facts.source` is the WSGI environ or the ASGI scope; for
ASGI, `facts.receive` is replaced by one that replays the body to the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import itertools
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from starlette.types import Message, Receive, Scope

from .exceptions import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .decision import Facts
    from .signing import SignedRequests

_CHUNK = 65_536
_PATH_SAFE = "/!$&'()*+,;=:@-._~"  # RFC 3986 pchar and "/": left as is by clients
READ_SECONDS = 10.0  # a signed body must have arrived this long after its first read


def _short() -> BadRequest:
    return BadRequest("invalid_request", "The request body ended before its Content-Length.")


def _late(seconds: float) -> BadRequest:
    return BadRequest(
        "invalid_request", f"The request body did not arrive within {seconds:g} seconds."
    )


def _unreadable() -> BadRequest:
    return BadRequest("invalid_request", "The request body could not be read.")


def _no_body() -> BadRequest:  # a caller without a door cannot give a body
    return BadRequest("invalid_request", "This endpoint does not accept signed requests.")


def _declared(value: str | None, limit: int) -> int | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    # ASCII digits only: str.isdigit admits "²" and other scripts' digits, which int()
    # refuses (or reads); 19 digits are more than any body.
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise BadRequest("invalid_request", "The Content-Length header is not a number.")
    size = int(text)
    if size > limit:
        raise PayloadTooLarge()
    return size


# -- ASGI ----------------------------------------------------------------------


def asgi_target(scope: Scope) -> tuple[str, str]:
    """(raw path, raw query) of an ASGI request."""
    raw = scope.get("raw_path")
    if raw:  # some servers put the query in raw_path too
        path = (raw.partition(b"?")[0] if b"?" in raw else raw).decode("latin-1")
    else:  # `path` holds the whole path (ASGI servers prepend root_path; Mount keeps it)
        path = quote(scope["path"], safe=_PATH_SAFE)
    query = scope.get("query_string")
    return path, query.decode("latin-1") if query else ""


def asgi_fields(scope: Scope) -> tuple[str, list[tuple[str, str]]]:
    """(scheme, every header line) of an ASGI request, for a signature that may
    cover any header (rfc9421)."""
    lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    return scope.get("scheme", "http"), lines


async def asgi_body(
    scope: Scope, receive: Receive, limit: int, lengths: Sequence[str] = ()
) -> tuple[bytes, Receive]:
    """Read the whole body (at most `limit` bytes); return it and a `receive`
    that gives it to the app again. `lengths`: the Content-Length header values."""
    if scope["type"] != "http":
        return b"", receive  # a websocket handshake has no body
    declared = _one_length(lengths, limit)
    message = await receive()
    if message["type"] != "http.request":  # http.disconnect: the client went away
        raise _short()
    body = message.get("body", b"")
    if message.get("more_body", False):  # more than one message: gather them
        body = await _rest(receive, [body], limit, declared)
    if len(body) > limit or (declared is not None and len(body) > declared):
        raise PayloadTooLarge()
    if declared is not None and len(body) != declared:
        raise _short()
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for http.disconnect as usual

    return body, replay


async def _rest(receive: Receive, chunks: list[bytes], limit: int, declared: int | None) -> bytes:
    """The remaining messages of a body sent in several, within the limits."""
    size = len(chunks[0])
    while True:
        if size > limit or (declared is not None and size > declared):
            raise PayloadTooLarge()
        message = await receive()
        if message["type"] != "http.request":
            raise _short()
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# -- WSGI ----------------------------------------------------------------------


def wsgi_target(environ: WSGIEnvironment) -> tuple[str, str]:
    """(raw path, raw query) of a WSGI request: the server's raw URI when it
    gives one (gunicorn RAW_URI, werkzeug REQUEST_URI), else re-quoted."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        path = raw.partition("?")[0]
    else:
        text = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        path = quote(text.encode("latin-1", "replace"), safe=_PATH_SAFE) or "/"
    return path, environ.get("QUERY_STRING", "")


def wsgi_fields(environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]]]:
    """(scheme, every header line) of a WSGI request (PEP 3333 has joined repeated
    headers with ", ", which is how RFC 9421 combines them too)."""
    lines = [
        (k[5:].lower().replace("_", "-"), v) for k, v in environ.items() if k.startswith("HTTP_")
    ]
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            lines.append((name, environ[key]))
    return environ.get("wsgi.url_scheme", "http"), lines


def wsgi_body(environ: WSGIEnvironment, limit: int, seconds: float = READ_SECONDS) -> bytes:
    """Read the whole body (at most `limit` bytes, within `seconds`) and put it
    back for the app."""
    stream = environ.get("wsgi.input")
    declared = _declared(environ.get("CONTENT_LENGTH"), limit)
    chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
    chunks: list[bytes] = []
    if stream is not None and (
        (declared is not None and not chunked) or environ.get("wsgi.input_terminated")
    ):
        deadline = time.monotonic() + seconds
        ticket = _WATCHDOG.arm(_connection(environ), deadline)
        try:
            if _bridged(stream):  # a2wsgi: read from its ASGI receive, each wait bounded
                _gather_bridged(stream, chunks, declared, limit, deadline)
            else:
                _gather(stream, chunks, declared if not chunked else None, limit, deadline)
        except BadRequest:  # cut short: by the watchdog, the deadline or the client
            if _WATCHDOG.disarm(ticket) or time.monotonic() >= deadline:
                raise _late(seconds) from None
            raise
        finally:
            _WATCHDOG.disarm(ticket)
    elif chunked:  # a server that does not de-chunk: reading could hang or see framing
        raise BadRequest("invalid_request", "Send a Content-Length with a signed body.")
    # Otherwise no body (PEP 3333: do not read past a missing Content-Length).
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


def _gather(
    stream: Any, chunks: list[bytes], declared: int | None, limit: int, deadline: float
) -> None:
    """Read `declared` bytes (None: until the server ends the de-chunked stream,
    within `limit`) into `chunks`, checking the deadline between reads."""
    size = 0
    while declared is None or size < declared:
        want = min(_CHUNK, (declared if declared is not None else limit + 1) - size)
        if time.monotonic() >= deadline:
            raise _short()  # (told apart as late by the caller)
        try:
            chunk = stream.read(want)
        except Exception:  # the server's reader refused the framing, or the connection failed
            raise _unreadable() from None
        if not chunk:
            if declared is None:
                return
            raise _short()
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()


def _bridged(stream: Any) -> bool:
    """Is `wsgi.input` a2wsgi's `Body`, which reads an ASGI `receive` on its event
    loop (blocking the WSGI thread until a message comes, with no timeout)?"""
    return callable(getattr(stream, "receive", None)) and isinstance(
        getattr(stream, "loop", None), asyncio.AbstractEventLoop
    )


def _gather_bridged(
    stream: Any, chunks: list[bytes], declared: int | None, limit: int, deadline: float
) -> None:
    """`_gather` for a2wsgi's `Body`: its ASGI messages, asked for on its loop and
    each awaited no later than the deadline (the body handed to the app is ours)."""
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _short()  # (told apart as late by the caller)
        future = asyncio.run_coroutine_threadsafe(stream.receive(), stream.loop)
        try:
            message = future.result(timeout=left)
        except TimeoutError:  # (concurrent.futures' is the builtin's alias)
            future.cancel()
            raise _short() from None
        except Exception:
            raise _unreadable() from None
        if message.get("type") != "http.request":  # the client went away
            raise _short()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit or (declared is not None and size > declared):
            raise PayloadTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            if declared is not None and size != declared:
                raise _short()
            return


def _connection(environ: WSGIEnvironment) -> Any:
    """The connection's socket, where the WSGI server hands it to the app."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def _shut_reading(sock: Any) -> None:
    """End any read on `sock`: shut its read side (the OS socket's, also under an
    `ssl.SSLSocket`, whose own `shutdown` would drop its TLS state and so the
    answer); the write side stays open for the answer."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RD)
    except (OSError, TypeError, ValueError):  # closed already, or not a stdlib socket
        with contextlib.suppress(Exception):
            sock.shutdown(socket.SHUT_RD)


class _Watchdog:
    """One daemon thread per process that ends the WSGI body reads outliving their
    deadline (see the module docstring). `arm` registers a socket and a deadline,
    `disarm` withdraws it and says whether the deadline came first."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # also in a forked child: no thread, no lock held
        self._cond = threading.Condition()
        self._armed: dict[int, Any] = {}  # ticket -> socket
        self._fired: set[int] = set()
        self._due: list[tuple[float, int]] = []  # (deadline, ticket), a heap
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: Any, deadline: float) -> int | None:
        if sock is None:
            return None
        with self._cond:
            ticket = next(self._tickets)
            self._armed[ticket] = sock
            heapq.heappush(self._due, (deadline, ticket))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="keyguard-body-deadline", daemon=True
                )
                self._thread.start()
            elif self._due[0][1] == ticket:  # the earliest now: wake the thread
                self._cond.notify()
        return ticket

    def disarm(self, ticket: int | None) -> bool:
        if ticket is None:
            return False
        with self._cond:
            self._armed.pop(ticket, None)
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
        return False

    def _run(self) -> None:
        with self._cond:
            while True:
                due = self._due
                while due and due[0][1] not in self._armed:  # read in time: forget it
                    heapq.heappop(due)
                if not due:
                    self._cond.wait()
                    continue
                deadline, ticket = due[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(due)
                self._fired.add(ticket)
                _shut_reading(self._armed.pop(ticket))


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


# -- the step's target and body needs -------------------------------------------


def target(facts: Facts, signing: SignedRequests) -> None:
    """The WSGI door's target as sent (and for rfc9421 every header line), into
    `facts` (a caller without a door: its `path`), and the body size it declares
    (400/413 here, before any key is looked up: the same answer whatever key the
    request names)."""
    environ = facts.source
    if environ is None:
        facts.raw_path = facts.path or ""
        return
    facts.length = _declared(environ.get("CONTENT_LENGTH"), signing.max_body_bytes)
    facts.chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    facts.raw_path, facts.query = wsgi_target(environ)
    if signing.wants_fields:
        facts.fields = wsgi_fields(environ)[1]


def atarget(facts: Facts, signing: SignedRequests) -> None:
    """The ASGI door's target as sent (and for rfc9421 every header line), into
    `facts` (no I/O: the scope holds them), and the body size it declares (as
    `target`)."""
    scope = facts.source
    if scope is None:
        facts.raw_path = facts.path or ""
        return
    facts.length = _one_length(facts.headers.get("content-length", ()), signing.max_body_bytes)
    facts.chunked = any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope.get("headers", ())
    )
    facts.raw_path, facts.query = asgi_target(scope)
    if signing.wants_fields:
        facts.fields = asgi_fields(scope)[1]


def _one_length(lengths: Sequence[str], limit: int) -> int | None:
    if len(lengths) > 1:
        raise BadRequest("invalid_request", "Send one Content-Length header.")
    return _declared(lengths[0] if lengths else None, limit)


def read(facts: Facts, signing: SignedRequests) -> None:
    """The WSGI door's signed body, into `facts`."""
    environ = facts.source
    if environ is None:
        raise _no_body()
    facts.body = wsgi_body(environ, signing.max_body_bytes, READ_SECONDS)


async def aread(facts: Facts, signing: SignedRequests) -> None:
    """The ASGI door's signed body, into `facts`, and a `receive` that replays
    the body to the app into `facts.receive`."""
    scope = facts.source
    if scope is None:
        raise _no_body()
    lengths = facts.headers.get("content-length", ())
    limit, seconds = signing.max_body_bytes, READ_SECONDS
    read = asgi_body(scope, facts.receive, limit, lengths)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio, say): anyio's cancel scope
        try:
            with anyio.fail_after(seconds):
                facts.body, facts.receive = await read
        except TimeoutError:
            raise _late(seconds) from None
        return
    task, reads = asyncio.current_task(), _late_reads(loop)
    assert task is not None
    reads.start(loop, task, seconds)
    try:
        facts.body, facts.receive = await read
    except asyncio.CancelledError:
        if reads.stop(task):  # the deadline's cancellation, not anyone else's
            task.uncancel()
            raise _late(seconds) from None
        raise
    finally:
        reads.stop(task)


class _LateReads:
    """The ASGI body reads in progress on one asyncio loop, each with its deadline.
    One timer, armed while any read is in progress, cancels the task of a read
    that outlives its deadline: what `asyncio.timeout` (a timer per read) or
    anyio's cancel scope would do, for a dict entry per read (a signed request
    pays several microseconds less)."""

    # (It keeps no reference to its loop, whose weak key in _READS it is the value of:
    # the loop is handed to each call, and only the loop holds the timer.)

    def __init__(self) -> None:
        self.reading: dict[asyncio.Task[Any], float] = {}
        self.late: set[asyncio.Task[Any]] = set()
        self.armed = False  # its timer is scheduled (the handle is not kept: it holds the loop)

    def start(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], seconds: float
    ) -> None:
        self.reading[task] = loop.time() + seconds
        if not self.armed:
            every = min(seconds, 1.0)  # so a read ends at most this long after its deadline
            loop.call_later(every, self._sweep, loop, every)
            self.armed = True

    def stop(self, task: asyncio.Task[Any]) -> bool:
        """The read is over; True when its deadline cancelled it."""
        self.reading.pop(task, None)
        if task in self.late:
            self.late.discard(task)
            return True
        return False

    def _sweep(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        now = loop.time()
        for task, end in list(self.reading.items()):
            if end <= now:
                del self.reading[task]
                self.late.add(task)
                task.cancel()
        self.armed = bool(self.reading)
        if self.armed:
            loop.call_later(every, self._sweep, loop, every)


_READS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LateReads] = (
    weakref.WeakKeyDictionary()
)


def _late_reads(loop: asyncio.AbstractEventLoop) -> _LateReads:
    reads = _READS.get(loop)
    if reads is None:
        reads = _READS[loop] = _LateReads()
    return reads
