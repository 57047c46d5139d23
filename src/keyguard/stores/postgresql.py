"""`postgresql://user@host:port/db`: the durable store shared by many instances.

psycopg 3 with a `psycopg_pool.ConnectionPool`, opened lazily on first use and
checked on every borrow, so a PostgreSQL restart costs no failed request once
the server answers again (and, should the pool still be backing off then, a
fresh pool replaces it). Timeouts are bounded by default (connect 3 s, pool
wait 3 s, statement 5 s) so a dead server gives `StoreError` (503 upstream)
after a bounded wait, never a hang. Query parameters `pool_min_size`,
`pool_max_size`, `pool_timeout` (seconds) and `statement_timeout` (ms) tune
them; every other parameter goes to libpq unchanged.

Atomicity: `insert` takes a transaction-scoped advisory lock on the owner
before counting live keys, so `max_keys_per_owner` holds across processes;
`modify` reads with `SELECT ... FOR UPDATE`, and takes the same owner lock
before counting when its change makes the key count again. The record is a JSON document; the
columns beside it serve filtering and `touch`. `keyguard_meta.schema_version`
drives migrations (run under an advisory lock, so racing instances migrate
once). This module must never put a password from the URL into a message: a
`StoreError` carries the driver's reason on one line (`database "x" does not
exist`, `Connection refused`) with anything like `password=...`, a URL's user
info and the URL's password itself masked. psycopg_pool logs every failed
connect attempt of its pools (`psycopg.pool`, "error connecting in 'keyguard'");
a filter on that logger lets the same message of keyguard's pool (named
`keyguard`) through once a minute, and leaves other pools' records alone.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..exceptions import ConfigurationError, StoreError
from ..settings import check_url_password, mask_url, url_secrets
from .base import Use
from .sql import SQLStore

# MIGRATIONS[n] brings a schema at version n to version n + 1.
MIGRATIONS = {
    0: [
        """CREATE TABLE IF NOT EXISTS keyguard_keys (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            last_used_at DOUBLE PRECISION,
            data TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS keyguard_keys_owner ON keyguard_keys (owner, created_at, id)",
        "CREATE INDEX IF NOT EXISTS keyguard_keys_created ON keyguard_keys (created_at, id)",
    ],
    1: [
        "ALTER TABLE keyguard_keys ADD COLUMN IF NOT EXISTS suspended_at DOUBLE PRECISION",
        "ALTER TABLE keyguard_keys ADD COLUMN IF NOT EXISTS last_used_from TEXT",
    ],
}

_LOCK_SPACE = 0x6B67  # "kg": first half of every advisory lock key we take
_SETUP_LOCK = 0
_OWN_PARAMS = {"pool_min_size", "pool_max_size", "pool_timeout", "statement_timeout"}
POOL_NAME = "keyguard"

# -- what a message may say -----------------------------------------------------------

