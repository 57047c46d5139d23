"""The one Redis tier of a guard: one client, one key prefix, one circuit breaker.

Owns: reading a `cache` (or `redis` store) URL, building the one redis-py
client for it (lazily: a guard starts while Redis is down), the key layout,
and what every use does while Redis is away. It must not decide a request,
and never turns a Redis error into a 5xx: `RedisTier.call` turns every driver
error into `Unavailable`, and each use falls back as the table says. The
driver is imported only when a client is built, so the URL parser serves
settings validation without redis-py installed.

URLs, as the `limits` library writes them, plus keyguard's own `?prefix=`
(default `keyguard:`; no `{` or `}`: they are Cluster hash-tag braces):

    redis://[user:password@]host:port/db            rediss:// for TLS
    redis+sentinel://[user:password@]host:port[,host:port]/service_name
        ?db=N  sentinel_username=  sentinel_password=  (else the URL's user and
        password serve both the sentinels and the master, as in `limits`)
    redis+cluster://[user:password@]host:port[,host:port]

Sentinel: redis-py's `Sentinel(...).master_for(service)`, so a failover (the
master changes) is followed by itself: a connection to a demoted master fails
(READONLY, or killed by the sentinels), is retried once, and reconnects to
whichever node the sentinels name. Cluster: `RedisCluster(startup_nodes=...)`.
Every key a script or MULTI touches together carries one hash tag
(`<prefix>cache:{<key id>}` and `<prefix>gen:{<key id>}`), so each such
command stays in one slot; PUBLISH is broadcast over a Cluster and goes to
the master under Sentinel (replicas see it too).

Outage policy. Any Redis error (or a timeout: 0.25 s by default, connect and
read) opens the one breaker: for `BREAKER_SECONDS` no use asks Redis, then one
caller at a time probes it. One warning when an outage starts, one INFO line
when Redis answers again.

+----------------------+------------------------------------------+--------------------------------+
| use                  | while Redis is down                      | when it is back                |
+======================+==========================================+================================+
| shared record cache  | every lookup is answered from the store: | lookups read and fill Redis    |
| (shared.py)          | slower, never wrong                      | again                          |
+----------------------+------------------------------------------+--------------------------------+
| invalidation channel | a change is queued and the store's       | the listener resubscribes and  |
| (shared.py)          | `changed` marker written, so every       | drops every local copy         |
|                      | instance stops serving its Redis copy    | (messages sent meanwhile were  |
|                      | within `local_cache_ttl`; the listener   | lost); queued changes are      |
|                      | retries                                  | published again                |
+----------------------+------------------------------------------+--------------------------------+
| store change marker  | a change that could not be published     | Redis copies written under an  |
| (shared.py)          | writes a new marker in the store; a      | older marker are never served: |
|                      | reader serves a Redis copy only if it    | the next reader overwrites     |
|                      | carries the marker the reader last read  | them from the store            |
|                      | (read every `local_cache_ttl / 2`)       |                                |
+----------------------+------------------------------------------+--------------------------------+
| replay cache         | every signed request is refused with     | SET NX in Redis again; if      |
| (replay.py)          | 503 `unavailable` (fail closed: no       | Redis lost what it held (its   |
|                      | instance can tell a replay from a first  | epoch marker is new), a        |
|                      | use), and not remembered, so a retry     | signature timestamped before   |
|                      | passes later; Bearer requests are not    | the loss (+ 5 s) is refused    |
|                      | affected; warned once a minute           | with 503 until it is stale     |
+----------------------+------------------------------------------+--------------------------------+
| per-key rate limits  | this process's memory, a breaker period  | Redis counters again; what was |
| (ratelimit.py)       | at a time: each instance counts alone    | counted in memory is forgotten |
+----------------------+------------------------------------------+--------------------------------+
| failed-attempt       | as rate limits: failures counted per     | as rate limits                 |
| throttling           | instance                                 |                                |
| (ratelimit.py)       |                                          |                                |
+----------------------+------------------------------------------+--------------------------------+
| quotas               | this process's count, seeded from the    | the Redis counter again,       |
| (ratelimit.py)       | store: a quota may be overrun by the     | raised to this process's count |
|                      | uses other instances admit meanwhile     | if Redis lost or missed uses   |
+----------------------+------------------------------------------+--------------------------------+
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .exceptions import ConfigurationError

log = logging.getLogger("keyguard.redis")

SOCKET_TIMEOUT = 0.25  # loopback/LAN Redis answers in well under a millisecond
BREAKER_SECONDS = 1.0  # after an error, leave Redis alone this long (then one probe)
DEFAULT_PREFIX = "keyguard:"
SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster")
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")
# The only query options a Sentinel or Cluster URL takes (redis:// passes its own to redis-py).
_OPTIONS = {
    "redis+sentinel": {*_TIMEOUTS, "db", "sentinel_username", "sentinel_password"},
    "redis+cluster": {*_TIMEOUTS},
}
_DEFAULT_PORT = {"redis+sentinel": 26379}

T = TypeVar("T")


class Unavailable(Exception):
    """Redis did not answer (or the breaker is open): fall back as the table says."""


@dataclass(frozen=True)
class RedisURL:
    """A parsed tier URL (no secret in `where` or the repr)."""

    scheme: str
    locations: tuple[tuple[str, int], ...]
    service: str  # Sentinel: the monitored master's name
    prefix: str
    options: dict[str, str] = field(repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    plain: str = field(default="", repr=False)  # redis://, rediss://: for redis-py's from_url
    path: str = ""  # redis://, rediss://: the database part ("/0"), as written

    @property
    def where(self) -> str:
        """For logs and errors: hosts, and the database or the service; never a password."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.locations)
        return hosts + (f"/{self.service}" if self.service else self.path)


