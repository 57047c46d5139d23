"""keyguard: API-key authentication for ASGI and WSGI apps.

    guard = KeyGuard({"store": "sqlite:///keyguard.db", "rules": [...]})
    issued = guard.keys.create(owner="acme", name="ci", scopes=["read"])
    guard.verify(issued.token, scopes=["read"])

Doors: `keyguard.asgi.KeyGuardMiddleware`, `keyguard.wsgi.KeyGuardMiddleware`,
`keyguard.fastapi`, `keyguard.flask`. CLI: `keyguard keys ...`.
"""

from .exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    InvalidKeySettings,
    KeyGuardError,
    KeyLimitExceeded,
    KeyNotFound,
    RequestRejected,
    StoreError,
)
from .guard import KeyGuard
from .models import IssuedKey, KeyInfo

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "ConfigurationError",
    "InvalidKeySettings",
    "IssuedKey",
    "KeyGuard",
    "KeyGuardError",
    "KeyInfo",
    "KeyLimitExceeded",
    "KeyNotFound",
    "RequestRejected",
    "StoreError",
]
__version__ = "0.1.0"
