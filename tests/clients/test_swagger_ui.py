"""Swagger UI in a real headless Chromium (Debian `chromium`, driven by
Playwright) against a FastAPI app behind keyguard under uvicorn.

The route under test is guarded only by the middleware's `rules` (no
dependency of its own), so Swagger UI knows it needs a key only from what
`keyguard.fastapi` adds to the schema. The test authorizes with a key in the
docs page's Authorize dialog, uses Try it out on that route and sees a 200
(and a 401 before authorizing). Swagger UI's assets come from the npm registry
package `swagger-ui-dist`, fetched with `npm pack` into a temp dir and served
by the app itself (no CDN). Skipped with the reason when Chromium, Playwright
or npm is missing, unless KEYGUARD_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware

from .live import serve

CHROMIUM = os.environ.get("KEYGUARD_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SWAGGER_UI = "swagger-ui-dist@5"


def _missing(reason: str) -> None:
    if os.environ.get("KEYGUARD_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (KEYGUARD_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def swagger_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swagger-ui-dist's files, from the npm registry (`npm pack`, bounded to 120 s)."""
    npm = shutil.which("npm")
    if npm is None:
        _missing("npm is not installed (needed to fetch swagger-ui-dist)")
    where = tmp_path_factory.mktemp("swagger-ui")
    try:
        done = subprocess.run(  # noqa: S603
            [
                str(npm),
                "pack",
                SWAGGER_UI,
                "--silent",
                "--prefer-offline",
                "--pack-destination",
                str(where),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _missing(f"npm pack {SWAGGER_UI} did not finish in 120 s")
    archives = list(where.glob("swagger-ui-dist-*.tgz"))
    if done.returncode != 0 or not archives:
        _missing(f"npm pack {SWAGGER_UI} failed: {done.stderr.strip()[:200]}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(where, filter="data")
    return where / "package"


@pytest.fixture(scope="module")
def browser_tools() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@pytest.fixture
def docs_site(swagger_assets: Path) -> Iterator[tuple[str, str]]:
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    guard = KeyGuard(
        {
            "store": "memory://",
            "header": "X-Docs-Key",
            "policy": {"allow_private_ips": True},
            "public_paths": ["/docs", "/openapi.json", "/swagger/*"],
            "rules": [{"path": "/v1/reports/*", "methods": ["POST"], "scopes": ["reports:write"]}],
        }
    )
    app = FastAPI(docs_url=None)
    app.mount("/swagger", StaticFiles(directory=swagger_assets), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="docs",
            swagger_js_url="/swagger/swagger-ui-bundle.js",
            swagger_css_url="/swagger/swagger-ui.css",
            swagger_favicon_url="/swagger/favicon-32x32.png",
        )

    @app.post("/v1/reports/{name}")
    def write_report(name: str) -> dict[str, str]:
        return {"written": name}

    app.add_middleware(KeyGuardMiddleware, guard=guard)
    token = guard.keys.create(owner="o", name="docs", scopes=["reports:write"]).token or ""
    with serve(app) as base:
        yield base, token
    guard.close()


def test_authorize_then_try_it_out_on_a_rule_guarded_route(
    browser_tools: Any, docs_site: tuple[str, str]
) -> None:
    from playwright.sync_api import expect

    base, token = docs_site
    with browser_tools() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on(
                "request",
                lambda r: None if r.url.startswith(base) else outside.append(r.url),
            )
            page.goto(f"{base}/docs")
            operation = page.locator("#operations-default-write_report_v1_reports__name__post")
            expect(operation).to_be_visible(timeout=20_000)

            def execute() -> Any:
                operation.locator(".opblock-summary").click()
                # The operation unfolds a moment later; its toggle reads "Try it out"
                # the first time and "Cancel" once trying is on.
                toggle = operation.locator("button.try-out__btn")
                expect(toggle).to_be_visible(timeout=10_000)
                if toggle.inner_text().strip() == "Try it out":
                    toggle.click()
                name = operation.locator("input[placeholder='name']")
                expect(name).to_be_enabled(timeout=10_000)
                name.fill("q3")
                operation.get_by_role("button", name="Execute").click()
                status = operation.locator(".live-responses-table .response .response-col_status")
                expect(status.first).not_to_be_empty(timeout=10_000)
                return status.first

            expect(execute()).to_have_text("401")  # not authorized yet: keyguard refuses
            operation.locator(".opblock-summary").click()  # fold it again

            page.get_by_role("button", name="Authorize").first.click()
            dialog = page.locator(".dialog-ux .modal-ux")
            section = dialog.locator(".auth-container").filter(has_text="APIKeyHeader")
            expect(section).to_contain_text("X-Docs-Key")  # this app's header, not a default
            section.locator("input").fill(token)
            section.get_by_role("button", name="Apply credentials").click()
            expect(section.get_by_role("button", name="Remove authorization")).to_be_visible()
            dialog.locator("button.btn-done").first.click()

            expect(execute()).to_have_text("200")
            body = operation.locator(".live-responses-table .response-col_description pre").first
            expect(body).to_contain_text('"written": "q3"')
            assert outside == []  # every asset came from the app itself
        finally:
            browser.close()
