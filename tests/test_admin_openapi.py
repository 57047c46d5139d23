"""The admin API matches its own OpenAPI document (issue 13 item 6), checked by
schemathesis with its conformance checks, not only "no 5xx": every status the app
answers is documented, every body matches its schema (problem+json included),
schema-invalid requests are refused (4xx) and schema-valid ones accepted, auth is
never ignored, unsupported methods answer 405. Bounded: a few examples per route.
In key mode (an admin key) and in host mode (`authorize`: an operator, and a
self-service tenant), whose documents differ where the modes do.

What a schema cannot say (policy: an expiry in the past, a private range, the
owner limit, what only an operator may set) is a 422 naming the field, so 422
counts as an answer to valid data. What it can say, it says exactly: durations
(`expires_in`, `grace`) and rate limits are refused by the API exactly when the
document's patterns and bounds refuse them (the API reads them with the same
patterns), and `owner` is required where the API requires it.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")  # what schemathesis validates with
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from keyguard import KeyGuard  # noqa: E402
from keyguard.admin import Principal, admin_app  # noqa: E402

GUARD = KeyGuard(
    {
        "store": "memory://",
        "policy": {"allow_private_ips": True, "max_keys_per_owner": 100_000},
        "abuse": {"max_failures": None},
    }
)
TOKEN = GUARD.keys.create(owner="ops", name="root", scopes=["keyguard:admin"]).token
APP = admin_app(GUARD)
CONFIG = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
            }
        },
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


def _host_app(principal: Principal) -> Any:
    """Host mode: `authorize` is the host's login, here always `principal`."""
    return admin_app(GUARD, authorize=lambda request: principal)


# Host mode: no auth scheme (the host's login); a CSRF header is declared and sent.
HOST_CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
            }
        }
    }
)
OPS_SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", _host_app(Principal("ops")), config=HOST_CONFIG
)
TENANT_SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", _host_app(Principal("user:alice", owner="alice")), config=HOST_CONFIG
)


def _call(case: schemathesis.Case) -> None:
    # A generated passphrase of 8+ characters becomes random characters of the same
    # length (as valid, or not, as before): the suite's leak watch treats every
    # passphrase given to `guard.keys.create` as a secret, and a generated
    # "00000000" would be "found" in another case's owner "000000000000".
    phrase = case.body.get("passphrase") if isinstance(case.body, dict) else None
    if isinstance(phrase, str) and len(phrase) >= 8:
        case.body["passphrase"] = secrets.token_hex(len(phrase))[: len(phrase)]
    case.call_and_validate()


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_api_conforms_to_its_document(case: schemathesis.Case) -> None:
    _call(case)


@OPS_SCHEMA.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_host_mode_conforms_for_an_operator(case: schemathesis.Case) -> None:
    _call(case)


@TENANT_SCHEMA.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_host_mode_conforms_for_a_tenant(case: schemathesis.Case) -> None:
    _call(case)


# -- the answers the issue names, each held against the document ------


def _conforms(method: str, path: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    operation = schema[path][method]
    assert str(status) in operation.definition.raw["responses"]
    operation.validate_response(response)


async def test_named_answers_conform() -> None:
    transport = httpx.ASGITransport(app=APP)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        c.headers["authorization"] = f"Bearer {TOKEN}"
        r = await c.get("/api/keys", params={"include_revoked": "maybe"})
        _conforms("GET", "/api/keys", r, 400)
        r = await c.post("/api/keys", content=b"", headers={"content-type": "application/json"})
        _conforms("POST", "/api/keys", r, 400)  # the body is required
        r = await c.patch("/api/keys/x", content=b"")
        _conforms("PATCH", "/api/keys/{key_id}", r, 400)
        r = await c.post("/api/keys", json={"owner": "o", "name": "n", "scopes": ["a b"]})
        _conforms("POST", "/api/keys", r, 422)
        both = {"owner": "o", "name": "n", "expires_at": None, "expires_in": 60}
        r = await c.post("/api/keys", json=both)
        _conforms("POST", "/api/keys", r, 422)
        assert r.json()["field"] == "expires_in"
        r = await c.post("/api/keys", json={"owner": "o", "name": "n", "metadata": None})
        _conforms("POST", "/api/keys", r, 201)
        key = r.json()["key"]
        assert key["expires_at"] and key["last_used_at"] is None  # nullable, always present
        for action in ("suspend", "resume", "revoke"):
            r = await c.post(f"/api/keys/{key['id']}/{action}")
            _conforms("POST", f"/api/keys/{{key_id}}/{action}", r, 200)
        for action in ("rotate", "suspend", "resume"):
            r = await c.post(f"/api/keys/{key['id']}/{action}")
            _conforms("POST", f"/api/keys/{{key_id}}/{action}", r, 409)
        _conforms("GET", "/api/scopes", await c.get("/api/scopes"), 200)
        _conforms("DELETE", "/api/keys/{key_id}", await c.delete(f"/api/keys/{key['id']}"), 204)
        _conforms("GET", "/api/keys/{key_id}", await c.get(f"/api/keys/{key['id']}"), 404)


# -- what the document says exactly, held against the API over HTTP ------------------

DAY = 86_400


def _field_schema(doc: dict[str, Any], schema_name: str, field: str) -> Any:
    """A validator for one field's schema in the served document."""
    return jsonschema_rs.validator_for(
        doc["components"]["schemas"][schema_name]["properties"][field]
    )


async def _served(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    return dict(r.json())


def _key_client() -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=APP), base_url="http://t")
    client.headers["authorization"] = f"Bearer {TOKEN}"
    return client


