"""Self-service API keys behind the app's own login. Run: python examples/self_service_app.py
(or: uvicorn --app-dir examples self_service_app:app), then open http://127.0.0.1:8000/

The app has its own cookie session (Starlette's SessionMiddleware) and two demo
users, alice (password alice-demo) and ops (ops-demo, an operator). Signed in:
- /account/keys/  your own keys: `authorize` returns Principal(who, owner=<you>,
  grantable=...), so you see only your keys and grant only "project" and
  "inference" (never keyguard:admin or a wildcard);
- /ops/keys/      the operator console: every owner's keys (ops only).
Every change on either page is confirmed with a one-time code (`totp_confirm`):
add the TOTP secret the home page shows to an authenticator app. A key made on
the page calls the /v1 API, which the KeyGuard middleware guards:

    curl -H 'Authorization: Bearer kg_...' http://127.0.0.1:8000/v1/projects

Keys live in ./keyguard.db (SQLite; KEYGUARD_STORE elsewhere). Set KEYGUARD_MASTER_KEYS to offer
signing keys too. The TOTP secrets and the session key are made afresh at each
start (a demo: a real app stores a secret per user when they enrol).
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
from urllib.parse import parse_qs

import pyotp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from keyguard import AuthenticationError, KeyGuard
from keyguard.admin import Principal, admin_app, totp_confirm
from keyguard.asgi import KeyGuardMiddleware

# What a user may put on their keys, as the page shows it.
SCOPES = {
    "project": "Project: read and change your projects (GET/POST /v1/projects)",
    "inference": "Inference: run the models (POST /v1/inference)",
}

# No "store" here: KeyGuard reads KEYGUARD_STORE (and every KEYGUARD_* variable) itself,
# and uses ./keyguard.db when it is unset.
guard = KeyGuard(
    {
        # The key pages check their callers themselves (the session); the rest of
        # the site is the app's own, outside the key rules.
        "public_paths": ["/", "/health", "/login", "/logout", "/account/keys*", "/ops/keys*"],
        "rules": [
            {"path": "/v1/projects*", "scopes": ["project"]},
            {"path": "/v1/inference*", "methods": ["POST"], "scopes": ["inference"]},
        ],
    }
)

USERS = {
    "alice": {"password": "alice-demo", "operator": False},
    "ops": {"password": "ops-demo", "operator": True},
}
TOTP_SECRETS = {name: pyotp.random_base32() for name in USERS}  # one per user, shown at /


def signed_in(request: Request) -> str | None:
    user = request.session.get("user")
    return user if user in USERS else None


def _who(request: Request) -> str:
    user = signed_in(request)
    if user is None:  # 401: the page then says to sign in to this app (never asks for a key)
        raise AuthenticationError("missing_credentials", "Sign in first, at the home page.")
    return user


def own_keys(request: Request) -> Principal:
    """Self-service: the signed-in user's own keys, and only these scopes."""
    user = _who(request)
    return Principal(who=user, owner=user, grantable=frozenset(SCOPES))


def operator(request: Request) -> Principal | None:
    """The operator console: every owner's keys (None: 403 for everyone else)."""
    user = _who(request)
    return Principal(who=user) if USERS[user]["operator"] else None


# Step-up: each change asks for the signed-in user's current TOTP code.
step_up = totp_confirm(lambda request: TOTP_SECRETS.get(signed_in(request) or ""))


# -- the app's own pages --------------------------------------------------------------

STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}"
    "code{overflow-wrap:anywhere}label{display:block;margin:.5rem 0}"
)


def _page(body: str, status: int = 200) -> HTMLResponse:
    doc = "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
    doc += f"<title>keyguard self-service demo</title><style>{STYLE}</style>{body}"
    return HTMLResponse(doc, status, headers={"cache-control": "no-store"})


