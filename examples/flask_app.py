"""A Flask app protected by keyguard. Run: python examples/flask_app.py
(after `pip install -e '.[flask]'`); it serves on http://127.0.0.1:5000 (PORT=5001
for another port).

On start it issues a demo key and prints curl lines that work against it. Keys live
in keyguard.db next to this file (SQLite; KEYGUARD_STORE for another store); manage
them with `flask --app examples/flask_app.py keyguard keys list` (the same commands
as `keyguard keys ...`, on this app's settings), from any directory: the path is
absolute.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask

from keyguard import IssuedKey
from keyguard.flask import KeyGuardExtension, current_key, require_scopes

app = Flask(__name__)
# An absolute store path, so the app and `flask --app .../flask_app.py keyguard ...` open
# the same file wherever they are started (a relative sqlite:///keyguard.db would be
# relative to the directory each one runs in). KEYGUARD_STORE, when set, names another.
HERE = Path(__file__).resolve().parent
app.config["KEYGUARD_STORE"] = (
    os.environ.get("KEYGUARD_STORE") or f"sqlite:///{HERE / 'keyguard.db'}"
)
app.config["KEYGUARD"] = {
    "public_paths": ["/health"],
    "rules": [
        {"path": "/v1/chat/*", "methods": ["POST"], "scopes": ["inference"]},
        {"path": "/v1/models*", "methods": ["GET"], "scopes": ["models:read"]},
    ],
}
keyguard = KeyGuardExtension(app)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/models")
def models() -> dict[str, list[str]]:
    return {"models": ["tiny", "small"]}


@app.post("/v1/chat/completions")
def chat() -> dict[str, str]:
    return {"reply": f"hello, {current_key.name}"}


@app.get("/v1/admin/stats")
@require_scopes("admin")
def stats() -> dict[str, int]:
    assert keyguard.guard is not None
    return {"keys": len(keyguard.guard.keys.list())}


def issue_demo_key() -> IssuedKey:
    """A fresh demo key. Earlier demo keys are revoked, so restarting the demo never
    runs into the per-owner key limit (policy.max_keys_per_owner)."""
    guard = keyguard.guard
    assert guard is not None
    for old in guard.keys.list(owner="demo"):
        if old.name.startswith("flask-demo-"):
            guard.keys.revoke(old.id)
    return guard.keys.create(
        owner="demo", name=f"flask-demo-{int(time.time())}", scopes=["inference", "models:read"]
    )


def main() -> None:
    port = int(os.environ.get("PORT", "5000"))
    issued = issue_demo_key()
    base = f"http://127.0.0.1:{port}"
    print(f"\nDemo key (shown once): {issued.token}\n")
    print(f"  curl -H 'Authorization: Bearer {issued.token}' {base}/v1/models")
    print(f"  curl -X POST -H 'X-API-Key: {issued.token}' {base}/v1/chat/completions\n", flush=True)
    app.run(host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
