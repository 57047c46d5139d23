"""How the doors sit in an app: a second KeyGuard middleware in one chain is a
start-up error, and what a middleware wraps is remembered, so the framework
helpers can tell "a public path" from "the middleware is missing".

Each door's constructor calls `install(self, app)`. It walks the chain it wraps
(each layer's `.app`, as Starlette's and werkzeug's middlewares keep it, and
the object behind a bound method such as Flask's `app.wsgi_app`) and raises
`ConfigurationError` if another KeyGuard door is in it. For Starlette's
`add_middleware` that happens when Starlette builds its middleware stack, on
its first call: the lifespan start-up under uvicorn, or the first request. The
error is also logged, because uvicorn's default `--lifespan auto` reports a
failed start-up only at INFO. Weak references only: nothing here keeps an app
alive. Must not touch a request.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

from .exceptions import ConfigurationError

logger = logging.getLogger("keyguard")
_DEPTH = 64  # a middleware chain is a handful of layers; a loop in one must not hang
# id -> object, weakly: by id because apps and routers need not be hashable (Starlette's
# Router is not); an entry goes with its object, so a reused id never matches a stale one.
_DOORS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_GUARDED: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

TWICE = (
    "KeyGuardMiddleware is installed twice on this app, so every request would be checked "
    "and counted twice: keep one (one app.add_middleware(KeyGuardMiddleware, ...), one "
    "KeyGuardExtension(app), or one wrapping of app.wsgi_app)"
)
PUBLIC = "This route needs an API key, but its path is public, so no key is checked here."
MISSING = (
    "{helper} needs the KeyGuard middleware, which is not installed on this app: add "
    "{fix} (the middleware checks the key; {helper} only reads what it found)"
)


def _remember(obj: Any) -> None:
    with contextlib.suppress(TypeError):  # not weak-referenceable: nothing to remember
        _GUARDED[id(obj)] = obj


def install(door: Any, app: Any) -> None:
    """Called by a door's constructor with the app it wraps."""
    node = app
    for _ in range(_DEPTH):
        if node is None:
            break
        doubled = _DOORS.get(id(node)) is node or any(
            getattr(m, "cls", None) is type(door) for m in getattr(node, "user_middleware", ())
        )
        if doubled:
            logger.error("keyguard: %s", TWICE)
            raise ConfigurationError(TWICE)
        _remember(node)
        for attr in ("__self__", "router"):  # Flask behind app.wsgi_app; a Starlette app's router
            if getattr(node, attr, None) is not None:
                _remember(getattr(node, attr))
        node = getattr(node, "app", None)
    _DOORS[id(door)] = door


def is_guarded(*objects: Any) -> bool:
    """Does some KeyGuard middleware wrap one of these (an app, a router)?"""
    return any(obj is not None and _GUARDED.get(id(obj)) is obj for obj in objects)
