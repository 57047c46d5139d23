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
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import audit
from .body import asgi_body, asgi_fields, asgi_target
from .exceptions import ConfigurationError, RequestRejected, problem
from .guard import Facts, KeyGuard
from .models import KeyInfo


class KeyUser(BaseUser):
    """`request.user` for a request that passed: the calling key."""

    __slots__ = ("key",)

    def __init__(self, key: KeyInfo) -> None:
        self.key = key

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.name

    @property
    def identity(self) -> str:
        return self.key.id


def guard_from(guard: KeyGuard | None, settings: Mapping[str, Any] | None) -> KeyGuard:
    if guard is not None and settings is not None:
        raise ConfigurationError("guard: pass either guard= or settings=, not both")
    if guard is not None and not isinstance(guard, KeyGuard):
        raise ConfigurationError("guard: must be a keyguard.KeyGuard")
    return guard if guard is not None else KeyGuard(settings)


async def send_problem(scope: Scope, send: Send, exc: RequestRejected) -> None:
    status, headers, body = problem(exc)
    raw = [(k.encode(), v.encode()) for k, v in headers]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            # The server cannot send an HTTP answer: close before accepting (policy violation).
            await send({"type": "websocket.close", "code": 1008, "reason": exc.code})
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class KeyGuardMiddleware:
    """`app.add_middleware(KeyGuardMiddleware, guard=guard)` (or `settings={...}`)."""

    def __init__(
        self,
        app: ASGIApp,
        guard: KeyGuard | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.guard = guard_from(guard, settings)
        # raw header name -> the name the guard reads, decoded once here
        names = {*self.guard.header_names, "content-length"}  # the length for signed bodies
        self._wanted = {n.encode(): n for n in names}
        self._is_public = self.guard.router.is_public
        self._undocumented = True  # see `_document`

    def _document(self, scope: Scope) -> None:
        """Once, on the first lifespan event or request the warm path does not answer
        (so before any schema is served, and never on the warm path): the FastAPI
        app this middleware runs in gets keyguard's OpenAPI additions."""
        self._undocumented = False
        if "fastapi" in sys.modules:  # only an app that imported it can be a FastAPI one
            from fastapi import FastAPI

            from .fastapi import install_openapi

            app = scope.get("app")
            if isinstance(app, FastAPI):
                install_openapi(app, self.guard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if self._undocumented:
                self._document(scope)
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        guarded = not self._is_public(path)
        facts = None  # made only when needed: the warm path does without
        if guarded:
            guard, wanted = self.guard, self._wanted
            headers: dict[str, list[str]] = {}
            for name, value in scope["headers"]:
                text = wanted.get(name)
                if text is not None:
                    headers.setdefault(text, []).append(value.decode("latin-1"))
            client = scope.get("client")
            method, peer = scope.get("method", "GET"), client[0] if client else None
            try:
                entry = guard.warm(method, path, peer, headers)
                if entry is None:  # not the usual warm request: the whole check, which may await
                    if self._undocumented:
                        self._document(scope)
                    facts = Facts(method, path, peer, headers)
                    if guard.signing.is_signed(headers):  # only signed requests have a body read
                        facts.raw_path, facts.query = asgi_target(scope)
                        if guard.signing.wants_fields:
                            facts.scheme, facts.fields = asgi_fields(scope)
                        limit = guard.signing.max_body_bytes
                        lengths = headers.get("content-length", ())
                        facts.body, receive = await asgi_body(scope, receive, limit, lengths)
                        entry = guard.warm_signed(facts)
                    if entry is None:
                        entry = await guard.aauthenticate(facts)
            except RequestRejected as exc:
                audit.denied(guard, facts or Facts(method, path, peer, headers), exc)
                await send_problem(scope, send, exc)
                return
            scope["keyguard.key"] = entry.info
            scope["keyguard.guard"] = guard
            if entry.door is None:  # Starlette's view of the key, made once per cached entry
                entry.door = (AuthCredentials(sorted(entry.scopes)), KeyUser(entry.info))
            scope["auth"], scope["user"] = entry.door
        elif self._undocumented:
            self._document(scope)

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
            if guarded:
                audit.denied(self.guard, facts or Facts(method, path, peer, headers), exc)
            await send_problem(scope, send, exc)
