"""The suite-wide secret-leak watch (installed by tests/conftest.py for every test).

Records what `guard.keys` issues (tokens, signing secrets, passphrases) and
scans every place a secret must never reach: log records, problem+json
bodies, the bodies both doors send, and KeyGuardError messages. Tokens are
matched by their 24-character secret part, so a leaked token is caught even
when cut or glued to other text.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keyguard
from keyguard import exceptions
from keyguard.keys import KeyManager

_RUN = re.compile(r"[0-9A-Za-z]{24,}")
SECRET_PART = 24


class _Handler(logging.Handler):
    def __init__(self, watch: SecretWatch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg} {record.args}"
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + str(record.exc_info[1])
        self.watch.scan(text, f"log record from {record.name}")


class _Body:
    """A WSGI body passed through chunk by chunk, each chunk scanned."""

    def __init__(self, body: Iterable[bytes], watch: SecretWatch) -> None:
        self._body = body
        self._watch = watch

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._watch.scan(chunk, "WSGI response body")
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class SecretWatch:
    def __init__(self) -> None:
        self.token_parts: set[str] = set()
        self.others: set[str] = set()
        self.leaks: list[str] = []
        self.scanned = 0
        self._undo: list[Callable[[], None]] = []
        self._handler = _Handler(self)

    # -- what was issued --------------------------------------------------------

    def issued(self, result: Any, passphrase: object = None) -> None:
        token = getattr(result, "token", None)
        if isinstance(token, str):
            parts = token.split("_", 2)
            self.token_parts.add(parts[-1][:SECRET_PART])
        secret = getattr(result, "secret", None)
        if isinstance(secret, str) and len(secret) >= 8:
            self.others.add(secret)
        if isinstance(passphrase, str) and len(passphrase) >= 8:
            self.others.add(passphrase)

    # -- where it must never appear ---------------------------------------------

    def scan(self, data: str | bytes | bytearray | memoryview, where: str) -> None:
        self.scanned += 1
        text = bytes(data).decode("latin-1") if not isinstance(data, str) else data
        parts = self.token_parts
        if parts:
            for run in _RUN.findall(text):
                for i in range(len(run) - SECRET_PART + 1):
                    if run[i : i + SECRET_PART] in parts:
                        self.leaks.append(where)
                        return
        for other in self.others:
            if other in text:
                self.leaks.append(where)
                return

    # -- installation -----------------------------------------------------------

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        if name in vars(owner):
            old = vars(owner)[name]
            self._undo.append(lambda: setattr(owner, name, old))
        else:  # inherited: undo by removing the override
            self._undo.append(lambda: delattr(owner, name))
        setattr(owner, name, value)

    def install(self) -> None:
        watch = self
        for name in ("create", "rotate"):
            sync = getattr(KeyManager, name)

            @functools.wraps(sync)
            def sync_wrapper(*args: Any, __f: Any = sync, **kwargs: Any) -> Any:
                result = __f(*args, **kwargs)
                watch.issued(result, kwargs.get("passphrase"))
                return result

            self._patch(KeyManager, name, sync_wrapper)
            asyn = getattr(KeyManager, "a" + name)

            @functools.wraps(asyn)
            async def async_wrapper(*args: Any, __f: Any = asyn, **kwargs: Any) -> Any:
                result = await __f(*args, **kwargs)
                watch.issued(result, kwargs.get("passphrase"))
                return result

            self._patch(KeyManager, "a" + name, async_wrapper)

        original_problem = exceptions.problem

        @functools.wraps(original_problem)
        def problem(exc: exceptions.RequestRejected) -> tuple[int, list[tuple[str, str]], bytes]:
            status, headers, body = original_problem(exc)
            watch.scan(body, "problem+json body")
            for _name, value in headers:
                watch.scan(value, "problem+json header")
            return status, headers, body

        for info in pkgutil.walk_packages(keyguard.__path__, "keyguard."):
            try:
                importlib.import_module(info.name)
            except Exception:  # an optional driver is missing: nothing to patch there
                continue
        import sys

        for modname, module in list(sys.modules.items()):
            if (
                modname.startswith("keyguard")
                and getattr(module, "problem", None) is original_problem
            ):
                self._patch(module, "problem", problem)

        original_init = exceptions.KeyGuardError.__init__

        def init(self_: BaseException, *args: Any, **kwargs: Any) -> None:
            for arg in args:
                watch.scan(str(arg), f"{type(self_).__name__} message")
            original_init(self_, *args, **kwargs)

        self._patch(exceptions.KeyGuardError, "__init__", init)
        # A request rejection builds its message only when shown: scan what it will show.
        rejected_init = exceptions.RequestRejected.__init__

        def rejected(self_: exceptions.RequestRejected, *args: Any, **kwargs: Any) -> None:
            rejected_init(self_, *args, **kwargs)
            watch.scan(f"{self_} {self_.extra}", f"{type(self_).__name__} message")

        self._patch(exceptions.RequestRejected, "__init__", rejected)
        self._install_doors()
        root = logging.getLogger()
        root.addHandler(self._handler)
        self._undo.append(lambda: root.removeHandler(self._handler))
        kg_logger = logging.getLogger("keyguard")
        level = kg_logger.level
        kg_logger.setLevel(logging.DEBUG)
        self._undo.append(lambda: kg_logger.setLevel(level))

    def _install_doors(self) -> None:
        watch = self
        from keyguard import asgi, wsgi

        asgi_call = asgi.KeyGuardMiddleware.__call__

        async def asgi_wrapper(self_: Any, scope: Any, receive: Any, send: Any) -> None:
            # The admin API's create and rotate answers show the new secret once, by design.
            path = scope.get("path", "")
            shows_secret = scope.get("method") == "POST" and (
                path.endswith("/api/keys") or path.endswith("/rotate")
            )

            async def watched_send(message: Any) -> None:
                for field in ("body", "bytes", "text", "reason"):
                    if shows_secret and field == "body":
                        continue
                    value = message.get(field)
                    if value:
                        watch.scan(value, f"ASGI {message.get('type')} {field}")
                for _name, value in message.get("headers", ()):
                    watch.scan(value, "ASGI response header")
                await send(message)

            await asgi_call(self_, scope, receive, watched_send)

        self._patch(asgi.KeyGuardMiddleware, "__call__", asgi_wrapper)
        wsgi_call = wsgi.KeyGuardMiddleware.__call__

        def wsgi_wrapper(self_: Any, environ: Any, start_response: Any) -> Any:
            def watched_start(status: str, headers: Any, exc_info: Any = None) -> Any:
                for _name, value in headers:
                    watch.scan(value, "WSGI response header")
                if exc_info is None:
                    return start_response(status, headers)
                return start_response(status, headers, exc_info)

            return _Body(wsgi_call(self_, environ, watched_start), watch)

        self._patch(wsgi.KeyGuardMiddleware, "__call__", wsgi_wrapper)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