def _grace_schema(doc: dict[str, Any]) -> Any:
    body = doc["paths"]["/api/keys/{key_id}/rotate"]["post"]["requestBody"]
    grace = body["content"]["application/json"]["schema"]["properties"]["grace"]
    return jsonschema_rs.validator_for(grace)


EXPIRES_IN = [
    ("0", False), ("0.0", False), ("0s", False), ("0.5", False), ("0.5s", False),
    ("1", True), ("1s", True), ("1.5", True), ("0.1m", True), ("0.01m", False),
    ("0.001h", True), ("0.0001h", False), ("0.5d", True), ("0.00001w", True),
    ("30d", True), ("24h", True), ("1.5h", True), ("007d", False), ("30 d", False),
    ("36500d", True), ("36500.0d", True), ("36500.1d", False), ("36501d", False),
    ("876000h", True), ("876001h", False), ("52560000m", True), ("52560001m", False),
    ("3153600000", True), ("3153600000s", True), ("3153600001", False), ("5214w", True),
    ("5214.5w", False), ("5215w", False), ("30d\n", False), ("-1d", False), ("1e3", False),
    (0, False), (0.5, False), (1, True), (3153600000, True), (3153600001, False),
    (1e300, False), (-1, False),
]  # fmt: skip
GRACE = [
    ("0", True), ("0s", True), (0, True), ("0.5", True), ("30d", True), ("30.0d", True),
    ("30.5d", False), ("31d", False), ("720h", True), ("721h", False), ("43200m", True),
    ("43201m", False), ("2592000", True), ("2592001", False), ("4w", True), ("4.1w", False),
    ("5w", False), ("24h", True), ("24h\n", False), ("1 h", False), (2592000, True),
    (2592000.5, False), (-1, False), (1.5e308, False), ("36500d", False),
]  # fmt: skip


@pytest.mark.parametrize(("value", "valid"), EXPIRES_IN)
async def test_expires_in_refused_exactly_where_the_document_refuses_it(
    value: Any, valid: bool
) -> None:
    async with _key_client() as c:
        doc = await _served(c)
        assert _field_schema(doc, "KeyCreate", "expires_in").is_valid(value) is valid
        r = await c.post("/api/keys", json={"owner": "o", "name": "n", "expires_in": value})
        if valid:
            assert r.status_code == 201, r.text
        else:
            assert r.status_code == 422 and r.json()["field"] == "expires_in", r.text


@pytest.mark.parametrize(("value", "valid"), GRACE)
async def test_grace_refused_exactly_where_the_document_refuses_it(value: Any, valid: bool) -> None:
    async with _key_client() as c:
        doc = await _served(c)
        assert _grace_schema(doc).is_valid(value) is valid
        key = (await c.post("/api/keys", json={"owner": "o", "name": "n"})).json()["key"]
        r = await c.post(f"/api/keys/{key['id']}/rotate", json={"grace": value})
        if valid:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 422 and r.json()["field"] == "grace", r.text


DURATION_TEXT = st.text(alphabet="0123456789.smhdw \n", max_size=12)


