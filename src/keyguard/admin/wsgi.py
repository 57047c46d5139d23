"""Serve the admin ASGI app to WSGI hosts (Flask, Werkzeug): `admin_wsgi(guard)`.

A small ASGI-to-WSGI bridge, enough for the admin app: one request in, one
buffered response out. The ASGI app runs on one event loop in a daemon thread
owned by the bridge (started on the first request); each WSGI worker thread
submits its request there and waits. Request bodies are read up to a bound
(the admin API refuses anything larger anyway). Not a general-purpose adapter:
no streaming responses, no websockets, no lifespan.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message

from ..guard import KeyGuard
from .app import admin_app

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

MAX_BODY = 256 * 1024


class AsgiToWsgi:
    """A WSGI callable that runs an ASGI app on a private event loop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._serve, args=(self._loop,), name="keyguard-admin-loop", daemon=True
                )
                self._thread.start()
            return self._loop

    def close(self) -> None:
        """Stop the bridge's event loop (a later request starts a new one)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)

    @staticmethod
    def _scope(environ: WSGIEnvironment) -> dict[str, Any]:
        def text(raw: str) -> str:  # PEP 3333: latin-1-decoded bytes
            try:
                return raw.encode("latin-1").decode("utf-8")
            except UnicodeError:
                return raw

        script = text(environ.get("SCRIPT_NAME", ""))
        path = text(environ.get("PATH_INFO", "")) or "/"
        headers = []
        for name, value in environ.items():
            if name.startswith("HTTP_"):
                headers.append(
                    (name[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
                )
            elif name in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                headers.append(
                    (name.replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
                )
        peer = environ.get("REMOTE_ADDR")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
            "method": environ.get("REQUEST_METHOD", "GET").upper(),
            "scheme": environ.get("wsgi.url_scheme", "http"),
            "path": script + path,
            "raw_path": (script + path).encode("utf-8"),
            "root_path": script,
            "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
            "headers": headers,
            "client": (peer, int(environ.get("REMOTE_PORT") or 0)) if peer else None,
            "server": (
                environ.get("SERVER_NAME", "localhost"),
                int(environ.get("SERVER_PORT") or 80),
            ),
        }

    @staticmethod
    def _body(environ: WSGIEnvironment) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            return b""
        # One byte past the bound, so the app sees an oversized body and answers 413.
        return bytes(environ["wsgi.input"].read(min(length, MAX_BODY + 1)))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scope = self._scope(environ)
        body = self._body(environ)
        sent: dict[str, Any] = {"status": 500, "headers": [], "body": []}
        received = False

        async def receive() -> Message:
            nonlocal received
            if received:  # the whole body was given at once; nothing more will come
                return {"type": "http.disconnect"}
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                sent["body"].append(message.get("body", b""))

        async def run() -> None:
            await self.app(scope, receive, send)

        asyncio.run_coroutine_threadsafe(run(), self._event_loop()).result()
        status = int(sent["status"])
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in sent["headers"]]
        start_response(f"{status} {phrase}".strip(), headers)
        return [b"".join(sent["body"])]


def admin_wsgi(guard: KeyGuard, **options: Any) -> AsgiToWsgi:
    """`admin_app(guard, **options)` as a WSGI app, e.g. for Flask:

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/keys-admin": admin_wsgi(guard)})
    """
    return AsgiToWsgi(admin_app(guard, **options))
