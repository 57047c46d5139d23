"""The examples as a new user meets them: imported and called over HTTP (httpx
transports), then started for real as the demo script does, with the printed key
tried against the live server.

The examples read KEYGUARD_STORE once, at import, so each test imports a fresh
copy of the module after setting it.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import redis

import keyguard
from keyguard import KeyGuard

from .kgutil import stop_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SRC = str(Path(keyguard.__file__).resolve().parents[1])
TOKEN = re.compile(r"\bkg_[0-9A-Za-z]{16}_[0-9A-Za-z]{30}\b")

pytest.importorskip("fastapi")
pytest.importorskip("flask")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("KEYGUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # a stray default store would land here, not in the repo


def load_example(filename: str) -> ModuleType:
    name = f"kg_example_{Path(filename).stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask finds its root path through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Example:
    """One imported example: its guard and a way to send it a request."""

    def __init__(self, module: ModuleType, guard: KeyGuard, kind: str) -> None:
        self.module, self.guard, self.kind = module, guard, kind

    async def request(self, method: str, path: str, token: str | None, header: str) -> Any:
        headers = {}
        if token is not None:
            headers = (
                {"Authorization": f"Bearer {token}"} if header == "bearer" else {"X-API-Key": token}
            )
        if self.kind == "fastapi":
            transport = httpx.ASGITransport(self.module.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, headers=headers)
        with httpx.Client(
            transport=httpx.WSGITransport(app=self.module.app), base_url="http://t"
        ) as client:
            return client.request(method, path, headers=headers)


def open_example(kind: str, store: str, monkeypatch: pytest.MonkeyPatch) -> Example:
    monkeypatch.setenv("KEYGUARD_STORE", store)
    module = load_example(f"{kind}_app.py")
    guard = module.guard if kind == "fastapi" else module.keyguard.guard
    assert guard.settings.store == store  # read at import, from the environment
    return Example(module, guard, kind)


def close_example(example: Example) -> None:
    example.guard.close()
    sys.modules.pop(example.module.__name__, None)


@pytest.fixture(params=["fastapi", "flask"])
def example(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Example]:
    store = "memory://" if request.param == "fastapi" else f"sqlite:///{tmp_path / 'flask.db'}"
    ex = open_example(request.param, store, monkeypatch)
    yield ex
    close_example(ex)


@pytest.fixture
def fastapi_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Example]:
    ex = open_example("fastapi", "memory://", monkeypatch)
    yield ex
    close_example(ex)


ROUTES = [
    # method, path, scopes of the calling key (None: no key), header, status, body check
    pytest.param("GET", "/health", None, "bearer", 200, {"status": "ok"}, id="health-public"),
    pytest.param("GET", "/v1/models", None, "bearer", 401, "missing_credentials", id="no-key"),
    pytest.param("POST", "/v1/chat/completions", None, "x-api-key", 401, None, id="chat-no-key"),
    pytest.param(
        "GET",
        "/v1/models",
        ["models:read"],
        "bearer",
        200,
        {"models": ["tiny", "small"]},
        id="models-bearer",
    ),  # fmt: skip
    pytest.param("GET", "/v1/models", ["models:read"], "x-api-key", 200, None, id="models-header"),
    pytest.param(
        "GET", "/v1/models", ["inference"], "bearer", 403, "insufficient_scope", id="models-scope"
    ),
    pytest.param(
        "POST",
        "/v1/chat/completions",
        ["inference"],
        "x-api-key",
        200,
        {"reply": "hello, k"},
        id="chat-inference",
    ),  # fmt: skip
    pytest.param(
        "POST",
        "/v1/chat/completions",
        ["models:read"],
        "bearer",
        403,
        "insufficient_scope",
        id="chat-needs-inference",
    ),  # fmt: skip
    pytest.param(
        "GET",
        "/v1/admin/stats",
        ["inference", "models:read"],
        "bearer",
        403,
        "insufficient_scope",
        id="stats-demo-key",
    ),  # fmt: skip
    pytest.param("GET", "/v1/admin/stats", ["admin"], "bearer", 200, {"keys": 1}, id="stats-admin"),
]


@pytest.mark.parametrize(("method", "path", "scopes", "header", "status", "body"), ROUTES)
async def test_routes(
    example: Example,
    method: str,
    path: str,
    scopes: list[str] | None,
    header: str,
    status: int,
    body: Any,
) -> None:
    token = None
    if scopes is not None:
        token = example.guard.keys.create(owner="user", name="k", scopes=scopes).token
    r = await example.request(method, path, token, header)
    assert r.status_code == status, r.text
    if isinstance(body, dict):
        assert r.json() == body
    elif isinstance(body, str):
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == body
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    if token:
        assert token not in r.text


async def test_demo_key_and_restarts(example: Example) -> None:
    """The key main() prints works; starting the demo again and again never hits
    the per-owner key limit, and only the newest demo key stays live."""
    limit = example.guard.settings.policy.max_keys_per_owner
    issued = [example.module.issue_demo_key() for _ in range(limit + 2)]
    newest = issued[-1].token
    r = await example.request("POST", "/v1/chat/completions", newest, "x-api-key")
    assert r.status_code == 200 and r.json()["reply"].startswith("hello, ")
    r = await example.request("GET", "/v1/models", issued[0].token, "bearer")
    assert r.status_code == 401 and r.json()["code"] == "revoked_key"
    assert [k.id for k in example.guard.keys.list(owner="demo")] == [issued[-1].info.id]


async def test_fastapi_docs_are_public_and_show_the_scheme(fastapi_example: Example) -> None:
    r = await fastapi_example.request("GET", "/openapi.json", None, "bearer")
    assert r.status_code == 200
    assert r.json()["components"]["securitySchemes"]
    assert (await fastapi_example.request("GET", "/docs", None, "bearer")).status_code == 200


# --- the demo, started for real -------------------------------------------------

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lines:
    """The child's stdout, read by a thread so every wait on it is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def until(self, done: Callable[[str], bool], timeout: float) -> str:
        """Lines up to the first where `done(line)`; fails after `timeout` seconds
        or when the child exits first."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no expected line within {timeout} s; stdout: {''.join(seen)!r}")
            try:
                line = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the example exited ({self.proc.poll()}); stdout: {''.join(seen)!r}")
            seen.append(line)
            if done(line):
                return "".join(seen)


def wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the example exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail(f"{base}/health did not answer within {timeout} s")


@pytest.mark.parametrize(
    ("script", "last_line"),
    [
        pytest.param("fastapi_app.py", "(Ctrl-C stops it)", id="fastapi"),
        pytest.param("flask_app.py", "/v1/chat/completions", id="flask"),
    ],
)
def test_demo_runs_and_its_printed_key_works(tmp_path: Path, script: str, last_line: str) -> None:
    port = free_port()
    # as from a fresh shell: no KEYGUARD_* settings, and stdout buffered as usual
    # (PYTHONUNBUFFERED would hide an example that forgets to flush before serving)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYGUARD_") and k != "PYTHONUNBUFFERED"
    }
    env.update(PORT=str(port), PYTHONPATH=os.pathsep.join([SRC, env.get("PYTHONPATH", "")]))
    path = EXAMPLES / script
    if script == "flask_app.py":  # its store is a file next to it: a copy, not the checkout's
        path = tmp_path / "app" / script
        path.parent.mkdir()
        path.write_text((EXAMPLES / script).read_text())
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = Lines(proc)
    try:
        out = lines.until(lambda line: last_line in line, START_TIMEOUT)
        tokens = set(TOKEN.findall(out))
        assert len(tokens) == 1, out
        token = tokens.pop()
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/v1/models" in out
        if script == "fastapi_app.py":  # what scripts/demo.sh runs says it is running, and where
            assert out.splitlines()[-1] == f"serving on {base} (Ctrl-C stops it)", out
            assert (tmp_path / "keyguard.db").is_file()  # the embedded default, in cwd
        else:
            assert (path.parent / "keyguard.db").is_file()  # next to the example, not in cwd
            assert not (tmp_path / "keyguard.db").exists()

        wait_healthy(base, proc, START_TIMEOUT)
        with httpx.Client(base_url=base, timeout=5) as client:
            r = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json() == {"models": ["tiny", "small"]}
            r = client.post("/v1/chat/completions", headers={"X-API-Key": token})
            assert r.status_code == 200 and r.json()["reply"].startswith("hello, ")
            r = client.get("/v1/models")
            assert r.status_code == 401
            assert r.headers["content-type"].startswith("application/problem+json")
            r = client.get("/v1/admin/stats", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    finally:
        stop_process(proc)
        lines.thread.join(timeout=10)  # EOF once the child is gone
        if proc.stdout:
            proc.stdout.close()


# --- the other documented commands ------------------------------------------------


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_fastapi_quickstart_works_from_localhost(tmp_path: Path) -> None:
    """The README's FastAPI quickstart as written: the key it creates, the app it shows
    and the curl line it gives answer 200 from 127.0.0.1 (no allowlist that shuts
    localhost out)."""
    section = _section("Quickstart: FastAPI")
    create = re.search(r"^TOKEN=\$\(keyguard (.+) --quiet\)$", section, re.M)
    assert create, "the quickstart captures the token with --quiet"
    app = re.search(r"```python\n# app\.py\n(.*?)```", section, re.S)
    assert app
    curl = (
        'curl -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/v1/chat/completions'
    )
    assert curl in section
    (tmp_path / "app.py").write_text(app[1])
    env = _clean_env(tmp_path)
    argv = [sys.executable, "-m", "keyguard", *create[1].split(), "--quiet"]
    made = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    port = free_port()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)], cwd=tmp_path,
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                httpx.get(f"{base}/docs", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        url = f"{base}/v1/chat/completions"
        r = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200 and r.json() == {"hello": "ci-bot"}, r.text
        assert httpx.post(url, timeout=5).status_code == 401
    finally:
        stop_process(proc)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGUARD_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def test_flask_cli_on_the_example(tmp_path: Path) -> None:
    """`flask --app examples/flask_app.py keyguard keys ...`, as the README shows it: the
    example's store path is absolute (next to the file), so the command opens the app's
    file from any directory."""
    app = tmp_path / "app" / "flask_app.py"  # a copy: its store lands next to it
    app.parent.mkdir()
    app.write_text((EXAMPLES / "flask_app.py").read_text())
    flask = [sys.executable, "-m", "flask", "--app", str(app), "keyguard"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def sh(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*flask, *args], cwd=cwd, env=_clean_env(tmp_path),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    made = sh("keys", "create", "--owner", "demo", "--name", "cli", "--scope", "inference", "-q")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert TOKEN.fullmatch(token)
    store = app.parent / "keyguard.db"
    for cwd in (tmp_path, elsewhere):
        listed = sh("keys", "list", cwd=cwd)
        assert listed.returncode == 0 and token.split("_")[1] in listed.stdout, listed.stderr
        assert f"in sqlite:///{store}" in listed.stdout  # the example's store
    assert not (tmp_path / "keyguard.db").exists() and not (elsewhere / "keyguard.db").exists()
    with closing(KeyGuard({"store": f"sqlite:///{store}"})) as g:
        assert g.verify(token, scopes=["inference"]).name == "cli"

    # refusals are keyguard's one line, as under `keyguard`, not click's usage text
    refused = [
        (["keys", "delete", token.split("_")[1]], "without --yes"),
        (["keys", "create", "--owner", "o"], "Missing option '--name'"),
    ]
    for args, fragment in refused:
        run = sh(*args)
        assert run.returncode == 2 and run.stdout == "", run
        assert run.stderr.startswith("keyguard: error: ") and fragment in run.stderr, run.stderr
        assert len(run.stderr.splitlines()) == 1 and "Usage:" not in run.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in interpreter for the scripts' venv logic: says its version, "makes" a
# venv of itself, and records every call (pip, pytest, the example) in $LOG.
echo "{version} $*" >> "$LOG"
case "$1" in
  -c) case "$2" in *print*) echo {version};; *"(3, 11)"*) [ {version} != 3.10 ];; esac ;;
  -m) if [ "$2" = venv ]; then mkdir -p "${{@: -1}}/bin" && cp "$0" "${{@: -1}}/bin/python"; fi ;;
esac
"""