_SECRET_PARAM = re.compile(r"(?i)\b(\w*password)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]*)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_SERVER = re.compile(r"^connection to server (?:at|on) .*? failed: ")


def reason(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The driver's words for `exc`, fit for a message: one line (libpq's first),
    without "connection failed: connection to server at ... failed: FATAL:", and
    without a password (`password=...`, a URL's user info, any of `secrets`)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = _SERVER.sub("", text.removeprefix("connection failed: "))
    text = scrub(text.rsplit("FATAL:", 1)[-1], secrets)
    text = " ".join(text.split())[:300]
    return text or type(exc).__name__


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without a password: `password=...`, a URL's user info, any of `secrets`."""
    text = _USERINFO.sub(r"\1****@", _SECRET_PARAM.sub(r"\1\2****", text))
    for secret in secrets:
        text = text.replace(secret, "****")
    return text


class _OncePerMinute(logging.Filter):
    """On `psycopg.pool`: a record about keyguard's pool passes when the same message
    has not passed within the last minute (the pool retries a failed connect every
    second or so while requests answer 503 with the reason). Other pools' pass."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and args and args[0] == POOL_NAME):
            return True
        message, now = record.getMessage(), time.monotonic()
        scrubbed = scrub(message, tuple(sorted(_SECRETS, key=len, reverse=True)))
        if scrubbed != message:
            record.msg, record.args, message = scrubbed, (), scrubbed
        with self._lock:
            if now - self._seen.get(message, -self.every) < self.every:
                return False
            if len(self._seen) >= 256:
                self._seen = {m: t for m, t in self._seen.items() if now - t < self.every}
            self._seen[message] = now
        return True


_SECRETS: set[str] = set()  # the passwords of every keyguard PostgreSQL store in this process
_pool_log = logging.getLogger("psycopg.pool")
if not any(isinstance(f, _OncePerMinute) for f in _pool_log.filters):
    _pool_log.addFilter(_OncePerMinute())


class PostgreSQLStore(SQLStore):
    MARK = "%s"
    FOR_UPDATE = " FOR UPDATE"
    UPSERT_META = (
        "INSERT INTO keyguard_meta (name, value) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
    )
    INSERT_META = (
        "INSERT INTO keyguard_meta (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
    )
    MIGRATIONS = MIGRATIONS

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        own = {k: query.pop(k) for k in list(query) if k in _OWN_PARAMS}
        query.setdefault("connect_timeout", "3")
        try:
            self._min = int(own.get("pool_min_size", 1))
            self._max = int(own.get("pool_max_size", 10))
            self._wait = float(own.get("pool_timeout", 3))
            statement_ms = int(own.get("statement_timeout", 5000))
        except ValueError:
            raise ConfigurationError(
                "store: pool_* and statement_timeout must be numbers"
            ) from None
        self._conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
        self._options = f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms}"
        # For messages: never the password (the settings refuse one that parsers read
        # differently; a store built directly is judged here all the same).
        try:
            check_url_password(url)
        except ValueError as exc:
            raise ConfigurationError(f"store: {exc}") from None
        self._secrets = url_secrets(url)
        _SECRETS.update(self._secrets)  # what the pool's log lines are scrubbed of
        shown = urlsplit(mask_url(url))
        try:
            port = shown.port or 5432
        except ValueError:
            raise ConfigurationError(
                "store: the postgresql URL's port is not a number (a password holding "
                "'/', '?', '#' or '@' must be percent-encoded)"
            ) from None
        self.where = f"postgresql store {shown.hostname or 'localhost'}:{port}{shown.path}"
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    # -- connections --------------------------------------------------------

    def _get_pool(self) -> ConnectionPool[Any]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    pool: ConnectionPool[Any] = ConnectionPool(
                        self._conninfo,
                        kwargs={"autocommit": True, "options": self._options},
                        min_size=self._min,
                        max_size=self._max,
                        timeout=self._wait,
                        check=ConnectionPool.check_connection,
                        reconnect_timeout=60,
                        name=POOL_NAME,
                        open=False,
                    )
                    pool.open(wait=False)
                    self._pool = pool
        return self._pool

    def _borrow(self) -> tuple[ConnectionPool[Any], psycopg.Connection[Any]]:
        pool = self._get_pool()
        try:
            return pool, pool.getconn()
        except PoolTimeout:
            # After an outage the pool retries with a growing backoff; if the server
            # answers now, do not wait for it: start a fresh pool and try once more.
            with psycopg.connect(self._conninfo, options=self._options):
                pass
            self._replace(pool)
            pool = self._get_pool()
            return pool, pool.getconn()

    def _replace(self, pool: ConnectionPool[Any]) -> None:
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
        pool.close(timeout=0)

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[psycopg.Connection[Any]]:
        try:
            pool, conn = self._borrow()
            try:
                if write:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
            finally:
                pool.putconn(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {reason(exc, self._secrets)}") from exc

    # -- the dialect's own ------------------------------------------------------

    def _before_migrate(self, db: psycopg.Connection[Any]) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_SPACE, _SETUP_LOCK))

    def _lock_owner(self, db: psycopg.Connection[Any], owner: str) -> None:
        # Serialises the owner's creates and revivals across every process; released
        # at commit. A count taken after the lock sees every earlier holder's commit.
        db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, owner))

    def touch(self, last_used: Mapping[str, Use]) -> None:
        if not last_used:
            return
        ids = sorted(last_used)  # one lock order for every instance: no deadlock between flushes
        with self._db() as db:
            db.execute(
                "UPDATE keyguard_keys AS k SET last_used_at = v.ts, last_used_from = v.ip"
                " FROM unnest(%s::text[], %s::float8[], %s::text[]) AS v(id, ts, ip)"
                " WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.ts)",
                (ids, [last_used[i][0] for i in ids], [last_used[i][1] for i in ids]),
            )

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=2)
