"""A Flask app protected by keyguard. Run: python examples/flask_app.py
(after `pip install -e '.[flask]'`).

On start it issues a demo key and prints curl lines that work against it. Keys live
in ./keyguard.db (SQLite); manage them with `flask --app examples/flask_app.py keyguard
keys list` (the same commands as `keyguard keys ...`, on this app's settings).
"""

from __future__ import annotations

import os
import time

from flask import Flask

from keyguard import IssuedKey
from keyguard.flask import KeyGuardExtension, current_key, require_scopes

app = Flask(__name__)
# No "store" here: keyguard reads KEYGUARD_STORE (and every KEYGUARD_* variable) itself,
# and uses ./keyguard.db when it is unset. Flat app.config["KEYGUARD_STORE"] works too.
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