def parse_url(url: str) -> RedisURL:
    """A tier URL, checked; ValueError says what is wrong without echoing the URL
    (it may hold a password)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("must be a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in query if k == "prefix") or DEFAULT_PREFIX
    if "{" in prefix or "}" in prefix:
        raise ValueError("the prefix may not contain '{' or '}' (Redis Cluster hash tags)")
    options = {k: v for k, v in query if k != "prefix"}
    for name in _TIMEOUTS:
        if name in options and not _positive(options[name]):
            raise ValueError(f"{name} must be a positive number of seconds")
    if scheme in ("redis", "rediss"):
        plain = urlunsplit(parts._replace(query=urlencode(list(options.items()))))
        try:
            host, port = parts.hostname or "localhost", parts.port or 6379
        except ValueError:
            raise ValueError("the port must be a number") from None
        return RedisURL(scheme, ((host, port),), "", prefix, options, plain=plain, path=parts.path)
    unknown = sorted(set(options) - _OPTIONS[scheme])
    if unknown:
        raise ValueError(f"unknown option {unknown[0][:40]!r} for {scheme}://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    locations = tuple(_location(h, _DEFAULT_PORT.get(scheme, 6379)) for h in hosts.split(","))
    path = parts.path.strip("/")
    if scheme == "redis+sentinel":
        if not path or "/" in path:
            raise ValueError("a redis+sentinel:// URL names its service: host:port/service_name")
        if "db" in options and not options["db"].isdigit():
            raise ValueError("db must be a database number")
    elif path not in ("", "0"):
        raise ValueError("a redis+cluster:// URL has no database (Redis Cluster has only db 0)")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return RedisURL(
        scheme,
        locations,
        path if scheme == "redis+sentinel" else "",
        prefix,
        options,
        unquote(username) or None,
        unquote(password) or None,
    )


def _location(text: str, default_port: int) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = port, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("every location must be host:port")
    return host, int(port)


def _positive(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def connect(url: RedisURL, timeout: float) -> Any:
    """The redis-py client for `url` (`redis.Redis`, or `RedisCluster`), with
    `timeout` for connect and read unless the URL sets its own. One quick retry
    survives a connection the server closed (a restart, a failover); no backoff
    sleeps, so a dead Redis costs one short timeout, not ten."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    o = url.options
    timeouts: dict[str, Any] = {name: float(o.get(name, timeout)) for name in _TIMEOUTS}
    auth: dict[str, Any] = {"username": url.username, "password": url.password}
    if url.scheme in ("redis", "rediss"):
        return redis.Redis.from_url(
            url.plain, retry=Retry(NoBackoff(), 1), health_check_interval=10, **timeouts
        )
    if url.scheme == "redis+cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in url.locations]  # type: ignore[no-untyped-call, unused-ignore]
        return RedisCluster(
            startup_nodes=nodes,
            retry=Retry(NoBackoff(), 1),
            **auth,
            **timeouts,
        )
    from redis.sentinel import Sentinel

    sentinel_auth = {
        "username": o.get("sentinel_username", url.username),
        "password": o.get("sentinel_password", url.password),
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(url.locations),
        sentinel_kwargs={**sentinel_auth, **timeouts, "retry": Retry(NoBackoff(), 0)},
        **auth,
        **timeouts,
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        url.service,
        db=int(o.get("db", 0)),
        retry=Retry(NoBackoff(), 1),
        health_check_interval=10,
    )


