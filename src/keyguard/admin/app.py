"""The admin ASGI app: the JSON API of SPEC section 8 and the "API Keys" page.

Owns who may manage keys (a key holding `keyguard:admin`, or the app's own
`authorize` callable), what each may grant (`Principal.grantable`: an
owner-bound principal never grants `keyguard:admin` or a wildcard, so no
tenant widens its own reach), the step-up `confirm` asked before every change,
the translation of JSON bodies into `guard.keys` calls (every refused field is
a 422 `invalid_key_settings` naming it), owner scoping (another owner's key is
a 404, as an unknown one), and CSRF protection for cookie-based hosts. It
authenticates every request itself, so it works whether or not the host app
runs the KeyGuard middleware (if it does, make the mount a public path). It
never returns a stored hash, and returns a token or secret only in the answer
to create and rotate.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Union

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import audit
from ..decision import Facts
from ..exceptions import (
    AuthorizationError,
    BadRequest,
    CsrfRefused,
    InvalidKeySettings,
    KeyNotFound,
    NotFound,
    PayloadTooLarge,
    RequestRejected,
    ServiceUnavailable,
    StepUpRequired,
    StoreError,
    problem,
    shown_id,
    shown_value,
)
from ..guard import KeyGuard
from ..keys import (
    MAX_GRACE,
    MAX_SECONDS,
    check_grants,
    check_not_revoked,
    check_owner_resume,
    duration,
    owner_expiry,
    rotation_grace,
)
from ..models import IssuedKey, KeyInfo, text_ok, to_ts
from .openapi import EXPIRES_IN_PATTERN, GRACE_PATTERN, OPERATOR_FIELDS, openapi_document
from .page import render_page

ADMIN_SCOPE = "keyguard:admin"
MAX_BODY = 64 * 1024
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)")  # how to read openapi's patterns
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CREATE_FIELDS = (
    "owner", "name", "scopes", "allowed_ips", "expires_at", "expires_in", "kind",
    "passphrase", "rate_limit", "max_uses", "metadata",
)  # fmt: skip
_READS = frozenset({"key.get", "key.list", "scopes"})
_SCOPES_HINT = "(GET /api/scopes lists the ones you may)"
UPDATE_FIELDS = ("name", "scopes", "allowed_ips", "expires_at", "rate_limit", "metadata")
ACTIONS = ("create", "rotate", "update", "suspend", "resume", "revoke", "delete")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is using the admin app, and what they may grant.

    - `owner=None`: an operator, who manages every owner's keys and may grant
      any scope (or only `grantable`, when given).
    - `owner="alice"`: self-service; sees and manages only alice's keys, and may
      put on them only `grantable` scopes. Default: the scopes named in the
      guard's `rules`. Never, even when listed: `keyguard:admin`, a wildcard
      (`*`, `x:*`), or a scope that implies one of those (`scope_implies`).
    """

    who: str
    owner: str | None = None
    grantable: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.grantable is not None:
            if isinstance(self.grantable, str) or not isinstance(self.grantable, Iterable):
                raise TypeError("Principal.grantable must be a collection of scope names")
            object.__setattr__(self, "grantable", frozenset(self.grantable))


AuthorizeResult = Union[bool, str, Principal, None]  # noqa: UP007 - a runtime alias
Authorize = Callable[[Request], AuthorizeResult | Awaitable[AuthorizeResult]]
Confirm = Callable[[Request, str], bool | Awaitable[bool]]


class _Refused(InvalidKeySettings):
    """A field the admin API refused itself (types, unknown names, owner scoping)."""


class _Seen(Exception):
    """A refusal the step already answered (and its observers saw)."""

    def __init__(self, error: RequestRejected) -> None:
        self.error = error


# On every answer of the JSON API (a browser must never sniff one into HTML).
NOSNIFF = {"x-content-type-options": "nosniff"}


