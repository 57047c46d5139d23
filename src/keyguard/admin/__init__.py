"""`keyguard.admin`: the admin API and the "API Keys" page, ready to mount.

    app.mount("/keys-admin", admin_app(guard))                      # Starlette / FastAPI
    flask_app.wsgi_app = DispatcherMiddleware(                       # Flask / WSGI
        flask_app.wsgi_app, {"/keys-admin": admin_wsgi(guard)})

The app authenticates each request itself with the same guard: by default a
key holding `keyguard:admin`; `authorize=` plugs in the host's own login (and
returns a `Principal` for self-service), `confirm=` a step-up check before
every change (`totp_confirm` is one, on pyotp).
"""

from __future__ import annotations

from .app import ACTIONS, ADMIN_SCOPE, Authorize, Confirm, Principal, admin_app
from .totp import TotpConfirm, totp_confirm
from .wsgi import AsgiToWsgi, admin_wsgi

__all__ = [
    "ACTIONS",
    "ADMIN_SCOPE",
    "AsgiToWsgi",
    "Authorize",
    "Confirm",
    "Principal",
    "TotpConfirm",
    "admin_app",
    "admin_wsgi",
    "totp_confirm",
]
