"""Real Redis and PostgreSQL servers for the tests, never mocks.

Order of preference: the URL in KEYGUARD_TEST_REDIS_URL / KEYGUARD_TEST_POSTGRES_URL,
then the machine's own server (127.0.0.1:6379, postgresql://postgres@127.0.0.1:5432/test),
then a throwaway server started from PATH in a temp dir on a free port. When none
can be had, tests skip with the reason, or fail when KEYGUARD_REQUIRE_SERVERS=1.

Isolation: Redis tests use a random key prefix (never FLUSHALL a server we did not
start); PostgreSQL tests get a fresh database that they create and then drop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE = os.environ.get("KEYGUARD_REQUIRE_SERVERS") == "1"


def unavailable(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} (KEYGUARD_REQUIRE_SERVERS=1, so this fails instead of skipping)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def postgres_answers(url: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


@dataclass
class RedisServer:
    """A redis-server this test process started (so it may be killed or flushed)."""

    port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not on PATH")
        self.process = subprocess.Popen(  # noqa: S603
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not _wait_port(self.port):
            self.stop()
            unavailable(f"redis-server did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster initdb'd in a temp dir by this test process."""

    port: int
    directory: str
    bindir: str = ""
    started: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _tool(self, name: str) -> str:
        exe = shutil.which(name)
        if exe is None:
            candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
            exe = str(candidates[-1]) if candidates else None
        if exe is None:
            unavailable(f"{name} (PostgreSQL server tools) is not on PATH")
        return exe  # type: ignore[return-value]

    def _as_postgres_user(self) -> dict[str, object]:
        # initdb refuses to run as root: run as the 'postgres' OS user when we are root.
        if os.geteuid() != 0:
            return {}
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user for initdb")
        os.chown(self.directory, pw.pw_uid, pw.pw_gid)
        return {"user": pw.pw_uid, "group": pw.pw_gid}

    def start(self) -> PostgresServer:
        data = os.path.join(self.directory, "data")
        who = self._as_postgres_user()
        if not os.path.exists(data):
            subprocess.run(  # noqa: S603
                [self._tool("initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **who,  # type: ignore[arg-type]
            )
        subprocess.run(  # noqa: S603
            [
                self._tool("pg_ctl"),
                "-D",
                data,
                "-l",
                os.path.join(self.directory, "log"),
                "-w",
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {self.directory} -F",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **who,  # type: ignore[arg-type]
        )
        self.started = True
        return self

    def stop(self, mode: str = "immediate") -> None:
        if not self.started:
            return
        who = self._as_postgres_user()
        subprocess.run(  # noqa: S603
            [
                self._tool("pg_ctl"),
                "-D",
                os.path.join(self.directory, "data"),
                "-m",
                mode,
                "-w",
                "stop",
            ],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **who,  # type: ignore[arg-type]
        )
        self.started = False


@contextlib.contextmanager
def throwaway_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="kg-redis-") as tmp:
        server = RedisServer(free_port(), tmp).start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    tmp = tempfile.mkdtemp(prefix="kg-pg-")
    server = PostgresServer(free_port(), tmp)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def shared_redis_url() -> Iterator[str]:
    url = os.environ.get("KEYGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    with throwaway_redis() as server:
        yield server.url


def shared_postgres_url() -> Iterator[str]:
    url = os.environ.get("KEYGUARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if postgres_answers(url):
        yield url
        return
    with throwaway_postgres() as server:
        yield server.url


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of `admin_url`, dropped afterwards (we made it)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = f"kg_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin_url)
    user, host = params.get("user", "postgres"), params.get("host", "127.0.0.1")
    url = f"postgresql://{user}@{host}:{params.get('port', 5432)}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