def _login_form(error: str = "") -> str:
    shown = f"<p role=alert><strong>{html.escape(error)}</strong></p>" if error else ""
    return (
        "<h1>Sign in</h1>" + shown + "<form method=post action=/login>"
        "<label>User <input name=user autocomplete=username required></label>"
        "<label>Password <input name=password type=password autocomplete=current-password"
        " required></label><button>Sign in</button></form>"
        "<p>Demo users: <code>alice</code> / <code>alice-demo</code>, "
        "<code>ops</code> / <code>ops-demo</code> (an operator).</p>"
    )


async def home(request: Request) -> Response:
    user = signed_in(request)
    if user is None:
        return _page(_login_form())
    secret = TOTP_SECRETS[user]
    uri = pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name="keyguard demo")
    base = str(request.base_url).rstrip("/")
    ops = "<li><a href=/ops/keys/>Operator console</a>: every owner's keys</li>"
    return _page(
        f"<h1>Signed in as {html.escape(user)}</h1>"
        "<form method=post action=/logout><button>Sign out</button></form><ul>"
        "<li><a href=/account/keys/>Your API keys</a>: create, rotate, suspend, revoke</li>"
        + (ops if USERS[user]["operator"] else "")
        + "</ul><h2>One-time codes</h2><p>Changes to keys are confirmed with a code from an "
        "authenticator app. Add this secret to yours (as text):</p>"
        f"<p>TOTP secret: <code id=totp-secret>{secret}</code></p>"
        f"<p>or this URI: <code>{html.escape(uri)}</code></p>"
        "<h2>Use a key</h2>"
        f"<pre>curl -H 'Authorization: Bearer kg_...' {html.escape(base)}/v1/projects\n"
        f"curl -X POST -H 'Authorization: Bearer kg_...' {html.escape(base)}/v1/inference</pre>"
    )


async def _form(request: Request, limit: int = 4096) -> dict[str, str]:
    """The urlencoded form, read up to `limit` bytes (a bigger one is refused)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return {}
    fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=8)
    return {name: values[0] for name, values in fields.items()}


async def login(request: Request) -> Response:
    form = await _form(request)
    known = USERS.get(form.get("user", ""))
    given = form.get("password", "").encode()
    if known is None or not hmac.compare_digest(given, known["password"].encode()):
        return _page(_login_form("Wrong user or password."), 401)
    request.session.clear()
    request.session["user"] = form["user"]
    return RedirectResponse("/", 303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", 303)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# -- the API the keys are for ------------------------------------------------------------


async def projects(request: Request) -> Response:
    key = request.user.key  # the calling key (keyguard.asgi.KeyUser)
    return JSONResponse({"owner": key.owner, "projects": ["demo-project"]})


async def inference(request: Request) -> Response:
    return JSONResponse({"output": f"hello from the model, {request.user.key.owner}"})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/health", health),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/v1/projects", projects, methods=["GET", "POST"]),
        Route("/v1/inference", inference, methods=["POST"]),
        Mount(
            "/account/keys",
            admin_app(
                guard,
                authorize=own_keys,
                confirm=step_up,
                scope_descriptions=SCOPES,
                title="Your API keys",
            ),
        ),
        Mount(
            "/ops/keys",
            admin_app(
                guard,
                authorize=operator,
                confirm=step_up,
                scope_descriptions=SCOPES,
                title="API keys: operator console",
            ),
        ),
    ],
    middleware=[
        Middleware(
            SessionMiddleware,
            secret_key=os.environ.get("SESSION_SECRET") or secrets.token_urlsafe(32),
            same_site="lax",
            https_only=False,  # a local demo over http; set True behind TLS
        ),
        Middleware(KeyGuardMiddleware, guard=guard),
    ],
)


def main() -> None:
    import uvicorn

    port = int(os.environ.get("PORT", "8000"))
    print(f"\nSelf-service keys demo: http://127.0.0.1:{port}/", flush=True)
    print("  sign in as alice / alice-demo (own keys) or ops / ops-demo (operator)\n", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
