"""The "API Keys" page in a real headless Chromium (Debian `chromium`, driven by Playwright).

Two real uvicorn servers on loopback ports, one browser for the module:
- the operator console in key mode: a Starlette app with the KeyGuard
  middleware and `admin_app(guard, confirm=totp_confirm(...))` at /keys-admin,
  signed in with a `keyguard:admin` key;
- examples/self_service_app.py (host mode): its own login form and cookie
  session, the self-service mount /account/keys and the operator mount /ops/keys.

Every change in both is confirmed with a one-time code (step-up); the TOTP
clocks are the tests' own, so each code is fresh without waiting. The tests
assert what is visible (Playwright's visibility, computed styles, bounding
boxes), not only what the DOM holds. Skipped, naming what is missing, when
Playwright or Chromium is not there. KEYGUARD_SCREENSHOTS=DIR saves screenshots
(docs/screenshots/ is made so).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from keyguard import KeyGuard
from keyguard.admin import admin_app, totp_confirm
from keyguard.crypto import generate_master_key

from .kgutil import Clock
from .live import serve_asgi

pyotp = pytest.importorskip("pyotp")

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
OPS_SECRET = pyotp.random_base32()
STEP_UP = "Confirm with a one-time code"


# -- the browser and the servers ----------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        # launch() gives the browser a fresh, throwaway profile (user-data dir)
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        yield b
        b.close()


def _code(clock: Clock, secret: str) -> str:
    """A code the server accepts: the next time step (never one used before)."""
    clock.advance(30)
    return str(pyotp.TOTP(secret).at(clock()))


def _wrong(clock: Clock, secret: str) -> str:
    """Six digits that are no code for the steps the server accepts now."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(clock() + 30 * d) for d in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(123456, 10**6)) if c not in valid)


@dataclass
class Ops:
    """The operator console (key mode) and its guard."""

    base: str
    guard: KeyGuard
    clock: Clock
    api: httpx.Client

    def admin_key(self, name: str = "console") -> tuple[str, str]:
        """(token, key id) of a new `keyguard:admin` key."""
        issued = self.guard.keys.create(owner="ops", name=name, scopes=["keyguard:admin"])
        assert issued.token
        return issued.token, issued.id

    def code(self) -> str:
        return _code(self.clock, OPS_SECRET)

    def wrong(self) -> str:
        return _wrong(self.clock, OPS_SECRET)


@pytest.fixture(scope="module")
def ops(browser: Any) -> Iterator[Ops]:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from keyguard.asgi import KeyGuardMiddleware

    guard = KeyGuard(
        {
            "store": "memory://",
            "public_paths": ["/keys-admin*"],  # the admin app checks its own callers
            "rules": [
                {"path": "/v1/reports", "methods": ["GET"], "scopes": ["reports:read"]},
                {"path": "/v1/reports", "methods": ["POST"], "scopes": ["reports:write"]},
            ],
            "signing": {"master_keys": [generate_master_key()]},
        }
    )
    clock = Clock(1_900_000_000.0)

    async def reports(request: Any) -> JSONResponse:
        return JSONResponse({"reports": "ok"})

    app = Starlette(
        routes=[
            Route("/v1/reports", reports, methods=["GET", "POST"]),
            Mount(
                "/keys-admin",
                admin_app(
                    guard,
                    confirm=totp_confirm(lambda request: OPS_SECRET, clock=clock),
                    scope_choices=["reports:read", "reports:write"],
                    scope_descriptions={
                        "reports:read": "Read reports",
                        "reports:write": "Write reports",
                    },
                ),
            ),
        ]
    )
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    with serve_asgi(app) as base, httpx.Client(base_url=base, timeout=10) as api:
        yield Ops(base, guard, clock, api)
    guard.close()


@dataclass
class Example:
    """examples/self_service_app.py, served for real."""

    base: str
    module: ModuleType
    clock: Clock
    api: httpx.Client

    @property
    def guard(self) -> KeyGuard:
        guard: KeyGuard = self.module.guard
        return guard

    def code(self, user: str) -> str:
        return _code(self.clock, self.module.TOTP_SECRETS[user])

    def wrong(self, user: str) -> str:
        return _wrong(self.clock, self.module.TOTP_SECRETS[user])