def driver_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis cannot answer (Cluster errors are not all RedisErrors)."""
    import redis
    from redis.exceptions import RedisClusterException

    return (redis.RedisError, RedisClusterException, OSError)


class RedisTier:
    """One guard's Redis: `call` runs a command on the one client under the one
    breaker; `key` builds keys under the one prefix."""

    def __init__(self, url: str | RedisURL, *, timeout: float = SOCKET_TIMEOUT) -> None:
        self.url = parse_url(url) if isinstance(url, str) else url
        self.prefix = self.url.prefix
        self.where = self.url.where
        self.channel = self.prefix + "changes"
        self.timeout = timeout  # seconds, connect and read
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self.errors = driver_errors()  # imports redis now: a missing driver shows at start-up
        from redis.exceptions import ClusterError, ReadOnlyError, ResponseError, TryAgainError

        # A command Redis refused (bad arguments, a script error) says nothing about
        # Redis being up: it fails that one call, and trips no breaker for the rest.
        # (A cluster that is down, or a replica after a failover, is an outage.)
        self._refusals: tuple[type[BaseException], ...] = (ResponseError,)
        self._outages: tuple[type[BaseException], ...] = (
            ClusterError,
            ReadOnlyError,
            TryAgainError,
        )
        self._lock = threading.Lock()
        self._outage = False
        self._retry_at = 0.0  # time.monotonic() of the next probe while in an outage
        self._closed = False  # after close(), no use reconnects
        if self.url.scheme != "redis+cluster":  # no I/O yet; bad redis-py options show now
            self._client = connect(self.url, timeout)

    def key(self, use: str, tag: str, *rest: str) -> str:
        """`<prefix><use>:{<tag>}[:rest]`: keys used together share `tag`, so one slot."""
        return ":".join((f"{self.prefix}{use}:{{{tag}}}", *rest))

    def _usable(self) -> bool:
        if not self._outage:
            return not self._closed
        now = time.monotonic()
        with self._lock:
            if self._closed or now < self._retry_at:
                return False
            self._retry_at = now + BREAKER_SECONDS  # this caller probes; the rest wait
        return True

    def failed(self, exc: BaseException) -> None:
        """Redis did not answer: open the breaker (warned once an outage)."""
        with self._lock:
            self._retry_at = time.monotonic() + BREAKER_SECONDS
            started, self._outage = not self._outage, True
        if started:
            log.warning(
                "keyguard: Redis unreachable (%s at %s); until it answers, keys are read from "
                "the store, signed requests are refused (503) and limits counted in this "
                "process only",
                type(exc).__name__,
                self.where,
            )

    def answered(self) -> None:
        """Redis answered: close the breaker."""
        if self._outage:
            with self._lock:
                ended, self._outage = self._outage, False
            if ended:
                log.info("keyguard: Redis at %s answers again", self.where)

    def client(self) -> Any:
        """The one client (a Cluster client is built on first use: it reads the slot
        map then, and a guard must start while Redis is down)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url, self.timeout)
                client = self._client
        return client

    def call(self, command: Callable[[Any], T]) -> T:
        """`command(client)`, or `Unavailable` when the breaker is open or Redis fails."""
        if not self._usable():
            raise Unavailable
        try:
            result = command(self.client())
        except self._refusals as exc:
            if not isinstance(exc, self._outages):  # "no" to this command: not an outage
                raise Unavailable from exc
            self.failed(exc)
            raise Unavailable from exc
        except self.errors as exc:
            self.failed(exc)
            raise Unavailable from exc
        self.answered()
        return result

    def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA, loaded once) whose `keys` share one hash tag."""

        def run(client: Any) -> Any:
            script = self._scripts.get(source)
            if script is None:
                script = self._scripts[source] = client.register_script(source)
            return script(keys=keys, args=args)

        return self.call(run)

    def close(self) -> None:
        self._closed = True  # `call` answers Unavailable from now on
        client, self._client = self._client, None
        if client is not None:
            client.close()


def open_tier(url: str | None) -> RedisTier | None:
    """The tier for a `cache` setting (validated by settings.py): None for
    `memory://` and None."""
    if url is None or url.partition("://")[0] not in SCHEMES:
        return None
    try:
        return RedisTier(url)
    except ImportError as exc:
        raise ConfigurationError(
            f"cache: a Redis cache needs its driver: pip install 'keyguard[redis]' ({exc.name})"
        ) from None
    except (ValueError, TypeError) as exc:  # redis-py refused an option (its text may echo it)
        raise ConfigurationError(
            f"cache: redis-py refused an option of the URL ({type(exc).__name__})"
        ) from None
