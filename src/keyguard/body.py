"""The request target and body of a signed request, for both doors.

Only signed requests come here (a bearer request's body is never touched).
The body is read once, bounded by `signing.max_body_bytes` (413
`payload_too_large`, also when Content-Length says so before any byte is
read), and handed back to the app unchanged: ASGI wraps `receive`, WSGI
replaces `wsgi.input` with a `BytesIO` and sets `CONTENT_LENGTH`. Chunked and
empty bodies work. A body that ends before its Content-Length (the client
stopped sending) is a 400, not a hang.

The target is the raw path and query as sent (a client signs the bytes it
puts on the wire, not their percent-decoded form).

`read` and `aread` do the step's body need for a door's facts: `facts.source`
is the WSGI environ or the ASGI scope; for ASGI, `facts.receive` is replaced by
one that replays the body to the app.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.types import Message, Receive, Scope

from .exceptions import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .decision import Facts
    from .signing import SignedRequests

_CHUNK = 65_536
_PATH_SAFE = "/!$&'()*+,;=:@-._~"  # RFC 3986 pchar and "/": left as is by clients


def _short() -> BadRequest:
    return BadRequest("invalid_request", "The request body ended before its Content-Length.")


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
    if len(lengths) > 1:
        raise BadRequest("invalid_request", "Send one Content-Length header.")
    declared = _declared(lengths[0] if lengths else None, limit)
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


def wsgi_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """Read the whole body (at most `limit` bytes) and put it back for the app."""
    stream = environ.get("wsgi.input")
    declared = _declared(environ.get("CONTENT_LENGTH"), limit)
    chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
    chunks: list[bytes] = []
    size = 0
    if stream is not None and declared is not None and not chunked:
        while size < declared:
            chunk = stream.read(min(_CHUNK, declared - size))
            if not chunk:
                raise _short()
            chunks.append(chunk)
            size += len(chunk)
    elif stream is not None and environ.get("wsgi.input_terminated"):
        # The server de-chunks and ends the stream; read until it does, within the limit.
        while True:
            chunk = stream.read(min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge()
    elif chunked:  # a server that does not de-chunk: reading could hang or see framing
        raise BadRequest("invalid_request", "Send a Content-Length with a signed body.")
    # Otherwise no body (PEP 3333: do not read past a missing Content-Length).
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


# -- the step's body need -------------------------------------------------------


def read(facts: Facts, signing: SignedRequests) -> None:
    """The WSGI door's signed body and target (and for rfc9421 every header
    line), into `facts`."""
    environ = facts.source
    facts.raw_path, facts.query = wsgi_target(environ)
    if signing.wants_fields:
        facts.fields = wsgi_fields(environ)[1]
    facts.body = wsgi_body(environ, signing.max_body_bytes)


async def aread(facts: Facts, signing: SignedRequests) -> None:
    """The ASGI door's signed body and target (and for rfc9421 every header
    line), into `facts`, and a `receive` that replays the body into
    `facts.receive`."""
    scope = facts.source
    facts.raw_path, facts.query = asgi_target(scope)
    if signing.wants_fields:
        facts.fields = asgi_fields(scope)[1]
    lengths = facts.headers.get("content-length", ())
    limit = signing.max_body_bytes
    facts.body, facts.receive = await asgi_body(scope, facts.receive, limit, lengths)