@pytest.fixture(scope="module")
def example(browser: Any) -> Iterator[Example]:
    from .test_examples import load_example

    with pytest.MonkeyPatch.context() as env:
        env.setenv("KEYGUARD_STORE", "memory://")
        env.setenv("KEYGUARD_MASTER_KEYS", generate_master_key())  # signing keys offered too
        module = load_example("self_service_app.py")
    clock = Clock(1_900_000_000.0)
    module.step_up.clock = clock  # the tests' own TOTP clock (a public option)
    with serve_asgi(module.app) as base, httpx.Client(base_url=base, timeout=10) as api:
        yield Example(base, module, clock, api)
    module.guard.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context and page; no script error may happen in it."""
    context = browser.new_context(
        permissions=["clipboard-read", "clipboard-write"],
        viewport={"width": 1280, "height": 860},
        locale="en-GB",
        timezone_id="UTC",
    )
    context.set_default_timeout(10_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and "Failed to load resource" not in msg.text  # a 4xx the page handles
            and errors.append(msg.text)
        ),
    )
    yield pg
    context.close()
    assert errors == []


def shot(page: Any, name: str, full_page: bool = False) -> None:
    target = os.environ.get("KEYGUARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=full_page)


# -- what the tests do in the page ----------------------------------------------------


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def sign_in(page: Any, ops: Ops, token: str) -> None:
    page.goto(f"{ops.base}/keys-admin/")
    page.get_by_label("Admin key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="All keys")).to_be_visible()


def log_in(page: Any, ex: Example, user: str) -> None:
    page.goto(f"{ex.base}/")
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(ex.module.USERS[user]["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=f"Signed in as {user}")).to_be_visible()


def step_up(page: Any, code: str) -> Any:
    """Answer the one-time code prompt; returns the dialog."""
    dialog = page.get_by_role("dialog", name=STEP_UP)
    expect(dialog).to_be_visible()
    dialog.get_by_label("One-time code").fill(code)
    dialog.get_by_role("button", name="Confirm").click()
    return dialog


def confirmed(page: Any, code: str) -> None:
    expect(step_up(page, code)).to_be_hidden()


def row(page: Any, key_id: str) -> Any:
    return page.locator(f'tr[data-key-id="{key_id}"]')


def add_ip(dialog: Any, ip: str) -> None:
    dialog.get_by_label("Add an IP address or CIDR range").fill(ip)
    dialog.get_by_role("button", name="Add", exact=True).click()
    expect(dialog.locator(f'.chip[data-ip="{ip}"]')).to_be_visible()


def take_secret(page: Any, label: str) -> str:
    """The value shown once in the secret dialog ("API key", "Access key",
    "Secret"), copied with its button: the clipboard then holds exactly it."""
    dialog = page.locator("#secret-dialog")
    box = dialog.get_by_label(label, exact=True)
    expect(box).to_be_visible()
    value = str(box.input_value())
    what = label if label == "API key" else label.lower()
    dialog.get_by_role("button", name=f"Copy {what}").click()
    expect(dialog.locator("#copy-status")).to_have_text(f"Copied the {what} to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == value
    return value


def close_secret(page: Any, *secrets: str) -> None:
    """'I have stored it': the dialog goes, and the secret leaves the page."""
    dialog = page.locator("#secret-dialog")
    dialog.get_by_role("button", name="I have stored it").click()
    expect(dialog).to_be_hidden()
    values = page.eval_on_selector_all("input.secret", "els => els.map(e => e.value)")
    assert values == ["", "", ""]
    html = page.content()
    assert all(s not in html for s in secrets)
    assert (
        page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage)").count("kg_")
        <= 1
    )  # at most the admin key the operator signed in with (key mode), never a new one
    assert all(s not in page.url for s in secrets)


def shown(page: Any, selector: str) -> bool:
    """Visible to a person: laid out, with a box (not just present in the DOM)."""
    return bool(
        page.eval_on_selector(
            selector,
            "e => getComputedStyle(e).display !== 'none' && e.getClientRects().length > 0",
        )
    )


LAYOUT_PROBLEMS = """(sel) => {
  const W = document.documentElement.clientWidth;
  const out = [];
  const text = (e) => (e.id || e.tagName) + ' ' + (e.textContent || '').trim().slice(0, 30);
  const wide = document.documentElement.scrollWidth;
  if (wide > W) out.push('the page scrolls sideways: ' + wide);
  // in table layout (wide screens) the table may scroll inside its box; as cards it may not
  const cards = getComputedStyle(document.querySelector('thead')).position === 'absolute';
  for (const e of document.querySelectorAll(sel)) {
    if (!e.getClientRects().length || getComputedStyle(e).visibility === 'hidden') continue;
    if (e.closest('.sr-only') || (e.closest('.table-wrap') && !cards)) continue;
    const r = e.getBoundingClientRect();
    if (r.left < -0.5 || r.right > W + 0.5) out.push('cut off: ' + text(e) + ' ' + r.right);
  }
  // controls side by side must not overlap
  const groups = '.row-actions, .actions, .buttons, .copyrow, .addrow, .bar, .toolbar, .chips';
  for (const group of document.querySelectorAll(groups)) {
    const kids = [...group.children].filter((e) => e.getClientRects().length);
    kids.forEach((x, i) => kids.slice(i + 1).forEach((y) => {
      const a = x.getBoundingClientRect(), b = y.getBoundingClientRect();
      const apart = a.right <= b.left + 0.5 || b.right <= a.left + 0.5
        || a.bottom <= b.top + 0.5 || b.bottom <= a.top + 0.5;
      if (!apart) out.push('overlap: ' + text(x) + ' / ' + text(y));
    }));
  }
  return out;
}"""
FITS = "button, input, select, h1, h2, td > div, .tag, .chip, label, p"


def layout_problems(page: Any, scope: str = "") -> list[str]:
    selector = ", ".join(f"{scope} {s}".strip() for s in FITS.split(", "))
    problems: list[str] = page.evaluate(LAYOUT_PROBLEMS, selector)
    return problems


# -- the operator console (key mode) ---------------------------------------------------------


def test_operator_console_every_flow(page: Any, ops: Ops) -> None:
    guard, api = ops.guard, ops.api
    token, _ = ops.admin_key()
    nightly = guard.keys.create(
        owner="acme", name="nightly-export", scopes=["reports:read"],
        allowed_ips=["93.184.216.0/24"],
    )  # fmt: skip
    guard.keys.create(owner="globex", name="globex-sync", scopes=["reports:read"])

    page.goto(f"{ops.base}/keys-admin/")
    expect(page.get_by_label("Admin key")).to_be_visible()
    page.get_by_label("Admin key").fill(token)
    shot(page, "01-sign-in")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="All keys")).to_be_visible()

    # The operator console: owner column and filter, every key with its id.
    expect(page.locator("#whoami")).to_have_text(re.compile(r"Signed in as key:\w+ operator"))
    expect(page.get_by_role("columnheader", name="Owner")).to_be_visible()
    expect(page.locator("#owner-filter")).to_be_visible()
    r = row(page, nightly.id)
    expect(r).to_be_visible()
    for text in (nightly.id, nightly.info.hint, "acme", "Bearer token", "93.184.216.0/24",
                 "reports:read", "never", "Active"):  # fmt: skip
        expect(r).to_contain_text(text)
    page.locator("#owner-filter").fill("globex")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(page.locator("#rows")).to_contain_text("globex-sync")
    page.locator("#owner-filter").fill("")
    expect(page.locator("#rows tr")).to_have_count(3)

    # Create a bearer key: a private IP is refused, with the policy shown where it is.
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create API key")
    expect(dialog.get_by_label("Owner")).to_be_visible()
    dialog.get_by_label("Owner").fill("acme")
    dialog.get_by_label("Name").fill("ci-bot")
    dialog.get_by_role("checkbox", name="reports:read").check()
    expect(dialog.get_by_text("Read reports")).to_be_visible()  # the scope's description
    expect(dialog.get_by_label("Other scopes")).to_be_visible()  # an operator may grant any
    add_ip(dialog, "10.0.0.0/8")
    dialog.get_by_label("Expires").select_option("never")
    dialog.get_by_role("button", name="Create key").click()
    # (a refused setting is answered before any code is asked: none is used up)
    error = dialog.locator("#c-ips-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("allowed_ips")
    expect(error).to_contain_text("'10.0.0.0/8' is a private, loopback or link-local range")
    expect(dialog.locator("#c-ips-policy")).to_be_visible()
    expect(dialog.locator("#c-ips-policy")).to_contain_text("allow_private_ips")
    expect(dialog.locator('.chip.bad[data-ip="10.0.0.0/8"]')).to_be_visible()
    assert [k.name for k in guard.keys.list(owner="acme")] == ["nightly-export"]
    dialog.locator("#c-ips-policy").scroll_into_view_if_needed()
    shot(page, "03-policy-error")
    dialog.get_by_role("button", name="Remove 10.0.0.0/8").click()
    # Without trusted IPs "never" means the policy's 90 days, and the page says so.
    note = dialog.locator("#c-expiry-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("this key will expire in 90 days")
    add_ip(dialog, "203.0.113.0/24")
    expect(note).to_contain_text("does not apply")
    dialog.get_by_label("Rate limit", exact=True).select_option("60/minute")

    # Step-up: a wrong code is refused (nothing created) and asked again.
    dialog.get_by_role("button", name="Create key").click()
    prompt = step_up(page, ops.wrong())
    expect(prompt.locator("#stepup-error")).to_be_visible()
    expect(prompt.locator("#stepup-error")).to_contain_text("not accepted")
    expect(prompt.get_by_label("One-time code")).to_have_value("")
    assert [k.name for k in guard.keys.list(owner="acme")] == ["nightly-export"]
    shot(page, "09-step-up")
    confirmed(page, ops.code())

    # The token, shown once, copied with the button; gone when the dialog closes.
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_visible()
    expect(page.locator("#secret-warning")).to_contain_text("only time")
    expect(page.locator("#secret-access-row")).to_be_hidden()
    bearer = take_secret(page, "API key")
    assert bearer.startswith("kg_")
    shot(page, "04-secret-shown-once")
    close_secret(page, bearer)
    (ci,) = [k for k in guard.keys.list(owner="acme") if k.name == "ci-bot"]
    assert ci.allowed_ips == ("203.0.113.0/24",) and ci.expires_at is None
    assert ci.rate_limit == "60/minute"
    expect(row(page, ci.id)).to_contain_text("203.0.113.0/24")

    # Create a signing key with a passphrase (the confirmation must match).
    page.get_by_role("button", name="Create key").click()
    dialog.get_by_label("Owner").fill("acme")
    dialog.get_by_label("Name").fill("exchange-bot")
    dialog.get_by_role("radio", name=re.compile("Signing key")).check()
    expect(dialog.locator("#c-passphrase-rules")).to_contain_text("8 to 256 characters")
    expect(dialog.locator("#c-passphrase-rules")).to_contain_text("KG-PASSPHRASE")
    dialog.locator("#c-passphrase").fill("short")
    dialog.get_by_role("button", name="Create key").click()
    expect(dialog.locator("#c-passphrase-error")).to_contain_text("8 to 256 characters")
    dialog.locator("#c-passphrase").fill("correct horse battery")
    dialog.get_by_label("Confirm passphrase").fill("correct horse batteyr")
    dialog.get_by_role("button", name="Create key").click()
    expect(dialog.locator("#c-passphrase2-error")).to_contain_text("differ")
    dialog.get_by_label("Confirm passphrase").fill("correct horse battery")
    dialog.get_by_role("button", name="Create key").click()
    confirmed(page, ops.code())
    expect(page.get_by_role("dialog", name="Copy your new signing key")).to_be_visible()
    expect(page.locator("#secret-token-row")).to_be_hidden()
    access = take_secret(page, "Access key")
    secret = take_secret(page, "Secret")
    expect(page.locator("#secret-usage")).to_contain_text("passphrase")
    shot(page, "10-signing-key-secret")
    close_secret(page, secret)
    signing = guard.keys.get(access)
    assert signing.kind == "signing" and signing.has_passphrase and signing.name == "exchange-bot"
    expect(row(page, access)).to_contain_text("Signing key · passphrase")

    # The bearer key works where its scopes allow, and the page shows its last use.
    auth = {"authorization": f"Bearer {bearer}"}
    key_row = row(page, ci.id)
    r = api.get("/v1/reports", headers=auth)  # from 127.0.0.1: not a trusted IP of this key
    assert r.status_code == 403 and r.json()["code"] == "ip_not_allowed"
    page.get_by_role("button", name="Edit key ci-bot").click()
    edit = page.get_by_role("dialog", name="Edit key ci-bot")
    edit.get_by_role("button", name="Remove 203.0.113.0/24").click()
    edit.get_by_role("checkbox", name="reports:write").check()
    shot(page, "05-edit-scopes")
    edit.get_by_role("button", name="Save changes").click()
    confirmed(page, ops.code())
    expect(page.locator("#status")).to_have_text('Key "ci-bot" saved.')
    expect(key_row).to_contain_text("reports:write")
    expect(key_row).to_contain_text("any address")
    assert api.post("/v1/reports", headers=auth).status_code == 200
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#status")).to_have_text("Up to date.")
    expect(key_row.locator('[data-label="Last used"]')).to_contain_text("from 127.0.0.1")

    # Edit the IPs back, one by one.
    page.get_by_role("button", name="Edit key ci-bot").click()
    add_ip(edit, "198.51.100.7")
    add_ip(edit, "2001:db8::/48")
    edit.get_by_role("button", name="Save changes").click()
    confirmed(page, ops.code())
    expect(key_row).to_contain_text("198.51.100.7/32")
    assert guard.keys.get(ci.id).allowed_ips == ("198.51.100.7/32", "2001:db8::/48")
    page.get_by_role("button", name="Edit key ci-bot").click()
    edit.get_by_role("button", name="Remove 198.51.100.7/32").click()
    edit.get_by_role("button", name="Remove 2001:db8::/48").click()
    edit.get_by_role("button", name="Save changes").click()
    confirmed(page, ops.code())
    expect(key_row).to_contain_text("any address")

    # Rotate with grace: a new token shown once, the old one works for the grace time.
    page.get_by_role("button", name="Rotate key ci-bot").click()
    rotate = page.get_by_role("dialog", name="Rotate key ci-bot?")
    expect(rotate.get_by_label("Old key keeps working for")).to_be_visible()
    rotate.get_by_label("Old key keeps working for").select_option("1h")
    rotate.get_by_role("button", name="Rotate key").click()
    confirmed(page, ops.code())
    expect(page.get_by_role("dialog", name="Copy the rotated key")).to_be_visible()
    rotated = take_secret(page, "API key")
    close_secret(page, rotated)
    assert rotated != bearer
    expect(page.locator("#status")).to_contain_text("the old one works for 1 hour")
    for t in (bearer, rotated):
        assert api.get("/v1/reports", headers={"authorization": f"Bearer {t}"}).status_code == 200
    auth = {"authorization": f"Bearer {rotated}"}

    # Suspend, resume.
    page.get_by_role("button", name="Suspend key ci-bot").click()
    suspend = page.get_by_role("dialog", name="Suspend key ci-bot?")
    expect(suspend.get_by_label("Old key keeps working for")).to_be_hidden()
    suspend.get_by_role("button", name="Suspend key").click()
    confirmed(page, ops.code())
    expect(key_row.locator(".status")).to_have_text("Suspended")
    expect(page.get_by_role("button", name="Resume key ci-bot")).to_be_visible()
    r = api.get("/v1/reports", headers=auth)
    assert r.status_code == 401 and r.json()["code"] == "suspended_key"
    page.get_by_role("button", name="Resume key ci-bot").click()
    confirmed(page, ops.code())
    expect(key_row.locator(".status")).to_have_text("Active")
    assert api.get("/v1/reports", headers=auth).status_code == 200

    # Revoke: gone from the list, listed as revoked with "Show revoked keys".
    page.get_by_role("button", name="Revoke key ci-bot").click()
    page.get_by_role("dialog", name="Revoke key ci-bot?").get_by_role(
        "button", name="Revoke key"
    ).click()
    confirmed(page, ops.code())
    expect(page.locator("#status")).to_have_text('Key "ci-bot" revoked.')
    expect(key_row).to_have_count(0)
    r = api.get("/v1/reports", headers=auth)
    assert r.status_code == 401 and r.json()["code"] == "revoked_key"
    page.get_by_label("Show revoked keys").check()
    expect(key_row.locator(".status")).to_have_text("Revoked")
    expect(key_row.get_by_role("button")).to_have_text(["Delete"])

    # The key list, as an operator sees it.
    shot(page, "02-key-list")

    # Delete, with a confirmation (Escape cancels it; cancelling the code changes nothing).
    page.get_by_role("button", name="Delete key ci-bot").click()
    delete = page.get_by_role("dialog", name="Delete key ci-bot?")
    expect(delete).to_be_visible()
    expect(delete).to_contain_text(ci.id)
    expect(delete.get_by_label("Old key keeps working for")).to_be_hidden()
    shot(page, "06-delete-confirmation")
    page.keyboard.press("Escape")
    expect(delete).to_be_hidden()
    expect(key_row).to_be_visible()
    page.get_by_role("button", name="Delete key ci-bot").click()
    delete.get_by_role("button", name="Delete key").click()
    prompt = page.get_by_role("dialog", name=STEP_UP)
    expect(prompt).to_be_visible()
    prompt.get_by_role("button", name="Cancel").click()
    expect(delete.locator("#confirm-error")).to_have_text("Not confirmed, so nothing was changed.")
    assert guard.keys.get(ci.id).id == ci.id
    delete.get_by_role("button", name="Delete key").click()
    confirmed(page, ops.code())
    expect(page.locator("#status")).to_have_text('Key "ci-bot" deleted.')
    expect(key_row).to_have_count(0)
    assert ci.id not in {k.id for k in guard.keys.list(include_revoked=True)}


def test_hidden_fields_stay_hidden(page: Any, ops: Ops) -> None:
    """The grace field only on rotate; `[hidden]` wins over every display rule."""
    token, key_id = ops.admin_key("hidden-check")
    sign_in(page, ops, token)
    dialog = page.locator("#confirm-dialog")
    for action, grace in (("Rotate", True), ("Suspend", False), ("Revoke", False),
                          ("Delete", False), ("Rotate", True), ("Delete", False)):  # fmt: skip
        row(page, key_id).get_by_role("button", name=f"{action} key hidden-check").click()
        expect(dialog).to_be_visible()
        assert shown(page, "#grace-wrap") is grace, action
        assert page.get_by_label("Old key keeps working for").is_visible() is grace, action
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
    # every element the page hides is really not shown, whatever its class
    leaks = page.eval_on_selector_all(
        "[hidden]",
        "els => els.filter(e => getComputedStyle(e).display !== 'none').map(e => e.id)",
    )
    assert leaks == []


@pytest.mark.parametrize(
    ("options", "says", "code"),
    [
        pytest.param(
            {"allowed_ips": ["93.184.216.0/24"]},
            "This API key may not be used from this address.",
            "ip_not_allowed",
            id="ip-not-allowed",
        ),
        pytest.param(
            {"scopes": ["reports:read"]},
            "lacks a scope",
            "insufficient_scope: needs keyguard:admin",
            id="not-an-admin-key",
        ),
    ],
)
def test_a_refused_key_is_told_why(
    page: Any, ops: Ops, options: dict[str, Any], says: str, code: str
) -> None:
    scopes = options.pop("scopes", ["keyguard:admin"])
    issued = ops.guard.keys.create(owner="ops", name="refused", scopes=scopes, **options)
    page.goto(f"{ops.base}/keys-admin/")
    page.get_by_label("Admin key").fill(issued.token or "")
    page.get_by_role("button", name="Sign in").click()
    notice = page.locator("#signin-error")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(says)
    expect(notice).to_contain_text(code)
    if code == "ip_not_allowed":
        expect(notice).not_to_contain_text("keyguard:admin")
    expect(page.get_by_label("Admin key")).to_be_visible()


@pytest.mark.parametrize("action", ["Revoke", "Suspend", "Delete"])
def test_changing_the_key_you_signed_in_with_says_what_happened(
    page: Any, ops: Ops, action: str
) -> None:
    token, key_id = ops.admin_key(f"own-{action.lower()}")
    sign_in(page, ops, token)
    own = row(page, key_id)
    expect(own.locator(".badge")).to_have_text("this session")
    own.get_by_role("button", name=f"{action} key own-{action.lower()}").click()
    dialog = page.get_by_role("dialog", name=re.compile(f"{action} key"))
    expect(dialog.locator("#confirm-own")).to_be_visible()
    expect(dialog.locator("#confirm-own")).to_contain_text("signs you out")
    dialog.get_by_role("button", name=f"{action} key").click()
    confirmed(page, ops.code())
    notice = page.locator("#signin-error")
    expect(notice).to_be_visible()
    verb = {"Revoke": "revoked", "Suspend": "suspended", "Delete": "deleted"}[action]
    expect(notice).to_contain_text(f"You {verb} the key you were signed in with")
    expect(notice).to_contain_text(key_id)
    expect(page.get_by_label("Admin key")).to_be_visible()
    expect(page.locator("#keys")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    if action == "Revoke":
        shot(page, "13-own-key-revoked")


def test_rotating_the_key_you_signed_in_with_keeps_you_signed_in(page: Any, ops: Ops) -> None:
    token, key_id = ops.admin_key("own-rotate")
    sign_in(page, ops, token)
    row(page, key_id).get_by_role("button", name="Rotate key own-rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate key own-rotate?")
    expect(dialog.locator("#confirm-own")).to_contain_text("switches to the new one")
    dialog.get_by_label("Old key keeps working for").select_option("0")
    dialog.get_by_role("button", name="Rotate key").click()
    confirmed(page, ops.code())
    new = take_secret(page, "API key")
    close_secret(page, new)
    assert page.evaluate("sessionStorage.getItem('keyguard-admin-key')") == new
    page.get_by_role("button", name="Refresh").click()  # the old token is dead; the page goes on
    expect(page.locator("#status")).to_have_text("Up to date.")
    expect(row(page, key_id).locator(".badge")).to_have_text("this session")
    r = ops.api.get("/keys-admin/api/keys", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_operator_console_on_a_narrow_screen(page: Any, ops: Ops) -> None:
    token, _ = ops.admin_key("narrow-console")
    ops.guard.keys.create(
        owner="a-rather-long-owner-name@example.com", name="a-key-with-a-long-name-for-phones",
        scopes=["reports:read", "reports:write"], allowed_ips=["2001:db8:1234:5678::/64"],
    )  # fmt: skip
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, ops, token)
    assert page.evaluate("document.documentElement.clientWidth") == 375
    edit = page.get_by_role("button", name="Edit key a-key-with-a-long-name-for-phones")
    expect(edit).to_be_visible()
    assert layout_problems(page) == []
    # Rows are cards: each cell's label beside its value, inside the screen.
    card = page.locator("#rows tr").first
    box = card.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.locator("#owner-filter").fill("a-rather-long-owner-name@example.com")
    expect(page.locator("#rows tr")).to_have_count(1)
    assert layout_problems(page) == []
    shot(page, "07-narrow-screen", full_page=True)
    page.locator("#owner-filter").fill("")
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create API key")
    expect(dialog).to_be_visible()
    box = dialog.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert layout_problems(page, "#create-dialog") == []
    dialog.get_by_label("Owner").fill("acme")
    dialog.get_by_label("Name").fill("phone")
    dialog.get_by_role("button", name="Create key").click()
    confirmed(page, ops.code())
    secret = page.get_by_role("dialog", name="Copy your new key")
    expect(secret).to_be_visible()
    copy = secret.get_by_role("button", name="Copy API key")
    expect(copy).to_be_in_viewport()
    assert layout_problems(page, "#secret-dialog") == []
    close_secret(page, take_secret(page, "API key"))
    # the check sees what a person would: two controls on top, one pushed off the screen
    # (the CSP allows no new style sheet; the CSSOM is fine)
    page.evaluate("() => { const b = document.getElementById('new-key').style;"
                  " b.position = 'relative'; b.left = '-40px'; }")  # fmt: skip
    problems = layout_problems(page)
    assert any(p.startswith("overlap: refresh") for p in problems), problems
    page.evaluate("() => { document.getElementById('refresh').style.width = '420px'; }")
    problems = layout_problems(page)
    assert any(p.startswith("cut off: refresh") for p in problems), problems


# -- self-service: the example app, its own login (host mode) ---------------------------------


def test_host_mode_without_a_session_never_asks_for_a_key(page: Any, example: Example) -> None:
    for path in ("/account/keys/", "/ops/keys/"):
        page.goto(example.base + path)
        expect(page.get_by_role("heading", name="Sign in to manage your API keys")).to_be_visible()
        expect(page.locator("#host-signin-text")).to_contain_text("Sign in to the app first")
        expect(page.locator("#host-signin-error")).to_contain_text("missing_credentials")
        assert page.locator("#admin-key").count() == 0
        assert page.locator("input:visible").count() == 0
        expect(page.get_by_text("admin key", exact=False)).to_have_count(0)
        expect(page.locator("#keys")).to_be_hidden()
    shot(page, "11-host-sign-in")


def test_self_service_every_flow(page: Any, example: Example) -> None:
    guard, api = example.guard, example.api
    theirs = guard.keys.create(owner="ops", name="ops-only", scopes=["project"])
    log_in(page, example, "alice")
    secret_text = page.locator("#totp-secret").inner_text()
    assert secret_text == example.module.TOTP_SECRETS["alice"]  # shown as text
    page.get_by_role("link", name="Your API keys").click()
    expect(page.get_by_role("heading", name="Your keys", exact=True)).to_be_visible()

    # Self-service: who is signed in, no owner anywhere, only the user's own keys.
    expect(page.locator("#whoami")).to_have_text(re.compile("Signed in as alice"))
    expect(page.locator("#whoami")).to_be_visible()
    expect(page.get_by_role("columnheader", name="Owner")).to_be_hidden()
    assert not shown(page, "#th-owner") and not shown(page, "#owner-filter-wrap")
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.get_by_text("No keys yet")).to_be_visible()
    expect(row(page, theirs.id)).to_have_count(0)

    # Create: the grantable scopes as checkboxes with their descriptions, nothing else.
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create API key")
    expect(dialog).to_be_visible()
    assert not shown(page, "#c-owner-wrap")
    expect(dialog.get_by_label("Owner")).to_be_hidden()
    boxes = dialog.get_by_role("checkbox")
    expect(boxes).to_have_count(2)
    assert [b.get_attribute("value") for b in boxes.all()] == ["project", "inference"]
    for text in example.module.SCOPES.values():
        expect(dialog.get_by_text(text)).to_be_visible()
    expect(dialog.get_by_label("Other scopes")).to_be_hidden()
    dialog.get_by_label("Name").fill("laptop")
    dialog.get_by_role("checkbox", name="project").check()
    shot(page, "12-self-service-create")
    dialog.get_by_role("button", name="Create key").click()
    prompt = step_up(page, example.wrong("alice"))
    expect(prompt.locator("#stepup-error")).to_be_visible()
    assert guard.keys.list(owner="alice") == []  # nothing changed meanwhile
    confirmed(page, example.code("alice"))
    token = take_secret(page, "API key")
    close_secret(page, token)
    (laptop,) = guard.keys.list(owner="alice")
    assert laptop.scopes == ("project",) and laptop.owner == "alice"
    auth = {"authorization": f"Bearer {token}"}
    r = api.get("/v1/projects", headers=auth)
    assert r.status_code == 200 and r.json()["owner"] == "alice"
    assert api.post("/v1/inference", headers=auth).status_code == 403
    laptop_row = row(page, laptop.id)
    expect(laptop_row).to_contain_text(laptop.id)
    expect(page.locator("#mode-note")).to_contain_text("one-time code")

    # Edit: add inference; the key can then call it.
    page.get_by_role("button", name="Edit key laptop").click()
    edit = page.get_by_role("dialog", name="Edit key laptop")
    expect(edit.get_by_role("checkbox", name="project")).to_be_checked()
    edit.get_by_role("checkbox", name="inference").check()
    add_ip(edit, "192.168.1.0/24")
    edit.get_by_role("button", name="Save changes").click()  # refused before a code is asked
    expect(edit.locator("#e-ips-error")).to_contain_text("private")
    expect(edit.locator("#e-ips-policy")).to_be_visible()
    assert guard.keys.get(laptop.id).scopes == ("project",)  # refused: nothing changed
    edit.get_by_role("button", name="Remove 192.168.1.0/24").click()
    edit.get_by_role("button", name="Save changes").click()
    confirmed(page, example.code("alice"))
    expect(laptop_row).to_contain_text("inference")
    assert api.post("/v1/inference", headers=auth).status_code == 200

    # A signing key (the example sets a master key here).
    page.get_by_role("button", name="Create key").click()
    dialog.get_by_label("Name").fill("signer")
    dialog.get_by_role("radio", name=re.compile("Signing key")).check()
    dialog.get_by_role("checkbox", name="inference").check()
    dialog.get_by_role("button", name="Create key").click()
    confirmed(page, example.code("alice"))
    access = take_secret(page, "Access key")
    close_secret(page, take_secret(page, "Secret"))
    assert guard.keys.get(access).kind == "signing"

    # Rotate, suspend, resume, revoke, delete: each confirmed with a code.
    page.get_by_role("button", name="Rotate key laptop").click()
    page.get_by_role("dialog", name="Rotate key laptop?").get_by_label(
        "Old key keeps working for"
    ).select_option("0")
    page.get_by_role("button", name="Rotate key", exact=True).click()
    confirmed(page, example.code("alice"))
    rotated = take_secret(page, "API key")
    close_secret(page, rotated)
    assert api.get("/v1/projects", headers=auth).status_code == 401
    auth = {"authorization": f"Bearer {rotated}"}
    assert api.get("/v1/projects", headers=auth).status_code == 200

    page.get_by_role("button", name="Suspend key laptop").click()
    page.get_by_role("button", name="Suspend key", exact=True).click()
    confirmed(page, example.code("alice"))
    expect(laptop_row.locator(".status")).to_have_text("Suspended")
    assert api.get("/v1/projects", headers=auth).json()["code"] == "suspended_key"
    page.get_by_role("button", name="Resume key laptop").click()
    step_up(page, example.wrong("alice"))
    expect(page.locator("#stepup-error")).to_be_visible()
    confirmed(page, example.code("alice"))
    expect(laptop_row.locator(".status")).to_have_text("Active")
    assert api.get("/v1/projects", headers=auth).status_code == 200
    shot(page, "08-self-service")

    page.get_by_role("button", name="Revoke key laptop").click()
    page.get_by_role("button", name="Revoke key", exact=True).click()
    confirmed(page, example.code("alice"))
    expect(laptop_row).to_have_count(0)
    assert api.get("/v1/projects", headers=auth).json()["code"] == "revoked_key"
    page.get_by_label("Show revoked keys").check()
    page.get_by_role("button", name="Delete key laptop").click()
    page.get_by_role("button", name="Delete key", exact=True).click()
    confirmed(page, example.code("alice"))
    expect(laptop_row).to_have_count(0)
    assert [k.name for k in guard.keys.list(owner="alice", include_revoked=True)] == ["signer"]
    assert guard.keys.get(theirs.id).status() == "active"  # another owner's key: untouched

    # The same user on the operator console: not an operator, told so, no key prompt.
    page.goto(f"{example.base}/ops/keys/")
    expect(page.locator("#host-signin-text")).to_contain_text("may not manage")
    assert page.locator("#admin-key").count() == 0


def test_example_operator_console_sees_every_owner(page: Any, example: Example) -> None:
    mine = example.guard.keys.create(owner="alice", name="alice-for-ops", scopes=["project"])
    log_in(page, example, "ops")
    page.get_by_role("link", name="Operator console").click()
    expect(page.locator("#whoami")).to_have_text(re.compile("Signed in as ops operator"))
    expect(page.get_by_role("columnheader", name="Owner")).to_be_visible()
    expect(row(page, mine.id)).to_contain_text("alice")
    row(page, mine.id).get_by_role("button", name="Suspend").click()
    page.get_by_role("button", name="Suspend key", exact=True).click()
    confirmed(page, example.code("ops"))
    expect(row(page, mine.id).locator(".status")).to_have_text("Suspended")
    assert example.guard.keys.get(mine.id).status() == "suspended"


def test_self_service_on_a_narrow_screen(page: Any, example: Example) -> None:
    example.guard.keys.create(owner="alice", name="phone-key", scopes=["project", "inference"])
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, example, "alice")
    page.goto(f"{example.base}/account/keys/")
    expect(page.get_by_role("button", name="Edit key phone-key")).to_be_visible()
    assert layout_problems(page) == []
    shot(page, "14-narrow-self-service", full_page=True)
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create API key")
    expect(dialog).to_be_visible()
    assert layout_problems(page, "#create-dialog") == []
    dialog.get_by_label("Name").fill("tiny")
    dialog.get_by_role("button", name="Create key").click()
    prompt = page.get_by_role("dialog", name=STEP_UP)
    expect(prompt).to_be_visible()
    box = prompt.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert layout_problems(page, "#stepup-dialog") == []
    confirmed(page, example.code("alice"))
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_visible()
    assert layout_problems(page, "#secret-dialog") == []
    close_secret(page, take_secret(page, "API key"))


def test_self_service_offers_no_resume_of_an_operators_suspension(
    page: Any, example: Example
) -> None:
    """A key an operator suspended shows so on the self-service page, without a
    Resume button (the API would refuse it); the owner's own suspension keeps it.
    An operator who takes a suspension over meanwhile: the page tells the refusal
    before any code is asked, and the key stays suspended."""
    guard = example.guard
    held = guard.keys.create(owner="alice", name="held-by-ops", scopes=["project"])
    guard.keys.suspend(held.id)  # an operator's (Python, as the CLI)
    own = guard.keys.create(owner="alice", name="paused-by-me", scopes=["project"])
    guard.keys.suspend(own.id, by_owner=True)
    try:
        log_in(page, example, "alice")
        page.goto(f"{example.base}/account/keys/")
        expect(row(page, held.id).locator(".status")).to_have_text("Suspended")
        expect(row(page, held.id).locator(".suspended-by")).to_have_text(
            "by an operator: only an operator can resume it"
        )
        expect(page.get_by_role("button", name="Resume key held-by-ops")).to_have_count(0)
        expect(page.get_by_role("button", name="Suspend key held-by-ops")).to_have_count(0)
        expect(page.get_by_role("button", name="Edit key held-by-ops")).to_be_visible()
        expect(row(page, own.id).locator(".suspended-by")).to_have_text("by you")
        resume = page.get_by_role("button", name="Resume key paused-by-me")
        expect(resume).to_be_visible()
        guard.keys.suspend(own.id)  # an operator takes it over after the page loaded
        resume.click()
        expect(page.locator("#status")).to_contain_text("only an operator can resume it")
        expect(page.get_by_role("dialog", name=STEP_UP)).to_be_hidden()  # no code asked
        assert guard.keys.get(own.id).suspended_by == "operator"
        expect(page.get_by_role("button", name="Resume key paused-by-me")).to_have_count(0)

        # The operator console offers Resume, and says whose suspension it is.
        page.goto(f"{example.base}/")
        page.get_by_role("button", name="Sign out").click()
        log_in(page, example, "ops")
        page.goto(f"{example.base}/ops/keys/")
        expect(row(page, held.id).locator(".suspended-by")).to_have_text("by an operator")
        page.get_by_role("button", name="Resume key held-by-ops").click()
        confirmed(page, example.code("ops"))
        expect(row(page, held.id).locator(".status")).to_have_text("Active")
        assert guard.keys.get(held.id).status() == "active"
    finally:
        for key in (held, own):
            guard.keys.delete(key.id)
