"""Exchange SDKs, unchanged, against keyguard under a real uvicorn server.

ccxt (sync and async) for bitget, okx and bybit, python-bitget and pybit, each
pointed at the local server the way it lets one choose a host (ccxt:
`exchange.urls["api"]`; python-bitget: its module's `API_URL`; pybit: the
session's `endpoint`), calling a private endpoint at the path the SDK requests.
Each call must pass keyguard with the values the SDK sent (query values that
need percent-encoding: `USDT,BTC`, `a b`, unicode); the request the SDK signed,
sent again, is a replay, and the same headers on another query or body do not
verify. SDKs missing here are skipped with the reason (CI installs them all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from keyguard import KeyGuard
from keyguard.client import SignedAuth

from ..signing_util import make_guard
from .live import Recorder, Seen, exchange_app, serve

PASSPHRASE = "correct horse battery"
VALUES = [
    pytest.param("USDT,BTC", id="comma"),
    pytest.param("a b", id="space"),
    pytest.param("比特币-ü", id="unicode"),
]


@dataclass
class Site:
    base: str
    guard: KeyGuard
    key_id: str
    secret: str
    passphrase: str | None
    recorder: Recorder

    def resend(self, seen: Seen, target: str | None = None, body: bytes | None = None) -> Any:
        """The signed headers of `seen`, sent again (to `target`, with `body`)."""
        headers = {k: v for k, v in seen.headers.items() if k not in {"host", "content-length"}}
        return httpx.request(
            seen.method,
            self.base + (seen.target if target is None else target),
            headers=headers,
            content=seen.body if body is None else body,
            trust_env=False,
            timeout=5,
        )

    def refuses_replay_and_tampering(self, seen: Seen) -> None:
        replay = self.resend(seen)
        assert replay.status_code == 401 and replay.json()["code"] == "replayed_request"
        if seen.method == "GET":
            other = self.resend(seen, target=seen.target + "&extra=1")
        else:
            other = self.resend(seen, body=seen.body.replace(b"}", b',"extra":1}'))
        assert other.status_code == 401 and other.json()["code"] == "invalid_signature"


def _site(profile: str, passphrase: str | None) -> Iterator[Site]:
    # The tests send refused requests on purpose: no throttling of this one client.
    guard = make_guard(signing={"profile": profile}, abuse={"max_failures": None})
    issued = guard.keys.create(owner="acme", name=profile, kind="signing", passphrase=passphrase)
    assert issued.secret is not None
    recorder = Recorder()
    with serve(exchange_app(guard, profile, recorder)) as base:
        yield Site(base, guard, issued.info.id, issued.secret, passphrase, recorder)
    guard.close()


@pytest.fixture(scope="module")
def bitget() -> Iterator[Site]:
    yield from _site("bitget", PASSPHRASE)


@pytest.fixture(scope="module")
def okx() -> Iterator[Site]:
    yield from _site("okx", PASSPHRASE)


@pytest.fixture(scope="module")
def bybit() -> Iterator[Site]:
    yield from _site("bybit", None)  # Bybit has no passphrase header


def _passed(site: Site, data: Any, coin: str) -> Seen:
    """The SDK's call passed keyguard as this key, and the app read `coin` back."""
    assert data["key"] == site.key_id
    seen = site.recorder.last
    assert coin in seen.params.values()
    return seen


# -- ccxt ---------------------------------------------------------------------------

