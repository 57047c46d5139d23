"""The "API Keys" page in a real headless Chromium (Debian `chromium`, driven by Playwright).

A FastAPI app with the KeyGuard middleware and the admin app mounted runs under
uvicorn on a loopback port. The test signs in with an admin key, creates a key
in the page (first hitting the private-IP policy, shown next to the field),
copies the shown secret, calls a protected route with it, edits its scopes and
sees the route's answer change, then deletes it and sees the route refuse it.
Skipped when Chromium or Playwright is missing, unless KEYGUARD_REQUIRE_SERVERS=1.
Set KEYGUARD_SCREENSHOTS=DIR to save screenshots of the page there.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyguard import KeyGuard
from keyguard.admin import admin_app

CHROMIUM = os.environ.get("KEYGUARD_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str) -> None:
    if os.environ.get("KEYGUARD_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (KEYGUARD_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # the tests below import it again only after this fixture ran
        _missing("playwright is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[str, KeyGuard]]:
    import uvicorn
    from fastapi import FastAPI

    from keyguard.asgi import KeyGuardMiddleware

    guard = KeyGuard(
        {
            "store": "memory://",
            "public_paths": [
                "/keys-admin",
                "/keys-admin/*",
            ],  # the admin app checks its own callers
            "rules": [
                {"path": "/v1/reports", "methods": ["GET"], "scopes": ["reports:read"]},
                {"path": "/v1/reports", "methods": ["POST"], "scopes": ["reports:write"]},
            ],
        }
    )
    app = FastAPI()
    app.add_middleware(KeyGuardMiddleware, guard=guard)

    @app.get("/v1/reports")
    def read_reports() -> dict[str, str]:
        return {"reports": "ok"}

    @app.post("/v1/reports")
    def write_report() -> dict[str, str]:
        return {"written": "ok"}

    app.mount(
        "/keys-admin",
        admin_app(guard, scope_choices=["reports:read", "reports:write", "billing"]),
    )
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for start-up (at most ~10 s)
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", guard
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        guard.close()


def _shot(page: Any, name: str) -> None:
    target = os.environ.get("KEYGUARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=False)


def test_create_copy_use_edit_delete(sync_playwright: Any, server: tuple[str, KeyGuard]) -> None:
    from playwright.sync_api import expect

    base, guard = server
    admin = guard.keys.create(owner="ops", name="console", scopes=["keyguard:admin"])
    guard.keys.create(owner="acme", name="nightly-export", scopes=["reports:read"],
                      allowed_ips=["93.184.216.0/24"])  # fmt: skip
    api = httpx.Client(base_url=base, timeout=10)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        context = browser.new_context(
            permissions=["clipboard-read", "clipboard-write"],
            viewport={"width": 1280, "height": 800},
            locale="en-GB",
            timezone_id="UTC",
        )
        context.set_default_timeout(10_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: (
                msg.type == "error"
                and "Failed to load resource" not in msg.text  # a 4xx the page handles
                and errors.append(msg.text)
            ),
        )

        # Sign in, by keyboard.
        page.goto(f"{base}/keys-admin/")
        page.get_by_label("Admin key").fill(admin.token or "")
        _shot(page, "01-sign-in")
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Keys", exact=True).wait_for()
        assert page.get_by_role("row", name="nightly-export").is_visible()

        # Create: the private-IP policy is shown next to the field, then a good key.
        page.get_by_role("button", name="Create key").click()
        dialog = page.get_by_role("dialog", name="Create API key")
        dialog.get_by_label("Owner").fill("acme")
        dialog.get_by_label("Name").fill("ci-bot")
        dialog.get_by_label("reports:read").check()
        dialog.get_by_label("Trusted IPs").fill("10.0.0.0/8")
        dialog.get_by_role("button", name="Create key").click()
        error = page.locator("#c-ips-error")
        error.wait_for()
        assert "private" in error.inner_text()
        assert dialog.get_by_label("Trusted IPs").get_attribute("aria-invalid") == "true"
        _shot(page, "03-policy-error")
        dialog.get_by_label("Trusted IPs").fill("")
        dialog.get_by_role("button", name="Create key").click()

        # The secret, shown once, copied with the button.
        secret_dialog = page.get_by_role("dialog", name="Copy your new key")
        secret_dialog.wait_for()
        assert "only time" in secret_dialog.inner_text()
        token = page.locator("#secret-value").input_value()
        assert token.startswith("kg_")
        secret_dialog.get_by_role("button", name="Copy").click()
        page.get_by_text("Copied to the clipboard.").wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == token
        _shot(page, "04-secret-shown-once")
        secret_dialog.get_by_role("button", name="I have stored it").click()
        secret_dialog.wait_for(state="hidden")
        expect(page.locator("#secret-value")).to_have_value("")
        assert token not in page.content()

        # The key works where its scopes allow, and only there.
        auth = {"authorization": f"Bearer {token}"}
        assert api.get("/v1/reports", headers=auth).status_code == 200
        r = api.post("/v1/reports", headers=auth)
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"

        row = page.get_by_role("row", name="ci-bot")
        assert token[-4:] in row.inner_text() and "reports:read" in row.inner_text()
        _shot(page, "02-key-list")

        # Edit its scopes: the route's answer changes.
        page.get_by_role("button", name="Edit key ci-bot").click()
        edit = page.get_by_role("dialog", name="Edit key ci-bot")
        edit.get_by_label("reports:write").check()
        _shot(page, "05-edit-scopes")
        edit.get_by_role("button", name="Save changes").click()
        page.get_by_text('Key "ci-bot" saved.').wait_for()
        expect(page.get_by_role("row", name="ci-bot")).to_contain_text("reports:write")
        assert api.post("/v1/reports", headers=auth).status_code == 200

        # Delete, with a confirmation step (Escape cancels it).
        page.get_by_role("button", name="Delete key ci-bot").click()
        confirm = page.get_by_role("dialog", name="Delete key ci-bot?")
        confirm.wait_for()
        _shot(page, "06-delete-confirmation")
        page.keyboard.press("Escape")
        confirm.wait_for(state="hidden")
        assert page.get_by_role("row", name="ci-bot").is_visible()
        assert api.get("/v1/reports", headers=auth).status_code == 200
        page.get_by_role("button", name="Delete key ci-bot").click()
        confirm.get_by_role("button", name="Delete key").click()
        page.get_by_text('Key "ci-bot" deleted.').wait_for()
        expect(page.get_by_role("row", name="ci-bot")).to_have_count(0)
        r = api.get("/v1/reports", headers=auth)
        assert r.status_code == 401 and r.json()["code"] == "invalid_key"

        # A narrow screen: rows become cards, everything still reachable.
        page.set_viewport_size({"width": 390, "height": 844})
        expect(page.get_by_role("button", name="Edit key nightly-export")).to_be_visible()
        _shot(page, "07-narrow-screen")

        assert errors == []
        context.close()
        browser.close()
    api.close()
