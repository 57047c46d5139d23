"""Durable key stores, one module per backend, chosen by URL scheme.

Every store is synchronous: the hot path never touches it (the caches answer),
and the async side runs the rare miss in a worker thread. Drivers are imported
lazily, so `pip install keyguard` needs none of them; driver errors surface as
`StoreError(...) from exc`.
"""

from __future__ import annotations

import importlib

from ..exceptions import ConfigurationError
from .base import Store

_SCHEMES = {
    "memory": "keyguard.stores.memory:MemoryStore",
    "sqlite": "keyguard.stores.sqlite:SQLiteStore",
    "postgresql": "keyguard.stores.postgresql:PostgreSQLStore",
    "postgres": "keyguard.stores.postgresql:PostgreSQLStore",
    "redis": "keyguard.stores.redis:RedisStore",
    "rediss": "keyguard.stores.redis:RedisStore",
    "redis+sentinel": "keyguard.stores.redis:RedisStore",
}


def open_store(url: str) -> Store:
    scheme = url.split("://", 1)[0]
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigurationError(f"store: unknown scheme {scheme!r}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "postgresql" if scheme.startswith("postgres") else "redis"
        raise ConfigurationError(
            f"store: the {scheme}:// backend needs its driver:"
            f" pip install 'keyguard[{extra}]' ({exc.name})"
        ) from None
    store: Store = getattr(module, cls_name)(url)
    return store


__all__ = ["Store", "open_store"]