def _fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON.format(version=version))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", ["test.sh", "demo.sh"])
def test_scripts_make_the_venv_again_for_another_python(tmp_path: Path, script: str) -> None:
    """`PYTHON=python3.12 bash scripts/test.sh` after a run on 3.11: the .venv is made
    again with 3.12 (not kept), once; arguments go to pytest."""
    (tmp_path / "scripts").mkdir()
    for name in (script, "venv.sh"):  # (the venv part both scripts source)
        (tmp_path / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    _fake_python(tmp_path / ".venv" / "bin" / "python", "3.11")  # the first run's venv
    log = tmp_path / "log"
    env = {**_clean_env(tmp_path), "LOG": str(log)}

    def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
        log.write_text("")
        return subprocess.run(["bash", f"scripts/{script}", *args], cwd=tmp_path,
                              env={**env, "PYTHON": str(python)}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    py312 = _fake_python(tmp_path / "bin" / "python3.12", "3.12")
    done = run(py312, "-q", "-x", "tests/test_cli.py")
    assert done.returncode == 0, done.stderr
    assert f".venv has Python 3.11, {py312} is 3.12: making .venv again" in done.stdout
    calls = log.read_text().splitlines()
    assert "3.12 -m venv --clear .venv" in calls
    last = "3.12 -m pytest -q -x tests/test_cli.py" if script == "test.sh" else (
        "3.12 examples/fastapi_app.py")  # fmt: skip
    assert calls[-1] == last and any(c.startswith("3.12 -m pip install") for c in calls)

    done = run(py312)  # the same Python again: the venv is kept
    assert done.returncode == 0 and "making .venv again" not in done.stdout, done.stdout
    assert not any("venv" in c for c in log.read_text().splitlines())

    done = run(_fake_python(tmp_path / "bin" / "python3.10", "3.10"))
    assert done.returncode == 1 and "needs 3.11 or newer" in done.stderr


def test_multi_instance_demo_help_explains_every_option(tmp_path: Path) -> None:
    demo = str(EXAMPLES / "multi_instance" / "demo.py")
    done = subprocess.run([sys.executable, demo, "--help"], cwd=tmp_path, env=_clean_env(tmp_path),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "a key revoked through one is refused by the other" in text
    assert "--postgres-admin URL a PostgreSQL URL allowed to CREATE and DROP DATABASE" in text
    assert "--store URL a postgresql://" in text and "--cache URL a redis://" in text


@pytest.mark.servers
def test_multi_instance_demo(tmp_path: Path, postgres_admin_url: str, redis_url: str) -> None:
    """The README's command: two instances, a revoke through one refused by the other."""
    prefix = f"kgtest:{uuid.uuid4().hex[:10]}:"
    cache = f"{redis_url}?prefix={prefix}"
    demo = str(EXAMPLES / "multi_instance" / "demo.py")
    argv = [sys.executable, demo, "--postgres-admin", postgres_admin_url, "--cache", cache]
    try:
        done = subprocess.run(argv, cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=prefix + "*"))
        if stale:
            client.delete(*stale)
        client.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "-> 401 revoked_key" in done.stdout and "instance B refused the key" in done.stdout
