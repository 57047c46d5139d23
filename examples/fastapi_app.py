"""A FastAPI app protected by keyguard. Run: python examples/fastapi_app.py

On start it issues a demo key, prints curl lines that work against it, then serves
on http://127.0.0.1:8000 (PORT=8001 for another port) until Ctrl-C.
Keys live in ./keyguard.db (SQLite); manage them with `keyguard keys ...`.
"""

from __future__ import annotations

import os
import time

from fastapi import Depends, FastAPI, Security

from keyguard import IssuedKey, KeyGuard, KeyInfo
from keyguard.asgi import KeyGuardMiddleware
from keyguard.fastapi import current_key, require_scopes

# No "store" here: KeyGuard reads KEYGUARD_STORE (and every KEYGUARD_* variable) itself,
# and uses ./keyguard.db when it is unset. A key written in this dict would win over it.
guard = KeyGuard(
    {
        "public_paths": ["/health", "/docs", "/openapi.json"],
        "rules": [
            {"path": "/v1/chat/*", "methods": ["POST"], "scopes": ["inference"]},
            {"path": "/v1/models*", "methods": ["GET"], "scopes": ["models:read"]},
        ],
        "scope_implies": {"admin": ["inference", "models:read"]},
    }
)

app = FastAPI(title="keyguard demo")
app.add_middleware(KeyGuardMiddleware, guard=guard)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/models")
def models() -> dict[str, list[str]]:
    return {"models": ["tiny", "small"]}


@app.post("/v1/chat/completions")
def chat(key: KeyInfo = Depends(current_key)) -> dict[str, str]:
    return {"reply": f"hello, {key.name}"}


@app.get("/v1/me")
def me(key: KeyInfo = Depends(current_key)) -> dict[str, object]:
    return {"id": key.id, "owner": key.owner, "name": key.name, "scopes": list(key.scopes)}


@app.get("/v1/admin/stats")
def stats(key: KeyInfo = Security(require_scopes, scopes=["admin"])) -> dict[str, int]:
    return {"keys": len(guard.keys.list())}


def issue_demo_key() -> IssuedKey:
    """A fresh demo key. Earlier demo keys are revoked, so restarting the demo never
    runs into the per-owner key limit (policy.max_keys_per_owner)."""
    for old in guard.keys.list(owner="demo"):
        if old.name.startswith("demo-"):
            guard.keys.revoke(old.id)
    return guard.keys.create(
        owner="demo", name=f"demo-{int(time.time())}", scopes=["inference", "models:read"]
    )


def main() -> None:
    import uvicorn

    port = int(os.environ.get("PORT", "8000"))
    issued = issue_demo_key()
    base = f"http://127.0.0.1:{port}"
    print(f"\nDemo key (shown once): {issued.token}\n")
    print(f"  curl -H 'Authorization: Bearer {issued.token}' {base}/v1/models")
    print(f"  curl -X POST -H 'X-API-Key: {issued.token}' {base}/v1/chat/completions")
    print(f"  curl -i {base}/v1/models            # 401 problem+json")
    print(f"  curl -i -H 'Authorization: Bearer {issued.token}' {base}/v1/admin/stats   # 403\n")
    print(f"serving on {base} (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