@given(data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
async def test_any_duration_the_api_takes_the_document_takes_and_no_other(
    data: st.DataObject,
) -> None:
    async with _key_client() as c:
        doc = await _served(c)
        expires_in = _field_schema(doc, "KeyCreate", "expires_in")
        pattern = doc["components"]["schemas"]["KeyCreate"]["properties"]["expires_in"]
        strings = [o["pattern"] for o in pattern["oneOf"] if "pattern" in o]
        value = data.draw(st.one_of(DURATION_TEXT, st.from_regex(strings[0], fullmatch=True)))
        r = await c.post("/api/keys", json={"owner": "o", "name": "n", "expires_in": value})
        assert r.status_code == (201 if expires_in.is_valid(value) else 422), (value, r.text)
        if r.status_code == 201:  # what was admitted is within its bounds
            ends = datetime.fromisoformat(r.json()["key"]["expires_at"])
            lifetime = ends - datetime.now(UTC)
            assert timedelta(seconds=0) < lifetime <= timedelta(days=36_500)


RATES = [
    ("100/minute", True), ("10/second;1000/hour", True), (" 1 per 5 minutes ", True),
    ("1/second\n", True), ("lots", False), ("0/second", False), ("1/fortnight", False),
    (";".join(["1/second"] * 8), True), (";".join(["1/second"] * 9), False),
    ("1/10000 seconds", False), ("1000000000/day", False), (None, True),
]  # fmt: skip


@pytest.mark.parametrize(("value", "valid"), RATES)
async def test_rate_limits_refused_exactly_where_the_document_refuses_them(
    value: Any, valid: bool
) -> None:
    async with _key_client() as c:
        doc = await _served(c)
        assert _field_schema(doc, "KeyCreate", "rate_limit").is_valid(value) is valid
        r = await c.post("/api/keys", json={"owner": "o", "name": "n", "rate_limit": value})
        assert r.status_code == (201 if valid else 422), r.text


async def test_owner_is_required_where_the_api_requires_it() -> None:
    """Key mode: every caller is an operator, `owner` required. Host mode: optional,
    said so: a tenant may leave it out (its own), an operator may not (422)."""
    async with _key_client() as c:
        doc = await _served(c)
        assert doc["components"]["schemas"]["KeyCreate"]["required"] == ["owner", "name"]
        assert "x-keyguard-operator-only" not in json.dumps(doc)  # every caller is one
        assert doc["security"] == [{"bearer": []}]
        r = await c.post("/api/keys", json={"name": "n"})
        assert r.status_code == 422 and r.json()["field"] == "owner"
    for principal, status in ((Principal("ops"), 422), (Principal("u:a", owner="a"), 201)):
        transport = httpx.ASGITransport(app=_host_app(principal))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            doc = await _served(c)
            create = doc["components"]["schemas"]["KeyCreate"]
            assert create["required"] == ["name"] and "security" not in doc
            assert "required for an operator" in create["properties"]["owner"]["description"]
            for name in ("rate_limit", "max_uses", "metadata"):  # which fields, said so
                field = create["properties"][name]
                assert field["x-keyguard-operator-only"] is True, name
                assert "Operators only" in field["description"] and "null" in field["description"]
            update = doc["components"]["schemas"]["KeyUpdate"]
            assert update["properties"]["rate_limit"]["x-keyguard-operator-only"] is True
            assert "rate_limit, max_uses, metadata" in create["description"]
            assert not any(
                "x-keyguard-operator-only" in field
                for name, field in create["properties"].items()
                if name not in ("rate_limit", "max_uses", "metadata")
            )
            post = doc["paths"]["/api/keys"]["post"]
            assert post["parameters"][0]["name"] == "X-Requested-With"
            r = await c.post("/api/keys", json={"name": "n"})
            assert r.status_code == 403  # the CSRF header the document requires
            r = await c.post("/api/keys", json={"name": "n"}, headers={"x-requested-with": "t"})
            assert r.status_code == status, r.text
            if status == 422:
                assert r.json()["field"] == "owner"


async def test_what_a_schema_cannot_say_is_a_documented_422() -> None:
    async with _key_client() as c:
        doc = await _served(c)
        create = doc["components"]["schemas"]["KeyCreate"]["properties"]
        assert "in the future" in create["expires_at"]["description"]
        assert "in the past" in doc["components"]["responses"]["P422"]["description"]
        for past in ("2000-01-01T00:00:00Z", datetime.now(UTC).isoformat()):
            r = await c.post("/api/keys", json={"owner": "o", "name": "n", "expires_at": past})
            _conforms("POST", "/api/keys", r, 422)
            assert r.json()["field"] == "expires_at"


async def test_a_lifetime_of_exactly_the_maximum_is_taken() -> None:
    """100 years to the second, as a number and as days: 201 (no datetime rounding
    on the way pushes it a microsecond past the bound)."""
    async with _key_client() as c:
        for value in (3_153_600_000, "36500d", "3153600000", "876000h"):
            r = await c.post("/api/keys", json={"owner": "o", "name": "n", "expires_in": value})
            assert r.status_code == 201, (value, r.text)
