"""The audit trail and the optional Prometheus counters.

Owns two things:

- Structured events on the `keyguard.audit` logger (level INFO): one for every
  key change made through `guard.keys` (create, update, rotate, suspend,
  resume, revoke, delete; success or refusal) and one for every request a door denies. An
  event says who acted, on which key id, what, when, from which client IP and
  with which result code. It never carries a token, secret or passphrase:
  only ids (a token given as an id is shown as its hint, see `shown_id`),
  owners, field *names* and codes. The event is the log message (as
  compact JSON) and also `record.audit` (a dict) for structured handlers.
  Who acted comes from `acting_as(...)` (the admin app sets it); calls from
  plain Python code or the CLI have `who: null`.
- `enable_metrics(guard)`: Prometheus counters (requests allowed/denied by
  code, in-process cache hits/misses) when `prometheus-client` is installed.
  Opt-in: it wraps the guard's methods on that one instance, so a guard
  without metrics runs exactly the code it ran before; with metrics, a warm
  request costs two counter increments.

Must not do I/O beyond logging, and must not raise into the code it observes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .exceptions import (
    ConfigurationError,
    InvalidKeySettings,
    KeyNotFound,
    RequestRejected,
    StoreError,
    shown_id,
)
from .models import IssuedKey, KeyInfo

if TYPE_CHECKING:
    from .guard import Facts, KeyGuard

logger = logging.getLogger("keyguard.audit")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting, as the audit trail names them."""

    who: str | None
    client_ip: str | None = None


_actor: ContextVar[Actor | None] = ContextVar("keyguard_audit_actor", default=None)


@contextlib.contextmanager
def acting_as(who: str | None, client_ip: str | None = None) -> Iterator[Actor]:
    """Attribute the key changes made inside the block to `who` (and `client_ip`).

    Context variables follow `guard.keys.a*` into their worker threads.
    """
    actor = Actor(who, client_ip)
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


def emit(action: str, *, result: str, key_id: str | None = None, **fields: Any) -> None:
    """Log one audit event. `fields` must never hold a secret."""
    if not logger.isEnabledFor(logging.INFO):
        return
    actor = _actor.get()
    event: dict[str, Any] = {
        "action": action,
        "result": result,
        "key_id": key_id,
        "who": fields.pop("who", actor.who if actor else None),
        "client_ip": fields.pop("client_ip", actor.client_ip if actor else None),
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        **fields,
    }
    with contextlib.suppress(Exception):  # auditing must never break the audited call
        logger.info(json.dumps(event, default=str, separators=(",", ":")), extra={"audit": event})


def _key_of(value: object) -> KeyInfo | None:
    if isinstance(value, IssuedKey):
        return value.info
    return value if isinstance(value, KeyInfo) else None


