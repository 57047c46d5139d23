"""`keyguard.admin`: the admin API and the "API Keys" page, ready to mount.

    app.mount("/keys-admin", admin_app(guard))                      # Starlette / FastAPI
    flask_app.wsgi_app = DispatcherMiddleware(                       # Flask / WSGI
        flask_app.wsgi_app, {"/keys-admin": admin_wsgi(guard)})

The app authenticates each request itself with the same guard: by default a
key holding `keyguard:admin`; `authorize=` plugs in the host's own login.
"""

from __future__ import annotations

from .app import ADMIN_SCOPE, Authorize, Principal, admin_app
from .wsgi import AsgiToWsgi, admin_wsgi

__all__ = ["ADMIN_SCOPE", "AsgiToWsgi", "Authorize", "Principal", "admin_app", "admin_wsgi"]
