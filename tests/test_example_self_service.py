"""examples/self_service_app.py started for real, as its docstring says (as a
script and under the uvicorn CLI), on a free port, and used as a person would
over HTTP: sign in with the login form, read the TOTP secret the home page
shows, make a key on the self-service mount confirmed with a code, call the /v1
API with it; the operator mount next to it is for operators only. (The page
itself, in a browser: tests/test_admin_browser.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .kgutil import stop_process
from .test_examples import EXAMPLES, START_TIMEOUT, Lines, _clean_env, free_port, wait_healthy

pyotp = pytest.importorskip("pyotp")
pytest.importorskip("uvicorn")

SCRIPT = [sys.executable, str(EXAMPLES / "self_service_app.py")]
UVICORN = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "self_service_app:app"]


def _log_in(client: httpx.Client, user: str, password: str) -> str:
    """Sign in with the form; the TOTP secret the home page then shows."""
    r = client.post("/login", data={"user": user, "password": password})
    assert r.status_code == 303 and r.headers["location"] == "/"
    home = client.get("/")
    assert f"Signed in as {user}" in home.text
    found = re.search(r"id=totp-secret>([A-Z2-7]+)<", home.text)
    assert found, home.text
    return found[1]


@pytest.mark.parametrize(
    "how", [pytest.param("script", id="python-script"), pytest.param("uvicorn", id="uvicorn-cli")]
)
def test_the_self_service_example_starts_and_serves(tmp_path: Path, how: str) -> None:
    port = free_port()
    env = {**_clean_env(tmp_path), "PORT": str(port)}
    command = (
        SCRIPT if how == "script" else [*UVICORN, "--port", str(port), "--log-level", "warning"]
    )
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = Lines(proc)
    base = f"http://127.0.0.1:{port}"
    try:
        if how == "script":
            out = lines.until(lambda line: "alice / alice-demo" in line, START_TIMEOUT)
            assert f"{base}/" in out
        wait_healthy(base, proc, START_TIMEOUT)
        with (
            httpx.Client(base_url=base, timeout=5) as alice,
            httpx.Client(base_url=base, timeout=5) as ops,
        ):
            # No session: the key pages answer 401 and the page never asks for a key.
            r = alice.get("/account/keys/api/keys")
            assert r.status_code == 401 and r.json()["code"] == "missing_credentials"
            page = alice.get("/account/keys/")
            assert page.status_code == 200 and '"hostAuth": true' in page.text
            assert "nonce-" in page.headers["content-security-policy"]
            assert "Sign in" in alice.get("/").text
            bad = alice.post("/login", data={"user": "alice", "password": "nope"})
            assert bad.status_code == 401 and "Wrong user or password" in bad.text

            secret = _log_in(alice, "alice", "alice-demo")
            scopes = alice.get("/account/keys/api/scopes").json()
            assert [s["name"] for s in scopes["scopes"]] == ["project", "inference"]
            assert scopes["any"] is False and scopes["who"] == "alice"
            assert all(s["description"] for s in scopes["scopes"])

            # A key, confirmed with the current code; refused without one.
            body = {"name": "laptop", "scopes": ["project"]}
            csrf = {"x-requested-with": "test"}
            r = alice.post("/account/keys/api/keys", json=body, headers=csrf)
            assert r.status_code == 401 and r.json()["code"] == "step_up_required"
            code = pyotp.TOTP(secret).now()
            r = alice.post(
                "/account/keys/api/keys", json=body, headers={**csrf, "x-keyguard-confirm": code}
            )
            assert r.status_code == 201, r.text
            token, key = r.json()["token"], r.json()["key"]
            assert key["owner"] == "alice"
            listed = alice.get("/account/keys/api/keys").json()
            assert listed["operator"] is False and [k["id"] for k in listed["keys"]] == [key["id"]]

            # The key calls the API its scopes allow, and only that.
            auth = {"authorization": f"Bearer {token}"}
            r = alice.get("/v1/projects", headers=auth)
            assert r.status_code == 200 and r.json()["owner"] == "alice"
            r = alice.post("/v1/inference", headers=auth)
            assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
            assert alice.get("/v1/projects").status_code == 401

            # The operator console: alice may not; ops sees alice's key.
            r = alice.get("/ops/keys/api/keys")
            assert r.status_code == 403
            _log_in(ops, "ops", "ops-demo")
            listed = ops.get("/ops/keys/api/keys").json()
            assert listed["operator"] is True
            assert [(k["owner"], k["name"]) for k in listed["keys"]] == [("alice", "laptop")]
            assert ops.get("/account/keys/api/keys").json()["keys"] == []  # ops' own: none

            alice.post("/logout")
            assert alice.get("/account/keys/api/keys").status_code == 401
        assert (tmp_path / "keyguard.db").is_file()  # the embedded default, in cwd
    finally:
        stop_process(proc)
        lines.thread.join(timeout=10)  # EOF once the child is gone
        if proc.stdout:
            proc.stdout.close()
