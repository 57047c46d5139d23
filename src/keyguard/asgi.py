"""The ASGI door: pure ASGI middleware for Starlette, FastAPI and any ASGI app.

Gathers the facts of a request (the few headers the guard wants, the peer, the
path), asks the guard, and either renders the rejection as problem+json or
passes the request on with the caller's key in `scope["keyguard.key"]`, plus
Starlette's `scope["auth"]`/`scope["user"]` so `@requires(...)` works as is.
Lifespan and other scope types pass straight through. A rejection raised
further in (by `keyguard.fastapi.require_scopes`) is rendered here too.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import Any

import anyio.to_thread
from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .decision import Entry, Facts, Verdict
from .exceptions import ConfigurationError, RequestRejected
from .guard import KeyGuard
from .models import KeyInfo
from .scopes import route_path
from .wiring import install


def _read_only_dict(base: type) -> Any:
    """A `__dict__` that shows an instance's attributes read-only. Starlette's
    `BaseUser` and `AuthCredentials` have no `__slots__`, so their instances keep
    a `__dict__` that `obj.__dict__[name] = ...` (or `vars(obj)`) would change
    past `__setattr__`; this one answers with a read-only view of it instead."""
    real = next(c.__dict__["__dict__"] for c in base.__mro__ if "__dict__" in c.__dict__)
    return property(lambda self: MappingProxyType(real.__get__(self)))


class KeyUser(BaseUser):
    """`request.user` for a request that passed: the calling key. Read-only: one
    is shared by every request with the same cached key (see `_views`)."""

    __slots__ = ("key",)
    __dict__ = _read_only_dict(BaseUser)
    key: KeyInfo

    def __init__(self, key: KeyInfo) -> None:
        object.__setattr__(self, "key", key)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("request.user is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("request.user is read-only")

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle, past the read-only __dict__
        return KeyUser, (self.key,)

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.name

    @property
    def identity(self) -> str:
        return self.key.id


class KeyCredentials(AuthCredentials):
    """`request.auth` for a request that passed: the key's scopes, as a tuple, and
    read-only, so what one request does to it no other request sees (Starlette's
    `@requires` reads it with `in`)."""

    __dict__ = _read_only_dict(AuthCredentials)

    def __init__(self, scopes: tuple[str, ...]) -> None:
        object.__setattr__(self, "scopes", scopes)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("request.auth is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("request.auth is read-only")

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle, past the read-only __dict__
        return KeyCredentials, (self.scopes,)


VIEWS = 10_000  # cached keys whose Starlette view a door keeps (then it starts afresh)


def _view(entry: Entry) -> tuple[KeyCredentials, KeyUser]:
    return KeyCredentials(entry.granted), KeyUser(entry.info)


def guard_from(guard: KeyGuard | None, settings: Mapping[str, Any] | None) -> KeyGuard:
    if guard is not None and settings is not None:
        raise ConfigurationError("guard: pass either guard= or settings=, not both")
    if guard is not None and not isinstance(guard, KeyGuard):
        raise ConfigurationError("guard: must be a keyguard.KeyGuard")
    return guard if guard is not None else KeyGuard(settings)


class KeyGuardMiddleware:
    """`app.add_middleware(KeyGuardMiddleware, guard=guard)` (or `settings={...}`)."""

    def __init__(
        self,
        app: ASGIApp,
        guard: KeyGuard | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        install(self, app)  # a second KeyGuard door in this chain: ConfigurationError
        self.app = app
        self.guard = guard_from(guard, settings)
        # raw header name -> the name the guard reads, decoded once here
        names = {*self.guard.header_names, "content-length"}  # the length for signed bodies
        self._wanted = {n.encode(): n for n in names}
        self._start, self._finish = self.guard.drivers.start, self.guard.drivers.finish
        self._views: dict[Entry, tuple[KeyCredentials, KeyUser]] = {}
        self._undocumented = True  # see `_document`

    def _document(self, scope: Scope) -> None:
        """Once, on the first lifespan event or request (so before any schema is
        served): the FastAPI app this middleware runs in gets keyguard's OpenAPI
        additions (`keyguard.fastapi.install_openapi`)."""
        self._undocumented = False
        if "fastapi" in sys.modules:  # only an app that imported it can be a FastAPI one
            from fastapi import FastAPI

            from .fastapi import install_openapi

            app = scope.get("app")
            if isinstance(app, FastAPI):
                install_openapi(app, self.guard)

    def _flushing(self, receive: Receive) -> Receive:
        """The lifespan's `receive`, writing the buffered last uses out when the
        server says it shuts down: uvicorn ends a SIGTERM'd process by the signal
        itself after the shutdown, so `atexit` (the guard's other flush) never runs."""
        flush = self.guard.flush

        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await anyio.to_thread.run_sync(flush)
            return message

        return lifespan_receive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if self._undocumented:
                self._document(scope)
            if kind == "lifespan":
                receive = self._flushing(receive)
            await self.app(scope, receive, send)
            return
        if self._undocumented:
            self._document(scope)
        headers: dict[str, list[str]] = {}
        wanted = self._wanted
        for name, value in scope["headers"]:
            text = wanted.get(name)
            if text is not None:
                headers.setdefault(text, []).append(value.decode("latin-1"))
        client = scope.get("client")
        facts = Facts(  # what the app routes (SPEC section 4 step 0): the method upper-cased,
            scope.get("method", "GET").upper(),  # the path below the mount point
            route_path(scope["path"], root) if (root := scope.get("root_path")) else scope["path"],
            client[0] if client else None,
            headers,
            scope.get("scheme", "http"),
        )
        verdict = self._start(facts)  # the warm path answers here, without an await
        if verdict.__class__ is not Verdict:  # I/O: where a signed request is read from
            facts.source, facts.receive = scope, receive
            verdict = await self._finish(facts, verdict)
            receive = facts.receive  # (a signed body, replayed to the app)
        if verdict.error is not None:
            await verdict.error.asgi(scope, send)
            return
        entry = verdict.entry
        if entry is not None:
            scope["keyguard.key"] = entry.info
            scope["keyguard.guard"] = self.guard
            # Starlette's view of the key: read-only objects, made once per prepared
            # entry (a pure function of it) and kept while it is in use.
            view = self._views.get(entry)
            if view is None:
                if len(self._views) >= VIEWS:
                    self._views.clear()
                view = self._views[entry] = _view(entry)
            scope["auth"], scope["user"] = view
        else:  # a public path: `request.user` and `@requires` answer (403), never assert
            if "auth" not in scope:
                scope["auth"] = AuthCredentials()
            if "user" not in scope:
                scope["user"] = UnauthenticatedUser()

        # A route dependency (require_scopes, or current_key on a public path) may still
        # refuse; render that here too, unless an answer has started (when the app, or
        # Starlette's ServerErrorMiddleware inside us, has begun one, a second would
        # break the protocol: then the error goes on).
        started = False

        def send_tracked(message: Message) -> Awaitable[None]:  # no coroutine of its own
            nonlocal started
            started = True
            return send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except RequestRejected as exc:
            if started:
                raise
            self.guard.drivers.refused_later(facts, exc, None if entry is None else entry.record.id)
            await exc.asgi(scope, send)