def _problem(exc: RequestRejected | InvalidKeySettings) -> Response:
    """problem+json from the one renderer (`exceptions.problem`): a refusal, or a
    refused setting (422, or 409 for a key whose state forbids the change)."""
    status, headers, body = problem(exc)
    return Response(body, status_code=status, headers={**dict(headers), **NOSNIFF})


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(data, status, {"cache-control": "no-store", **NOSNIFF, **(headers or {})})


# -- JSON -> keyword arguments of guard.keys ------------------------------------


def _str_list(field: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidKeySettings(field, "must be a list of strings")
    return value


def _optional_str(field: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidKeySettings(field, "must be a string or null")
    return value


def _datetime(field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidKeySettings(field, "must be an ISO 8601 date-time string or null")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidKeySettings(
            field, "must be an ISO 8601 date-time such as 2030-01-31T00:00:00Z"
        ) from None


# Durations as the OpenAPI document gives them: (string pattern, least and most
# seconds as a number, the range in words). A string is read with the document's
# own pattern, whole (as a JSON Schema validator reads `^...$`: no newline after).
_DURATIONS = {
    "expires_in": (re.compile(EXPIRES_IN_PATTERN), 1.0, MAX_SECONDS, "1 second to 100 years"),
    "grace": (re.compile(GRACE_PATTERN), 0.0, MAX_GRACE, "0 seconds to 30 days"),
}


def _seconds(field: str, value: Any) -> float | None:
    """A duration: seconds as a number, or a string such as '90d', '24h', '1.5h':
    exactly what the OpenAPI document's schema for `field` admits, else 422."""
    if value is None:
        return None
    pattern, least, most, words = _DURATIONS[field]
    if isinstance(value, str) and pattern.fullmatch(value) and (m := _DURATION.match(value)):
        value = float(m[1]) * _UNITS[m[2]]  # the number and unit the pattern admitted
    elif not (
        isinstance(value, int | float) and not isinstance(value, bool) and least <= value <= most
    ):  # (NaN is never within)
        raise InvalidKeySettings(
            field,
            f"must be a duration from {words}: a number of seconds, or a number and a unit"
            " (s, m, h, d, w) such as '30d' or '24h'",
        )
    return rotation_grace(value) if field == "grace" else duration(field, value)


def _object(field: str, value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InvalidKeySettings(field, "must be a JSON object or null")
    return value


_CONVERT: dict[str, Callable[[str, Any], Any]] = {
    "scopes": _str_list,
    "allowed_ips": _str_list,
    "expires_at": _datetime,
    "expires_in": _seconds,
    "rate_limit": _optional_str,
    "passphrase": _optional_str,
    "metadata": _object,
    "grace": _seconds,
}


# An unknown field is named as sent only when it looks like a field name (a typo such
# as "expires"); anything else (a secret pasted as a name) only as a hint.
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _arguments(body: dict[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name not in allowed:
            raise InvalidKeySettings(shown_value(name, _FIELD_NAME, quoted=False), "unknown field")
        convert = _CONVERT.get(name)
        out[name] = convert(name, value) if convert else value
    return out


def _precheck(check: Callable[..., object], args: Mapping[str, Any]) -> None:
    """`guard.keys.check_create`/`check_update` (or a `keys` rule on the key as read):
    a refused setting, before the change is confirmed (step-up) and made; audited as
    the admin API's own refusals are, with the status the rule gives (422, or 409
    for a revoked key's state)."""
    try:
        check(**args)
    except InvalidKeySettings as exc:
        refused = _Refused(exc.field, exc.message)
        refused.status_code, refused.title = exc.status_code, exc.title
        raise refused from None


def _key(info: KeyInfo) -> dict[str, Any]:
    return info.to_dict()


def _issued(issued: IssuedKey) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _key(issued.info)}
    if issued.token is not None:
        out["token"] = issued.token
    if issued.secret is not None:
        out["secret"] = issued.secret
    return out


# -- the app ----------------------------------------------------------------------


def _is_async(fn: Callable[..., Any] | None) -> bool:
    return fn is not None and (
        inspect.iscoroutinefunction(fn)
        or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
    )


async def _call(fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    """Call a host callable (sync or async): a sync one in a worker thread."""
    if is_async:
        return await fn(*args)
    result = await run_in_threadpool(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _powerful(scope: str) -> bool:
    return scope == ADMIN_SCOPE or scope == "*" or scope.endswith(":*")


class AdminAPI:
    """The routes, bound to one guard. Built by `admin_app`."""

    def __init__(
        self,
        guard: KeyGuard,
        authorize: Authorize | None,
        confirm: Confirm | None,
        scope_choices: Sequence[str],
        scope_descriptions: Mapping[str, str],
        title: str,
        require_csrf_header: bool,
    ) -> None:
        if not isinstance(guard, KeyGuard):
            raise TypeError("admin_app: guard must be a keyguard.KeyGuard")
        pairs = scope_descriptions.items()
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise TypeError("admin_app: scope_descriptions must map scope names to text")
        self.guard = guard
        self.authorize = authorize
        self._authorize_is_async = _is_async(authorize)
        self.confirm = confirm
        self._confirm_is_async = _is_async(confirm)
        self.scope_choices = list(dict.fromkeys(scope_choices))
        self.scope_descriptions = dict(scope_descriptions)
        self.rule_scopes = tuple(dict.fromkeys(s for r in guard.settings.rules for s in r.scopes))
        self.title = title
        self.require_csrf_header = require_csrf_header
        self._wanted = guard.header_names - guard.signing.header_names

    # -- who is calling, and what they may grant ------------------------------

    def _facts(self, request: Request) -> Facts:
        """The request as the step reads it: no route (the admin scope is what is
        needed), bearer credentials only (no signing headers are gathered)."""
        wanted = self._wanted
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            if name in wanted:
                headers.setdefault(name, []).append(value)
        peer = request.client.host if request.client else None
        # No rules or public paths (path None): the admin scope is what every request needs.
        facts = Facts(request.method, None, peer, headers, request.url.scheme)
        facts.scopes, facts.target = (ADMIN_SCOPE,), request.url.path
        return facts

    def _client_ip(self, facts: Facts) -> str | None:
        ip = self.guard.clients.resolve(facts.peer, facts.headers)
        return None if ip is None else str(ip)

    async def _principal(self, request: Request, facts: Facts) -> Principal:
        if self.authorize is not None:
            return await self._from_authorize(request)
        verdict = await self.guard.acheck(facts)
        if verdict.error is not None:
            raise _Seen(verdict.error)
        assert verdict.entry is not None
        return Principal(who=f"key:{verdict.entry.record.id}")

    async def _from_authorize(self, request: Request) -> Principal:
        assert self.authorize is not None
        result = await _call(self.authorize, self._authorize_is_async, request)
        if result is True:
            return Principal(who="app")
        if isinstance(result, str) and result:
            result = Principal(who=f"owner:{result}", owner=result)
        if isinstance(result, Principal) and (
            result.owner is None or (isinstance(result.owner, str) and text_ok(result.owner))
        ):
            return result
        raise AuthorizationError("insufficient_scope", "You may not manage API keys.")

    def grantable(self, principal: Principal) -> frozenset[str] | None:
        """The scopes `principal` may put on a key; None: any scope (an operator)."""
        if principal.owner is None:
            return principal.grantable
        offered = self.rule_scopes if principal.grantable is None else principal.grantable
        return frozenset(s for s in offered if not self._widens(s))

    def _widens(self, scope: str) -> bool:
        """Would a key holding `scope` reach beyond its owner's own scopes: the admin
        scope, a wildcard, or a scope that implies one of them."""
        return any(_powerful(s) for s in self.guard.scopes.expand((scope,)))

    def _check_fields(
        self, principal: Principal, args: dict[str, Any], current: KeyInfo | None = None
    ) -> None:
        """What only an operator may set on a key (`OPERATOR_FIELDS`): its rate limit,
        its use quota and its metadata (a tenant would lift the limits the operator
        relies on, or write what the app reads as its own, such as a plan). Refused:
        422 naming it. A null one sets nothing and is dropped from `args`: on create
        (the default), and on update of the `current` key where it holds none (for a
        key with a rate limit or metadata, null would remove it: refused)."""
        if principal.owner is None:
            return
        for name in OPERATOR_FIELDS:
            if name not in args:
                continue
            if args[name] is None and not (current is not None and getattr(current, name)):
                del args[name]  # no setting
                continue
            raise _Refused(name, "only an operator may set this on a key")

    def _check_grants(self, principal: Principal, scopes: Any, held: Sequence[str] = ()) -> None:
        """`keys.check_grants` on a request's scopes, told in the API's words; for an
        update, against the key as read (`guard.keys.update` checks it again against
        the key as stored, inside the atomic change)."""
        if not isinstance(scopes, list):  # not a list: guard.keys refuses it
            return
        try:
            check_grants(scopes, self.grantable(principal), held)
        except InvalidKeySettings as exc:
            raise _Refused(exc.field, f"{exc.message} {_SCOPES_HINT}") from None

    async def _confirmed(self, request: Request, action: str) -> None:
        """The host's step-up check, before any change (401 step_up_required)."""
        confirm = self.confirm
        if (
            confirm is not None
            and await _call(confirm, self._confirm_is_async, request, action) is not True
        ):
            raise StepUpRequired(action=action)

    # -- the request cycle ----------------------------------------------------

    async def _run(
        self,
        request: Request,
        action: str,
        handler: Callable[[Request, Principal], Awaitable[Response]],
    ) -> Response:
        facts = self._facts(request)
        try:
            unsafe = request.method in _UNSAFE
            if unsafe and self.require_csrf_header and not request.headers.get("x-requested-with"):
                raise CsrfRefused()
            principal = await self._principal(request, facts)
        except _Seen as seen:  # refused by the step: its observers have seen it
            return _problem(seen.error)
        except RequestRejected as exc:
            self.guard.drivers.refused_later(facts, exc, None)
            return _problem(exc)
        except StoreError:
            unavailable = ServiceUnavailable()
            self.guard.drivers.refused_later(facts, unavailable, None)
            return _problem(unavailable)
        raw_id = request.path_params.get("key_id")
        key_id = None if raw_id is None else shown_id(raw_id)
        with audit.acting_as(principal.who, self._client_ip(facts)):
            try:
                return await handler(request, principal)
            except _Refused as exc:  # refused here, before guard.keys saw (and logged) it
                audit.emit(action, result=exc.code, key_id=key_id, field=exc.field)
                return _problem(exc)
            except InvalidKeySettings as exc:
                return _problem(exc)
            except NotFound:  # refused here (`_own`), before guard.keys saw it
                if action not in _READS:
                    audit.emit(action, result="not_found", key_id=key_id)
                return _problem(NotFound())
            except KeyNotFound:  # guard.keys logged it
                return _problem(NotFound())
            except StepUpRequired as exc:
                audit.emit(action, result=exc.code, key_id=key_id)
                return _problem(exc)
            except RequestRejected as exc:
                return _problem(exc)
            except StoreError:
                return _problem(ServiceUnavailable())

    async def _body(self, request: Request, required: bool = False) -> dict[str, Any]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise PayloadTooLarge()
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            if required:
                raise BadRequest("invalid_request", "Send a JSON body with the key's fields.")
            return {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise BadRequest(
                "invalid_request", "Send a JSON body with Content-Type: application/json."
            )
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("invalid_request", "The body is not valid JSON.") from None
        except RecursionError:  # nested past Python's own limit; the fields' is far lower
            raise BadRequest("invalid_request", "The body is nested too deeply.") from None
        if not isinstance(body, dict):
            raise BadRequest("invalid_request", "The body must be a JSON object.")
        return body

    async def _parse(self, request: Request, allowed: Sequence[str]) -> dict[str, Any]:
        body = await self._body(request, required=True)
        try:
            return _arguments(body, allowed)
        except InvalidKeySettings as exc:
            raise _Refused(exc.field, exc.message) from None

    async def _own(self, principal: Principal, key_id: str) -> KeyInfo:
        """The key, if this principal may see it; else 404 (never reveal others' ids)."""
        if len(key_id) > 64:
            raise NotFound()
        try:
            info: KeyInfo = await self.guard.keys.aget(key_id)
        except KeyNotFound:
            raise NotFound() from None
        if principal.owner is not None and info.owner != principal.owner:
            raise NotFound()
        return info

    # -- routes ---------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        guard = self.guard
        profile = guard.signing.profile
        html, nonce = render_page(
            title=self.title,
            base=request.scope.get("root_path", ""),
            host_auth=self.authorize is not None,
            max_days=guard.settings.policy.unrestricted_max_days,
            allow_private_ips=guard.settings.policy.allow_private_ips,
            signing=guard.signing.enabled,
            step_up=self.confirm is not None,
            headers={
                "key": guard.settings.header,
                "passphrase": guard.passphrase_header,
                "signing_key": profile.key,
                "signing_passphrase": profile.passphrase or "",
            },
        )
        csp = (
            "default-src 'none'; "
            f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        )
        return HTMLResponse(
            html,
            headers={
                "content-security-policy": csp,
                "x-frame-options": "DENY",
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
                "cache-control": "no-store",
            },
        )

    async def openapi(self, request: Request) -> Response:
        doc = openapi_document(
            self.title,
            request.scope.get("root_path", ""),
            host_auth=self.authorize is not None,
            csrf_header=self.require_csrf_header,
        )
        return JSONResponse(doc, headers=NOSNIFF)

    async def collection(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._run(request, "key.create", self._create)
        return await self._run(request, "key.list", self._list)

    async def item(self, request: Request) -> Response:
        if request.method == "PATCH":
            return await self._run(request, "key.update", self._update)
        if request.method == "DELETE":
            return await self._run(request, "key.delete", self._delete)
        return await self._run(request, "key.get", self._get)

    def _who(self, principal: Principal) -> dict[str, Any]:
        return {
            "who": principal.who,
            "owner": principal.owner,
            "operator": principal.owner is None,
        }

    async def _list(self, request: Request, principal: Principal) -> Response:
        owner = request.query_params.get("owner") or None
        flag = request.query_params.get("include_revoked", "false")
        if flag not in ("true", "false"):
            raise BadRequest("invalid_request", "include_revoked must be true or false.")
        if principal.owner is not None:
            owner = principal.owner
        keys = await self.guard.keys.alist(owner=owner, include_revoked=flag == "true")
        return _json({"keys": [_key(k) for k in keys], **self._who(principal)})

    async def scopes(self, request: Request) -> Response:
        return await self._run(request, "scopes", self._scopes)

    async def _scopes(self, request: Request, principal: Principal) -> Response:
        grantable = self.grantable(principal)
        known = dict.fromkeys([*self.scope_choices, *self.scope_descriptions, *self.rule_scopes])
        if grantable is None:
            names = list(known)
        else:
            names = [s for s in known if s in grantable] + sorted(grantable - known.keys())
        doc = {
            "scopes": [{"name": s, "description": self.scope_descriptions.get(s)} for s in names],
            "any": grantable is None,
            **self._who(principal),
        }
        return _json(doc)

    async def _create(self, request: Request, principal: Principal) -> Response:
        args = await self._parse(request, CREATE_FIELDS)
        if "expires_at" in args and "expires_in" in args:  # even as null: one or the other
            raise _Refused("expires_in", "give expires_at or expires_in, not both")
        if (
            principal.owner is not None
            and args.setdefault("owner", principal.owner) != principal.owner
        ):
            raise _Refused("owner", "you may only create keys for your own account")
        self._check_fields(principal, args)
        self._check_grants(principal, args.get("scopes"))
        args.setdefault("owner", None)
        args.setdefault("name", None)
        _precheck(self.guard.keys.check_create, args)  # told before a code is asked
        await self._room(args["owner"])
        await self._confirmed(request, "create")
        issued: IssuedKey = await self.guard.keys.acreate(**args)
        location = f"{request.scope.get('root_path', '')}/api/keys/{issued.id}"
        return _json(_issued(issued), 201, {"location": location})

    async def _room(self, owner: str | None, key_id: str | None = None) -> None:
        """The owner's key limit, as a create or resume would meet it, told before a
        step-up code is asked (no code spent on a change the store would refuse)."""
        if owner is not None:
            check = self.guard.keys.check_room
            await run_in_threadpool(lambda: _precheck(lambda: check(owner, key_id), {}))

    async def _get(self, request: Request, principal: Principal) -> Response:
        return _json(_key(await self._own(principal, request.path_params["key_id"])))

    async def _update(self, request: Request, principal: Principal) -> Response:
        key_id = request.path_params["key_id"]
        args = await self._parse(request, UPDATE_FIELDS)
        current = await self._own(principal, key_id)
        self._check_fields(principal, args, current)
        self._check_grants(principal, args.get("scopes"), current.scopes)
        _precheck(self.guard.keys.check_update, args)  # told before a code is asked
        owner_bound = principal.owner is not None
        if owner_bound and "expires_at" in args:  # only earlier (keys.owner_expiry)
            held, wanted = to_ts(current.expires_at), to_ts(args["expires_at"])
            _precheck(lambda: owner_expiry(held, wanted), {})
        await self._confirmed(request, "update")
        # The grants and the owner's expiry are checked again by guard.keys against
        # the key as stored, inside the store's atomic change.
        grantable = self.grantable(principal)
        if grantable is not None:
            args["grantable"] = grantable
        if owner_bound:
            args["by_owner"] = True
        info: KeyInfo = await self.guard.keys.aupdate(key_id, **args)
        return _json(_key(info))

    async def rotate_key(self, request: Request) -> Response:
        return await self._run(request, "key.rotate", self._rotate)

    async def _rotate(self, request: Request, principal: Principal) -> Response:
        key_id = request.path_params["key_id"]
        body = await self._body(request)
        try:
            grace = _arguments(body, ("grace",)).get("grace") or 0.0
        except InvalidKeySettings as exc:
            raise _Refused(exc.field, exc.message) from None
        info = await self._own(principal, key_id)
        _precheck(lambda: check_not_revoked(info.revoked_at, "rotate"), {})  # before a code
        await self._confirmed(request, "rotate")
        issued: IssuedKey = await self.guard.keys.arotate(key_id, grace=timedelta(seconds=grace))
        return _json(_issued(issued))

    def _change(self, action: str) -> Callable[[Request], Awaitable[Response]]:
        """The route of a bodiless change (`guard.keys.a<action>`): revoke, suspend,
        resume. An owner-bound principal suspends and resumes `by_owner`: it may
        resume its own suspension, never an operator's (422 naming `key`)."""
        call = getattr(self.guard.keys, "a" + action)
        owners = action in ("suspend", "resume")

        async def handler(request: Request, principal: Principal) -> Response:
            key_id = request.path_params["key_id"]
            info = await self._own(principal, key_id)
            by_owner = owners and principal.owner is not None
            # What the change would refuse on the key as read is told before a code is
            # asked (the change checks it again on the key as stored):
            if action == "revoke" and info.revoked_at is not None:
                return _json(_key(info))  # revoked already: nothing to confirm or change
            _precheck(lambda: check_not_revoked(info.revoked_at, action), {})
            if by_owner and action == "resume":
                _precheck(lambda: check_owner_resume(info.suspended_by), {})
            if action == "resume" and info.status() == "suspended":  # it would count again
                await self._room(info.owner, key_id)
            await self._confirmed(request, action)
            kwargs = {"by_owner": True} if by_owner else {}
            return _json(_key(await call(key_id, **kwargs)))

        async def route(request: Request) -> Response:
            return await self._run(request, f"key.{action}", handler)

        return route

    async def _delete(self, request: Request, principal: Principal) -> Response:
        key_id = request.path_params["key_id"]
        try:  # an unknown key is 404 before a code is asked
            await self._own(principal, key_id)
        except StoreError:  # a row that does not decode: an operator may still delete it
            if principal.owner is not None:
                raise
        await self._confirmed(request, "delete")
        await self.guard.keys.adelete(key_id)
        return Response(status_code=204, headers={"cache-control": "no-store", **NOSNIFF})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _problem(NotFound("not_found", "No such route."))
    rejected = BadRequest("invalid_request", str(exc.detail))
    rejected.status_code = exc.status_code
    rejected.title = "Method Not Allowed" if exc.status_code == 405 else "Bad Request"
    response = _problem(rejected)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def admin_app(
    guard: KeyGuard,
    *,
    authorize: Authorize | None = None,
    confirm: Confirm | None = None,
    scope_choices: Sequence[str] = (),
    scope_descriptions: Mapping[str, str] | None = None,
    title: str = "API Keys",
    require_csrf_header: bool | None = None,
) -> Starlette:
    """The admin ASGI app: `app.mount("/keys-admin", admin_app(guard))`.

    - By default a request must carry a key (Bearer or the `header` setting)
      holding the scope `keyguard:admin`; such a key manages every owner's keys.
    - `authorize(request)` replaces that rule (sync or async). It returns True
      (may manage every key), an owner string (may manage only that owner's
      keys: self-service), a `Principal` (who, owner, grantable), or
      False/None (403); it may also raise a `keyguard.RequestRejected` such as
      `AuthenticationError`. A self-service principal grants only its
      `grantable` scopes (default: those named in the guard's `rules`), never
      `keyguard:admin` or a wildcard; anything else is 422 naming `scopes`.
    - `confirm(request, action)` (sync or async), when given, is asked before
      every change (`action`: create, rotate, update, suspend, resume, revoke,
      delete); anything but True answers 401 `step_up_required` and changes
      nothing. `totp_confirm(secret_for)` is one ready made.
    - `scope_choices`: the scopes the page offers as checkboxes;
      `scope_descriptions`: {scope: text} shown beside them (and by
      `GET /api/scopes`).
    - `require_csrf_header`: unsafe methods need an `X-Requested-With` header
      (browsers cannot send it cross-site without CORS). Default: on when
      `authorize` is given (cookie-based hosts), off for bearer keys.
    """
    api = AdminAPI(
        guard,
        authorize,
        confirm,
        scope_choices,
        scope_descriptions or {},
        title,
        authorize is not None if require_csrf_header is None else require_csrf_header,
    )
    routes = [
        Route("/", api.page, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/api/scopes", api.scopes, methods=["GET"]),
        Route("/api/keys", api.collection, methods=["GET", "POST"]),
        Route("/api/keys/{key_id}", api.item, methods=["GET", "PATCH", "DELETE"]),
        Route("/api/keys/{key_id}/rotate", api.rotate_key, methods=["POST"]),
        *(
            Route(f"/api/keys/{{key_id}}/{action}", api._change(action), methods=["POST"])
            for action in ("revoke", "suspend", "resume")
        ),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.keyguard_admin = api
    return app


__all__ = ["ACTIONS", "ADMIN_SCOPE", "Authorize", "Confirm", "Principal", "admin_app"]