# (exchange, implicit GET method and its params, implicit POST method and its params)
CCXT = {
    "bitget": (
        "private_spot_get_v2_spot_account_assets",
        "private_spot_post_v2_spot_trade_place_order",
        {"symbol": "BTCUSDT", "side": "buy", "orderType": "market", "size": "1"},
    ),
    "okx": (
        "private_get_account_balance",
        "private_post_trade_order",
        {"instId": "BTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "1"},
    ),
    "bybit": (
        "private_get_v5_account_wallet_balance",
        "private_post_v5_order_create",
        {"category": "spot", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market"},
    ),
}
GET_PARAM = {"bitget": "coin", "okx": "ccy", "bybit": "coin"}


def _ccxt(module: Any, exchange: str, site: Site) -> Any:
    client = getattr(module, exchange)(
        {
            "apiKey": site.key_id,
            "secret": site.secret,
            "password": site.passphrase or "",
            "enableRateLimit": False,
        }
    )
    client.urls["api"] = dict.fromkeys(client.urls["api"], site.base)  # every API at ours
    return client


def _ccxt_calls(exchange: str, value: str) -> tuple[str, dict[str, str], str, dict[str, str]]:
    get, post, order = CCXT[exchange]
    query = {GET_PARAM[exchange]: value}
    if exchange == "bybit":
        query["accountType"] = "UNIFIED"
    return get, query, post, {**order, "clientOid": value}


SITES = [pytest.param(name, id=name) for name in CCXT]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("exchange", SITES)
def test_ccxt_sync(request: pytest.FixtureRequest, exchange: str, value: str) -> None:
    ccxt = pytest.importorskip("ccxt", reason="ccxt is not installed (pip install ccxt)")
    site: Site = request.getfixturevalue(exchange)
    client = _ccxt(ccxt, exchange, site)
    get, query, post, order = _ccxt_calls(exchange, value)
    answer = getattr(client, get)(query)
    seen = _passed(site, _data(exchange, answer), value)
    site.refuses_replay_and_tampering(seen)
    answer = getattr(client, post)(order)
    seen = site.recorder.last
    assert _data(exchange, answer)["key"] == site.key_id and value in seen.body.decode("utf-8")
    site.refuses_replay_and_tampering(seen)


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("exchange", SITES)
async def test_ccxt_async(request: pytest.FixtureRequest, exchange: str, value: str) -> None:
    ccxt = pytest.importorskip("ccxt", reason="ccxt is not installed (pip install ccxt)")
    import ccxt.async_support as ccxt_async

    site: Site = request.getfixturevalue(exchange)
    client = _ccxt(ccxt_async, exchange, site)
    get, query, post, order = _ccxt_calls(exchange, value)
    if exchange == "bybit" and (" " in value or not value.isascii()):
        # ccxt's bybit puts the query on the wire as written (`rawencode`); sync ccxt's
        # requests quotes it, async ccxt's aiohttp does not, and uvicorn (h11), like any
        # strict HTTP/1.1 server, refuses the request line before keyguard or the app sees
        # it. The client's limit, not keyguard's: the request fails and nothing runs.
        before = len(site.recorder.seen)
        try:
            with pytest.raises(ccxt.BaseError):
                await getattr(client, get)(query)
        finally:
            await client.close()
        assert len(site.recorder.seen) == before
        return
    try:
        seen = _passed(site, _data(exchange, await getattr(client, get)(query)), value)
        answer = await getattr(client, post)(order)
        assert _data(exchange, answer)["key"] == site.key_id
    finally:
        await client.close()
    site.refuses_replay_and_tampering(seen)


def _data(exchange: str, answer: dict[str, Any]) -> Any:
    """The echoed payload inside each exchange's success wrapper (see live.SHAPES)."""
    if exchange == "okx":
        return answer["data"][0]
    return answer["result"] if exchange == "bybit" else answer["data"]


def test_ccxt_wrong_secret_shows_keyguards_answer(bitget: Site) -> None:
    ccxt = pytest.importorskip("ccxt", reason="ccxt is not installed (pip install ccxt)")
    client = _ccxt(ccxt, "bitget", bitget)
    client.secret = "not-the-secret"
    with pytest.raises(ccxt.ExchangeError) as info:
        client.private_spot_get_v2_spot_account_assets({"coin": "USDT"})
    assert "invalid_signature" in str(info.value)
    assert "The request signature does not match." in str(info.value)


async def test_ccxt_async_identical_requests_in_one_millisecond(bitget: Site) -> None:
    """Concurrent identical requests with one timestamp carry one signature: the
    second is a replay (SPEC section 6). The client-side answer: a nonce
    (timestamp) that never repeats."""
    pytest.importorskip("ccxt", reason="ccxt is not installed (pip install ccxt)")
    import ccxt.async_support as ccxt_async

    client = _ccxt(ccxt_async, "bitget", bitget)
    now = client.milliseconds()
    client.nonce = lambda: now  # both requests signed in the same millisecond
    call = client.private_spot_get_v2_spot_account_assets
    try:
        results = await asyncio.gather(
            call({"coin": "ETH"}), call({"coin": "ETH"}), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, ccxt_async.ExchangeError)]
        assert len(refused) == 1 and "replayed_request" in str(refused[0])
        last = [now]

        def unique() -> int:  # the fix: strictly increasing, so no two requests share one
            last[0] = max(last[0] + 1, client.milliseconds())
            return last[0]

        client.nonce = unique
        results = await asyncio.gather(call({"coin": "ETH"}), call({"coin": "ETH"}))
        assert [r["data"]["key"] for r in results] == [bitget.key_id] * 2
    finally:
        await client.close()


# -- python-bitget, pybit -------------------------------------------------------------


@pytest.mark.parametrize("value", VALUES)
def test_python_bitget(bitget: Site, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(
        "pybitget", reason="python-bitget is not installed (pip install python-bitget)"
    )
    import pybitget
    import pybitget.client

    monkeypatch.setattr(pybitget.client, "API_URL", bitget.base)  # its only host setting
    client = pybitget.Client(bitget.key_id, bitget.secret, passphrase=PASSPHRASE)
    seen = _passed(bitget, client.spot_get_account_assets(coin=value)["data"], value)
    bitget.refuses_replay_and_tampering(seen)
    answer = client.mix_adjust_margintype("BTCUSDT_UMCBL", value, "fixed")
    assert answer["data"]["key"] == bitget.key_id
    assert value in bitget.recorder.last.body.decode("unicode_escape")
    bitget.refuses_replay_and_tampering(bitget.recorder.last)
    wrong = pybitget.Client(bitget.key_id, "not-the-secret", passphrase=PASSPHRASE)
    with pytest.raises(pybitget.exceptions.BitgetAPIException) as info:
        wrong.spot_get_account_assets(coin=value)
    assert info.value.status_code == 401
    assert info.value.response.json()["code"] == "invalid_signature"


def _pybit(site: Site, secret: str | None = None) -> Any:
    unified = pytest.importorskip(
        "pybit.unified_trading", reason="pybit is not installed (pip install pybit)"
    )
    session = unified.HTTP(api_key=site.key_id, api_secret=secret or site.secret, max_retries=1)
    session.endpoint = site.base  # pybit builds every URL from it
    return session


@pytest.mark.parametrize("value", VALUES)
def test_pybit_get_and_post(bybit: Site, value: str) -> None:
    session = _pybit(bybit)
    answer = session.get_wallet_balance(accountType="UNIFIED", coin=value)
    seen = _passed(bybit, answer["result"], value)
    assert seen.headers["x-bapi-recv-window"] == "5000"
    bybit.refuses_replay_and_tampering(seen)
    answer = session.place_order(
        category="spot",
        symbol="BTCUSDT",
        side="Buy",
        orderType="Market",
        qty="1",
        orderLinkId=value,
    )
    assert answer["result"]["key"] == bybit.key_id
    bybit.refuses_replay_and_tampering(bybit.recorder.last)


def test_pybit_wrong_secret_is_refused(bybit: Site) -> None:
    from pybit.exceptions import FailedRequestError

    with pytest.raises(FailedRequestError) as info:
        _pybit(bybit, secret="not-the-secret").get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 401


@pytest.mark.parametrize(
    ("recv_window", "status"),
    [
        pytest.param("30000", 200, id="max_skew"),
        pytest.param("30001", 400, id="over-max_skew"),
        pytest.param("0", 400, id="zero"),
        pytest.param("5e3", 400, id="malformed"),
    ],
)
def test_bybit_recv_window_is_bounded_by_max_skew(
    bybit: Site, recv_window: str, status: int
) -> None:
    """pybit lets the caller choose the recv window; keyguard takes up to max_skew_seconds."""
    session = _pybit(bybit)
    session.recv_window = recv_window
    if status == 200:
        assert session.get_wallet_balance(accountType="UNIFIED")["result"]["key"] == bybit.key_id
        return
    from pybit.exceptions import FailedRequestError

    with pytest.raises(FailedRequestError) as info:
        session.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 400


# -- keyguard's own client, against the same servers --------------------------------


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("exchange", SITES)
def test_signed_auth_against_the_same_server(
    request: pytest.FixtureRequest, exchange: str, value: str
) -> None:
    site: Site = request.getfixturevalue(exchange)
    auth = SignedAuth(site.key_id, site.secret, site.passphrase, exchange)
    with httpx.Client(base_url=site.base, auth=auth, trust_env=False, timeout=5) as client:
        r = client.get("/api/v2/any", params={"coin": value})
        assert r.status_code == 200, r.text
        r = client.post("/api/v2/any", json={"coin": value})
        assert r.status_code == 200, r.text