def audited(
    action: str,
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[Concatenate[Any, P], R]]:
    """Decorate a `KeyManager` method: emit `action` with its outcome.

    The key id is the first positional argument or the returned key; `fields`
    lists the names of the keyword arguments given (never their values).
    """

    def decorate(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            first = args[0] if args else kwargs.get("key_id")
            key_id = shown_id(first) if first is not None else None  # never a pasted token
            names = sorted(k for k in kwargs if k != "passphrase" or kwargs[k] is not None)
            owner = kwargs.get("owner") if isinstance(kwargs.get("owner"), str) else None
            try:
                out = method(self, *args, **kwargs)
            except InvalidKeySettings as exc:
                emit(
                    action,
                    result=exc.code,
                    key_id=key_id,
                    owner=owner,
                    field=exc.field,
                    fields=names,
                )
                raise
            except KeyNotFound:
                emit(action, result="not_found", key_id=key_id, fields=names)
                raise
            except StoreError:
                emit(action, result="unavailable", key_id=key_id, owner=owner, fields=names)
                raise
            info = _key_of(out)
            emit(
                action,
                result="ok",
                key_id=info.id if info else key_id,
                owner=info.owner if info else owner,
                fields=names,
            )
            return out

        return wrapper  # type: ignore[return-value]

    return decorate


def key_id_of(guard: KeyGuard, facts: Facts) -> str | None:
    """The (public) key id a request claimed, when its token is well-formed."""
    h = facts.headers
    for value in (*h.get("authorization", ()), *h.get(guard.header, ())):
        scheme, _, rest = value.strip().partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else value.strip()
        parsed = guard._tokens.parse(token)
        if parsed is not None:
            return parsed[0]
    return None


# Refusals told only to a caller that proved the key's secret (SPEC section 4).
PROVEN_CODES = frozenset(
    {
        "revoked_key",
        "expired_key",
        "suspended_key",
        "invalid_passphrase",
        "ip_not_allowed",
        "insufficient_scope",
        "rate_limited",
        "quota_exhausted",
    }
)


def denied(guard: KeyGuard, facts: Facts, exc: RequestRejected) -> None:
    """Log a request a door (or the admin app) refused. Cheap when INFO is off."""
    if not logger.isEnabledFor(logging.INFO):
        return
    try:
        h = facts.headers
        ip = guard.clients.resolve(facts.peer, h.get("x-forwarded-for", ()), h.get("forwarded", ()))
        key_id = key_id_of(guard, facts)
    except Exception:  # noqa: BLE001 - a malformed request must still be logged
        ip, key_id = None, None
    emit(
        "request.denied",
        result=exc.code,
        key_id=key_id,  # the key the request named; `who` only once its secret was proven
        who=f"key:{key_id}" if key_id and exc.code in PROVEN_CODES else None,
        client_ip=str(ip) if ip is not None else None,
        status=exc.status_code,
        method=facts.method,
        path=facts.path,
    )


def denied_in_wsgi_view(environ: Mapping[str, Any], exc: RequestRejected) -> None:
    """`denied` for a rejection raised after the WSGI door passed (Flask decorators)."""
    guard = environ.get("keyguard.guard")
    if guard is None or not logger.isEnabledFor(logging.INFO):
        return
    from .guard import Facts

    headers = {
        name: [environ[key]]
        for name in guard.header_names
        if (key := "HTTP_" + name.upper().replace("-", "_")) in environ
    }
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    facts = Facts(environ.get("REQUEST_METHOD", "GET"), path, environ.get("REMOTE_ADDR"), headers)
    denied(guard, facts, exc)


# -- Prometheus ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metrics:
    requests: Any  # Counter keyguard_requests_total{outcome, code}
    cache: Any  # Counter keyguard_cache_lookups_total{result}


_registries: dict[int, Metrics] = {}


def _metrics(registry: Any) -> Metrics:
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "metrics: prometheus-client is not installed (pip install 'keyguard[metrics]')"
        ) from None
    registry = REGISTRY if registry is None else registry
    found = _registries.get(id(registry))
    if found is None:
        found = _registries[id(registry)] = Metrics(
            Counter(
                "keyguard_requests",
                "Requests checked by keyguard, by outcome and denial code.",
                ["outcome", "code"],
                registry=registry,
            ),
            Counter(
                "keyguard_cache_lookups",
                "Key lookups in the in-process cache, by result.",
                ["result"],
                registry=registry,
            ),
        )
    return found


def enable_metrics(guard: KeyGuard, registry: Any = None) -> Metrics:
    """Count this guard's requests and cache lookups in Prometheus (idempotent).

    `registry` defaults to prometheus_client's global REGISTRY. Counters:
    `keyguard_requests_total{outcome="allowed"|"denied", code=...}` and
    `keyguard_cache_lookups_total{result="hit"|"miss"}`.
    """
    existing: Metrics | None = getattr(guard, "_keyguard_metrics", None)
    if existing is not None:
        return existing
    metrics = _metrics(registry)
    allowed = metrics.requests.labels("allowed", "").inc
    hit = metrics.cache.labels("hit").inc
    miss = metrics.cache.labels("miss").inc
    denied_by = metrics.requests.labels

    sync, asyn, get = guard.authenticate, guard.aauthenticate, guard._local.get

    def counted_warm(warm: Callable[..., Any]) -> Callable[..., Any]:
        """`warm` or `warm_signed`, counted (their cache look-ups are not `get`)."""

        @functools.wraps(warm)
        def counted(*args: Any) -> Any:
            try:
                entry = warm(*args)  # None: authenticate answers (and is counted) instead
            except RequestRejected as exc:  # a spent rate limit, of a key found in the cache
                denied_by("denied", exc.code).inc()
                hit()
                raise
            if entry is not None:
                allowed()
                hit()
            return entry

        return counted

    @functools.wraps(sync)
    def authenticate(facts: Facts) -> Any:
        try:
            entry = sync(facts)
        except RequestRejected as exc:
            denied_by("denied", exc.code).inc()
            raise
        allowed()
        return entry

    @functools.wraps(asyn)
    async def aauthenticate(facts: Facts) -> Any:
        try:
            entry = await asyn(facts)
        except RequestRejected as exc:
            denied_by("denied", exc.code).inc()
            raise
        allowed()
        return entry

    def lookup(key: str) -> Any:
        value = get(key)
        (miss if value is None else hit)()
        return value

    guard.authenticate = authenticate  # type: ignore[method-assign]
    guard.aauthenticate = aauthenticate  # type: ignore[method-assign]
    guard.warm = counted_warm(guard.warm)  # type: ignore[method-assign]
    guard.warm_signed = counted_warm(guard.warm_signed)  # type: ignore[method-assign]
    guard._local.get = lookup  # type: ignore[method-assign]
    guard._keyguard_metrics = metrics  # type: ignore[attr-defined]
    return metrics
