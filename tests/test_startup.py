"""What a guard says at start-up under a multi-process server: a warning when its
cache is per process (rate limits, quotas, replay cache and a revoke's reach are
then per worker). Detection is checked table-driven on argv/environment, and for
real under gunicorn (worker count only in its config file) and uvicorn --workers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keyguard
from keyguard import KeyGuard
from keyguard.startup import server_workers

from .kgutil import stop_process

SRC = str(Path(keyguard.__file__).resolve().parents[1])
BIN = Path(sys.executable).parent

UVICORN_M = "/x/lib/python3.11/site-packages/uvicorn/__main__.py"
WORKERS = [  # (command line, environment, what is detected)
    ("/srv/.venv/bin/gunicorn -w 4 app:app", {}, ("gunicorn", 4)),
    ("/srv/.venv/bin/gunicorn -w4 app:app", {}, ("gunicorn", 4)),
    ("gunicorn --workers=3 app:app", {}, ("gunicorn", 3)),
    ("gunicorn app:app", {"GUNICORN_CMD_ARGS": "--workers 5"}, ("gunicorn", 5)),
    ("gunicorn app:app", {"WEB_CONCURRENCY": "6"}, ("gunicorn", 6)),
    ("gunicorn app:app", {}, ("gunicorn", 1)),
    ("python run.py", {"SERVER_SOFTWARE": "gunicorn/23.0.0"}, ("gunicorn", 1)),
    ("/x/bin/uvicorn app:app --workers 2", {}, ("uvicorn", 2)),
    (f"{UVICORN_M} app:app --workers 2", {}, ("uvicorn", 2)),
    ("uvicorn app:app", {"WEB_CONCURRENCY": "3"}, ("uvicorn", 3)),
    ("uvicorn app:app --reload --workers 4", {}, ("uvicorn", 1)),
    ("hypercorn -w 2 app:app", {}, ("hypercorn", 2)),
    ("python app.py --workers 9", {}, None),
    ("pytest", {"WEB_CONCURRENCY": "4"}, None),
]


@pytest.mark.parametrize(("line", "environ", "want"), WORKERS, ids=[w[0][-36:] for w in WORKERS])
def test_server_workers_from_argv_and_environment(
    line: str, environ: dict[str, str], want: tuple[str, int] | None
) -> None:
    assert server_workers(argv=line.split(), environ=environ) == want


@pytest.mark.parametrize(
    ("settings", "warnings"),
    [
        pytest.param({"store": "memory://"}, 2, id="memory-store-and-cache"),
        pytest.param({"store": "sqlite:///k.db"}, 1, id="memory-cache"),
        pytest.param({"store": "sqlite:///k.db", "cache": None}, 1, id="no-cache"),
        pytest.param({"store": "sqlite:///k.db", "cache": "redis://127.0.0.1:1/0"}, 0, id="redis"),
    ],
)
def test_many_workers_warning(
    settings: dict[str, object],
    warnings: int,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/srv/bin/gunicorn", "-w", "4", "app:app"])
    with caplog.at_level(logging.INFO, logger="keyguard"):
        KeyGuard(settings).close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == warnings, warned
    if warnings:
        assert all("gunicorn runs 4 worker processes" in w for w in warned)
        assert "Set cache to a redis:// URL" in warned[-1] and "local_cache_ttl (5 s)" in warned[-1]


WSGI_APP = """
from keyguard import KeyGuard
from keyguard.wsgi import KeyGuardMiddleware

guard = KeyGuard({"store": "sqlite:///keys.db", "public_paths": ["/health"]})

def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

app = KeyGuardMiddleware(inner, guard=guard)
"""

ASGI_APP = """
from starlette.applications import Starlette
from keyguard.asgi import KeyGuardMiddleware

app = Starlette()
app.add_middleware(KeyGuardMiddleware, settings={"store": "sqlite:///keys.db"})
"""


def _until_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """stderr up to the first line containing `needle` (bounded; the server is stopped after)."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line:
            seen.append(line)
            if needle in line:
                return "".join(seen)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    pytest.fail(f"no line with {needle!r} within {timeout} s: {''.join(seen)!r}")


def _serve(argv: list[str], cwd: Path, needle: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGUARD_", "WEB_CONC"))}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), SRC])
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        return _until_line(proc, needle, timeout=30)
    finally:
        stop_process(proc, timeout=15)
        assert proc.stderr is not None
        proc.stderr.close()


def test_gunicorn_workers_from_its_config_file(tmp_path: Path) -> None:
    if not (BIN / "gunicorn").exists():
        pytest.skip("gunicorn is not installed (the test extra has it)")
    (tmp_path / "app.py").write_text(WSGI_APP)
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\nbind = '127.0.0.1:0'\n")
    out = _serve([str(BIN / "gunicorn"), "app:app"], tmp_path, "worker processes")
    assert "gunicorn runs 2 worker processes and keyguard's cache is memory://" in out


def test_uvicorn_workers(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ASGI_APP)
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2", "--port", "0"]
    out = _serve(argv, tmp_path, "worker processes")
    assert "uvicorn runs 2 worker processes and keyguard's cache is memory://" in out


def test_start_up_line_says_configured_once_without_a_repeated_prefix(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Under `logging.basicConfig(level=logging.INFO)` the line reads
    `INFO:keyguard:configured store ...`: the logger names keyguard once, and
    "configured", since building a guard opens nothing (the file is not made yet)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/srv/bin/gunicorn", "-w", "2", "app:app"])
    with caplog.at_level(logging.INFO, logger="keyguard"):
        KeyGuard({"store": "sqlite:///k.db"}).close()
    formatter = logging.Formatter(logging.BASIC_FORMAT)
    lines = [formatter.format(r) for r in caplog.records if r.name == "keyguard"]
    assert lines[0] == (
        f"INFO:keyguard:configured store sqlite:///{tmp_path}/k.db (file {tmp_path}/k.db),"
        " cache memory:// (this process only)"
    )
    assert not (tmp_path / "k.db").exists()  # configured, not opened
    assert lines[1].startswith("WARNING:keyguard:gunicorn runs 2 worker processes and keyguard's")
    assert not any("keyguard: " in r.getMessage() for r in caplog.records)
