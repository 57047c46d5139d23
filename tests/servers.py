"""Real Redis and PostgreSQL servers for the tests, never mocks.

Order of preference: the URL in KEYGUARD_TEST_REDIS_URL / KEYGUARD_TEST_POSTGRES_URL,
then the machine's own server (127.0.0.1:6379, postgresql://postgres@127.0.0.1:5432/test),
then a throwaway server started from PATH in a temp dir on a free port. When none
can be had, tests skip with the reason, or fail when KEYGUARD_REQUIRE_SERVERS=1.

Isolation: Redis tests use a random key prefix (never FLUSHALL a server we did not
start); PostgreSQL tests get a fresh database that they create and then drop.

Redis Cluster and Sentinel are always throwaway (`throwaway_cluster`: three
masters joined with `redis-cli --cluster create`; `throwaway_sentinel`: one
master, one replica and three sentinels, quorum 2), on free ports in a temp dir,
killed afterwards; tests may kill and restart their nodes.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    extra: tuple[str, ...] = ()  # more redis-server options (cluster mode, replicaof)

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
                *self.extra,
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


def _client(port: int) -> Any:
    import redis

    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)


def _until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` (errors count as not yet) until it holds, or give up with `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    unavailable(f"{what} (waited {timeout:.0f} s)")


def _answers(port: int, command: str, *args: str) -> Any:
    client = _client(port)
    try:
        return client.execute_command(command, *args)
    finally:
        client.close()


def _info(port: int) -> dict[str, Any]:
    client = _client(port)
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


@dataclass
class RedisClusterServers:
    """Three cluster-mode masters (no replicas) joined with `redis-cli --cluster create`."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        if not os.path.exists(os.path.join(self.nodes[0].directory, "created")):
            cli = shutil.which("redis-cli")
            if cli is None:
                unavailable("redis-cli is not on PATH (needed to create a Redis Cluster)")
            joined = subprocess.run(  # noqa: S603
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if joined.returncode != 0:
                self.stop()
                unavailable(f"redis-cli --cluster create failed: {joined.stdout[-300:]!r}")
            Path(self.nodes[0].directory, "created").touch()
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        """Every node reports `cluster_state:ok` (all slots served, nodes agree)."""
        for node in self.nodes:
            _until(
                lambda n=node: b"cluster_state:ok" in _answers(n.port, "CLUSTER", "INFO"),
                f"Redis Cluster node {node.port} never reached cluster_state:ok",
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class SentinelServers:
    """One master, one replica, three sentinels (quorum 2) watching `service`."""

    master: RedisServer
    replica: RedisServer
    sentinel_ports: list[int]
    directory: str
    service: str = "mymaster"
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> SentinelServers:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not on PATH")
        quick = ("--repl-diskless-sync-delay", "0")  # either node may become the master
        self.master.extra = quick
        self.master.start()
        self.replica.extra = (*quick, "--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        _until(
            lambda: _info(self.replica.port).get("master_link_status") == "up",
            "the Sentinel test replica never synced with its master",
        )
        for port in self.sentinel_ports:
            conf = Path(self.directory, f"sentinel-{port}.conf")
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 2000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(  # noqa: S603
                    [exe, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            _until(
                lambda p=port: _answers(p, "SENTINEL", "CKQUORUM", self.service).startswith(b"OK"),
                f"sentinel {port} never saw a quorum",
            )
            _until(
                lambda p=port: len(_answers(p, "SENTINEL", "REPLICAS", self.service)) == 1,
                f"sentinel {port} never found the replica",
            )
        return self

    def master_port(self) -> int:
        return int(
            _answers(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]
        )

    def node(self, port: int) -> RedisServer:
        return self.master if self.master.port == port else self.replica

    def failover(self) -> int:
        """`SENTINEL FAILOVER` and wait until the replica is the master everywhere; its port."""
        old = self.master_port()
        new = self.replica.port if old == self.master.port else self.master.port
        _answers(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.service)
        self.wait_master(new)
        return new

    def wait_master(self, port: int) -> None:
        """Every sentinel names `port` as the master, and it says it is one."""
        for sentinel in self.sentinel_ports:
            _until(
                lambda s=sentinel: (
                    int(_answers(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]) == port
                ),
                f"sentinel {sentinel} never switched to master {port}",
            )
        _until(
            lambda: _info(port).get("role") == "master",
            f"{port} never became a master",
        )

    def stop(self) -> None:
        for process in self.sentinels:
            kill(process)
            process.wait(10)
        self.sentinels.clear()
        self.replica.stop()
        self.master.stop()


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[RedisClusterServers]:
    with tempfile.TemporaryDirectory(prefix="kg-cluster-") as tmp:
        nodes = []
        for n in range(3):
            directory = os.path.join(tmp, str(n))
            os.mkdir(directory)
            port, bus = free_port(), free_port()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            extra += ("--cluster-port", str(bus), "--cluster-node-timeout", "1000")
            nodes.append(RedisServer(port, directory, extra=extra))
        cluster = RedisClusterServers(nodes)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@contextlib.contextmanager
def throwaway_sentinel() -> Iterator[SentinelServers]:
    with tempfile.TemporaryDirectory(prefix="kg-sentinel-") as tmp:
        dirs = [os.path.join(tmp, name) for name in ("master", "replica")]
        for directory in dirs:
            os.mkdir(directory)
        setup = SentinelServers(
            RedisServer(free_port(), dirs[0]),
            RedisServer(free_port(), dirs[1]),
            [free_port() for _ in range(3)],
            tmp,
        )
        try:
            yield setup.start()
        finally:
            setup.stop()


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
