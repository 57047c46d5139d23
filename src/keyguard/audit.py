"""The audit trail and the optional Prometheus counters.

Owns two things:

- Structured events on the `keyguard.audit` logger (level INFO): one for every
  key change made through `guard.keys` (create, update, rotate, suspend,
  resume, revoke, delete; success or refusal) and one for every request a door denies. An
  event says who acted, on which key id, what, when, from which client IP and
  with which result code. It never carries a token, secret or passphrase:
  only ids (a token given as an id is shown as its hint, see `shown_id`),
  owners (one holding a token, which `guard.keys` refuses, only as its hint),
  field *names* and codes. The event is the log message (as
  compact JSON) and also `record.audit` (a dict) for structured handlers.
  Who acted comes from `acting_as(...)` (the admin app sets it); calls from
  plain Python code or the CLI have `who: null`.
- `enable_metrics(guard)`: Prometheus counters (requests allowed/denied by
  code, cache hits/misses) when `prometheus-client` is installed. Opt-in: an
  observer of the drivers' verdicts (check.py), like `observe`, which logs the
  denials; neither changes anything it observes. With metrics, a warm request
  costs two counter increments.

Must not do I/O beyond logging, and must not raise into the code it observes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .exceptions import (
    ConfigurationError,
    InvalidKeySettings,
    KeyNotFound,
    StoreError,
    shown_id,
)
from .models import IssuedKey, KeyInfo

if TYPE_CHECKING:
    from .decision import Facts, Known, Verdict
    from .guard import KeyGuard
    from .tokens import TokenParser

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


def _owner(manager: Any, owner: object) -> str | None:
    """An owner as an event shows it: as given, unless it holds one of the guard's
    tokens (`manager.token_parser`; a token pasted as the owner of a refused create,
    or a row stored before such owners were refused): then only its hint."""
    if not isinstance(owner, str):
        return None
    parser = getattr(manager, "token_parser", None)
    if parser is not None and parser.found_in(owner):
        return shown_id(owner)  # (longer than any id: a hint)
    return owner


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
            owner = _owner(self, kwargs.get("owner"))
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
                owner=_owner(self, info.owner) if info else owner,
                fields=names,
            )
            return out

        return wrapper  # type: ignore[return-value]

    return decorate


def observer(parser: TokenParser) -> Callable[[Facts, Verdict, Known | None], None]:
    """The drivers' observer of refusals for a guard whose tokens `parser` reads."""
    return functools.partial(observe, parser=parser)


def observe(
    facts: Facts, verdict: Verdict, known: Known | None, parser: TokenParser | None = None
) -> None:
    """The drivers' observer of refusals: one `request.denied` event for each, from
    what the verdict says (the key named, whether its secret was proven, the
    client as step 6 found it); a path segment holding a token (`parser`'s) is
    shown as its hint. Cheap when INFO is off."""
    exc = verdict.error
    if exc is None or not logger.isEnabledFor(logging.INFO):
        return
    key_id, client = verdict.key_id, verdict.client
    path = facts.path if facts.path is not None else facts.target
    if path is not None and parser is not None and parser.found_in(path):
        path = "/".join(shown_id(p) if parser.found_in(p) else p for p in path.split("/"))
    emit(
        "request.denied",
        result=exc.code,
        key_id=key_id,  # the key the request named; `who` only once its secret was proven
        who=f"key:{key_id}" if key_id and verdict.proven else None,
        client_ip=str(client) if client is not None else None,
        status=exc.status_code,
        method=facts.method,
        path=path,
    )


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


_enabled: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def enable_metrics(guard: KeyGuard, registry: Any = None) -> Metrics:
    """Count this guard's requests and cache lookups in Prometheus (idempotent).

    `registry` defaults to prometheus_client's global REGISTRY. Counters:
    `keyguard_requests_total{outcome="allowed"|"denied", code=...}` and
    `keyguard_cache_lookups_total{result="hit"|"miss"}` (one look-up per request
    that named a key: a miss when its key came from Redis or the store). An
    observer of the drivers' verdicts: it changes nothing it observes.
    """
    drivers = guard.drivers
    existing = _enabled.get(drivers)
    if existing is not None:
        return existing
    metrics = _enabled[drivers] = _metrics(registry)
    allowed = metrics.requests.labels("allowed", "").inc
    hit = metrics.cache.labels("hit").inc
    miss = metrics.cache.labels("miss").inc
    denied_by = metrics.requests.labels

    def count(facts: Facts, verdict: Verdict, known: Known | None) -> None:
        exc = verdict.error
        if exc is not None:
            denied_by("denied", exc.code).inc()
        elif verdict.entry is not None:
            allowed()
        if verdict.key_id is not None:
            (miss if known is not None and known.fetched else hit)()

    drivers.observers.append(count)  # every verdict
    return metrics
