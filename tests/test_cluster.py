"""Many instances: the shared Redis cache, change propagation, and outages.

Two `KeyGuard`s sharing one store and one Redis cache stand for two app
instances. Fault tests start their own throwaway Redis/PostgreSQL and kill
them; the shared servers are never touched beyond a random key prefix.
Bounded polls only, no timing assertions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keyguard import KeyGuard, tokens
from keyguard.asgi import KeyGuardMiddleware
from keyguard.exceptions import AuthenticationError, AuthorizationError, RequestRejected

from . import servers
from .test_stores import _redis_cleanup

POLL = 0.01
POLL_LIMIT = 500  # a bounded poll: at most ~5 s, normally done in milliseconds


def settings(store: str, cache: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "store": store,
        "cache": cache,
        "local_cache_ttl": 60,  # long: only the invalidation channel can explain a fast refusal
        "pepper": "a-pepper-for-tests-only",
        "policy": {"allow_private_ips": True},
        "abuse": {"max_failures": None},  # refusals are the point here, not throttling
        "rules": [{"path": "/v1/*", "scopes": ["read"]}],
        **extra,
    }


@pytest.fixture
def cache_url(redis_url: str, redis_prefix: str) -> Iterator[str]:
    yield f"{redis_url}?prefix={redis_prefix}"
    _redis_cleanup(redis_url, redis_prefix)


@pytest.fixture(params=["postgresql", "redis"])
def shared_store(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_url")
    else:
        prefix = request.getfixturevalue("redis_prefix") + "store:"
        yield f"{redis_url}?prefix={prefix}"
        _redis_cleanup(redis_url, prefix)


@pytest.fixture
def pair(shared_store: str, cache_url: str) -> Iterator[tuple[KeyGuard, KeyGuard]]:
    one, two = (
        KeyGuard(settings(shared_store, cache_url)),
        KeyGuard(settings(shared_store, cache_url)),
    )
    yield one, two
    one.close()
    two.close()


def refusal(check: Callable[[], object]) -> RequestRejected | None:
    """Poll `check` until it raises; the rejection, or None when it never did."""
    for _ in range(POLL_LIMIT):
        try:
            check()
        except RequestRejected as exc:
            return exc
        time.sleep(POLL)
    return None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(lambda g, k: g.keys.revoke(k), "revoked_key", id="revoke"),
        pytest.param(
            lambda g, k: g.keys.update(k, scopes=["other"]), "insufficient_scope", id="scopes"
        ),
        pytest.param(lambda g, k: g.keys.rotate(k), "invalid_key", id="rotate"),
        pytest.param(lambda g, k: g.keys.delete(k), "invalid_key", id="delete"),
        pytest.param(
            lambda g, k: g.keys.update(k, allowed_ips=["203.0.113.0/24"]),
            "ip_not_allowed",
            id="allowlist",
        ),
    ],
)
def test_change_in_one_instance_is_enforced_by_the_other(
    pair: tuple[KeyGuard, KeyGuard], change: Callable[[KeyGuard, str], object], code: str
) -> None:
    one, two = pair
    issued = one.keys.create(owner="o", name="n", scopes=["read"])
    assert issued.token is not None
    token = issued.token

    def check() -> object:
        return two.verify(token, scopes=["read"], client_ip="10.0.0.1")

    check()  # now cached in `two`'s process and in Redis
    change(one, issued.id)
    rejected = refusal(check)
    assert rejected is not None, "the other instance never refused the changed key"
    assert rejected.code == code


def test_new_key_is_visible_although_its_id_was_cached_as_unknown(
    pair: tuple[KeyGuard, KeyGuard],
) -> None:
    one, two = pair
    issued = one.keys.create(owner="o", name="n", scopes=["read"])
    assert issued.token is not None
    assert two.verify(issued.token).id == issued.id
    one.keys.delete(issued.id)
    assert refusal(lambda: two.verify(issued.token)) is not None  # type: ignore[arg-type]


# -- HTTP and outages ----------------------------------------------------------


def make_app(guard: KeyGuard) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/hello", hello), Route("/admin", hello)])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    return app


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[KeyGuard], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(guard: KeyGuard) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=make_app(guard)), base_url="http://t"
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def bearer(token: str | None) -> dict[str, str]:
    assert token is not None
    return {"authorization": f"Bearer {token}"}


async def test_redis_killed_and_restarted_while_requests_flow(
    postgres_url: str, client_for: Callable[[KeyGuard], httpx.AsyncClient]
) -> None:
    with servers.throwaway_redis() as redis_server:
        guard = KeyGuard(settings(postgres_url, redis_server.url, local_cache_ttl=0.02))
        try:
            good = guard.keys.create(owner="o", name="good", scopes=["read"])
            revoked = guard.keys.create(owner="o", name="gone", scopes=["read"])
            guard.keys.revoke(revoked.id)
            narrow = guard.keys.create(owner="o", name="narrow", scopes=["write"])
            unknown = well_formed_unknown()
            expected = [
                (bearer(good.token), 200, None),
                (bearer(revoked.token), 401, "revoked_key"),
                (bearer(narrow.token), 403, "insufficient_scope"),
                (bearer(unknown), 401, "invalid_key"),
            ]
            client = client_for(guard)
            seen: list[tuple[int, str | None]] = []

            async def round_of_requests() -> None:
                for headers, status, code in expected:
                    r = await client.get("/v1/hello", headers=headers)
                    got = (r.status_code, r.json().get("code") if r.status_code != 200 else None)
                    seen.append(got)
                    assert got == (status, code)
                time.sleep(0.03)  # let the local copies expire, so Redis/the store answer

            for _ in range(5):
                await round_of_requests()
            redis_server.stop()  # killed (SIGKILL) while requests flow
            for _ in range(10):
                await round_of_requests()
            redis_server.start()  # back on the same port, empty
            import redis

            probe = redis.Redis.from_url(redis_server.url)
            try:
                for _ in range(POLL_LIMIT // 5):
                    await round_of_requests()
                    if probe.dbsize() > 0:
                        break
                assert probe.dbsize() > 0, "caching did not resume after Redis came back"
            finally:
                probe.close()
            assert all(status < 500 for status, _ in seen)
        finally:
            guard.close()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[servers.PostgresServer]:
    with servers.throwaway_postgres() as server:
        yield server


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
async def test_store_unreachable(
    backend: str,
    request: pytest.FixtureRequest,
    client_for: Callable[[KeyGuard], httpx.AsyncClient],
) -> None:
    """Uncached key: 503 `unavailable`; cached key keeps working; back up: served again."""
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            server: Any = request.getfixturevalue("pg_server")
            url = server.url + "?pool_timeout=1"
        else:
            server = stack.enter_context(servers.throwaway_redis())
            url = server.url + "?prefix=kg:&socket_timeout=1"
        guard = KeyGuard(settings(url, "memory://"))
        stack.callback(guard.close)
        warm = guard.keys.create(owner="o", name="warm", scopes=["read"])
        cold = guard.keys.create(owner="o", name="cold", scopes=["read"])
        client = client_for(guard)
        assert (await client.get("/v1/hello", headers=bearer(warm.token))).status_code == 200

        server.stop()
        try:
            r = await client.get("/v1/hello", headers=bearer(cold.token))
            assert r.status_code == 503
            assert r.json()["code"] == "unavailable"
            assert cold.token not in r.text
            assert (await client.get("/v1/hello", headers=bearer(warm.token))).status_code == 200
            with pytest.raises(RequestRejected) as info:
                guard.verify(cold.token)  # type: ignore[arg-type]
            assert info.value.status_code == 503
            if backend == "postgresql":
                time.sleep(2)  # long enough for the pool to back off its reconnect attempts
        finally:
            server.start()

        if backend == "postgresql":  # the pool survives the restart: no failed request after it
            r = await client.get("/v1/hello", headers=bearer(cold.token))
            assert r.status_code == 200
            third = guard.keys.create(owner="o", name="third", scopes=["read"])
            assert (await client.get("/v1/hello", headers=bearer(third.token))).status_code == 200


def test_redis_cache_answers_while_the_store_is_down(
    pg_server: servers.PostgresServer, cache_url: str
) -> None:
    """Records and unknown ids cached in Redis by one instance serve another."""
    store = pg_server.url + "?pool_timeout=1"
    one, two = KeyGuard(settings(store, cache_url)), KeyGuard(settings(store, cache_url))
    try:
        issued = one.keys.create(owner="o", name="n", scopes=["read"])
        other = one.keys.create(owner="o", name="m", scopes=["read"])
        unknown = well_formed_unknown()
        one.verify(issued.token)  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError):
            one.verify(unknown)
        two.verify(other.token)  # type: ignore[arg-type]  # `two` is set up
        pg_server.stop()
        try:
            assert two.verify(issued.token).id == issued.id  # type: ignore[arg-type]
            with pytest.raises(AuthenticationError) as info:
                two.verify(unknown)
            assert info.value.code == "invalid_key"
        finally:
            pg_server.start()
    finally:
        one.close()
        two.close()


def test_scope_denial_is_authorization_error(pair: tuple[KeyGuard, KeyGuard]) -> None:
    one, two = pair
    issued = one.keys.create(owner="o", name="n", scopes=["write"])
    with pytest.raises(AuthorizationError):
        two.verify(issued.token, scopes=["read"])  # type: ignore[arg-type]


def well_formed_unknown() -> str:
    """A token with a valid checksum for an id no store holds."""
    return tokens.make_token("kg", tokens.new_key_id())[0]


@pytest.mark.parametrize("via", ["python", "cli"])
def test_a_change_that_misses_redis_reaches_every_instance(
    shared_store: str, cache_url: str, via: str
) -> None:
    """A guard without the Redis cache (the CLI, a script) cannot publish its change;
    every instance's Redis copy must still stop serving within local_cache_ttl
    (here 0.5 s, against a cache_ttl of 60 s: only the store's change marker explains
    a refusal inside the poll)."""
    fast = {"local_cache_ttl": 0.5, "cache_ttl": 60}
    one = KeyGuard(settings(shared_store, cache_url, **fast))
    two = KeyGuard(settings(shared_store, cache_url, **fast))
    script = KeyGuard(settings(shared_store, None))
    try:
        issued = script.keys.create(owner="o", name="n", scopes=["read"])
        token = issued.token or ""
        for guard in (one, two, one, two):  # each has it cached, in process and in Redis
            guard.verify(token, scopes=["read"])
        if via == "cli":
            import subprocess
            import sys

            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "keyguard",
                    "--store",
                    shared_store,
                    "keys",
                    "revoke",
                    issued.id,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        else:
            script.keys.revoke(issued.id)
        for guard in (one, two):
            exc = refusal(lambda g=guard: g.verify(token, scopes=["read"]))
            assert exc is not None and exc.code == "revoked_key"
    finally:
        for guard in (one, two, script):
            guard.close()


# -- the one Redis tier on Redis, Cluster and Sentinel: outages and failover --------
#
# Each test starts its own deployment (tests/servers.py) and kills it. "Right" for
# a decision means what the store says: `good` passes, `revoked` gets revoked_key,
# `narrow` insufficient_scope, an unknown id invalid_key.


class Deployment:
    """A throwaway Redis, Cluster or Sentinel setup that a test may kill and restart."""

    def __init__(self, kind: str, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        if kind == "redis":
            self.servers: Any = stack.enter_context(servers.throwaway_redis())
        elif kind == "cluster":
            self.servers = stack.enter_context(servers.throwaway_cluster())
        else:
            self.servers = stack.enter_context(servers.throwaway_sentinel())
        self.url = self.servers.url

    def _nodes(self) -> list[servers.RedisServer]:
        s = self.servers
        return (
            [s]
            if self.kind == "redis"
            else s.nodes
            if self.kind == "cluster"
            else [
                s.master,
                s.replica,
            ]
        )

    def kill(self) -> None:
        for node in self._nodes():
            node.stop()

    def restart(self) -> None:
        for node in self._nodes():  # a Sentinel master first: the replica follows it
            node.start()
        if self.kind == "cluster":
            self.servers.wait_ok()

    def cached_keys(self, prefix: str) -> int:
        """Keys under `prefix` on every node that holds data now."""
        import redis

        ports = [n.port for n in self._nodes()]
        if self.kind == "sentinel":
            ports = [self.servers.master_port()]
        total = 0
        for port in ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                total += len(list(client.scan_iter(match=prefix + "*")))
            finally:
                client.close()
        return total


TIER_KINDS = [
    pytest.param("redis", id="redis"),
    pytest.param("cluster", id="cluster"),
    pytest.param("sentinel", id="sentinel"),
]


@pytest.mark.parametrize("kind", TIER_KINDS)
def test_tier_outage_decisions_stay_right_and_caching_resumes(kind: str, tmp_path: Any) -> None:
    """Redis (every node of it) killed while two instances verify: every decision is
    still the store's, a change made meanwhile reaches the other instance, and once
    Redis is back the cache fills again by itself."""
    with contextlib.ExitStack() as stack:
        deployment = Deployment(kind, stack)
        cache = f"{deployment.url}?prefix=kg:"
        store = f"sqlite:///{tmp_path}/keys.db"
        extra = {"local_cache_ttl": 0.05, "rate_limit": "1000/minute"}
        one, two = (
            KeyGuard(settings(store, cache, **extra)),
            KeyGuard(settings(store, cache, **extra)),
        )
        stack.callback(two.close)
        stack.callback(one.close)
        good = one.keys.create(owner="o", name="good", scopes=["read"])
        later = one.keys.create(owner="o", name="later", scopes=["read"])
        revoked = one.keys.create(owner="o", name="gone", scopes=["read"])
        one.keys.revoke(revoked.id)
        narrow = one.keys.create(owner="o", name="narrow", scopes=["write"])
        expected = {
            good.token: "ok",
            later.token: "ok",
            revoked.token: "revoked_key",
            narrow.token: "insufficient_scope",
            well_formed_unknown(): "invalid_key",
        }

        def decisions(guard: KeyGuard) -> dict[str | None, str]:
            time.sleep(0.06)  # past local_cache_ttl: Redis, or the store, answers
            out = {}
            for token in expected:
                try:
                    guard.verify(token or "", scopes=["read"])
                    out[token] = "ok"
                except RequestRejected as exc:
                    out[token] = exc.code
            return out

        for guard in (one, two, one, two):
            assert decisions(guard) == expected
        assert deployment.cached_keys("kg:") > 0
        deployment.kill()
        for guard in (one, two, one, two):
            assert decisions(guard) == expected
        one.keys.revoke(later.id)  # cannot be published: the store's change marker carries it
        expected[later.token] = "revoked_key"
        for guard in (two, one, two):
            assert decisions(guard) == expected
        deployment.restart()
        for _ in range(POLL_LIMIT // 10):
            for guard in (one, two):
                assert decisions(guard) == expected
            if deployment.cached_keys("kg:cache:") > 0:
                break
        assert deployment.cached_keys("kg:cache:") > 0, "caching did not resume"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://127.0.0.1:{port}/0", id="redis"),
        pytest.param("redis+cluster://127.0.0.1:{port}", id="cluster"),
        pytest.param("redis+sentinel://127.0.0.1:{port}/mymaster", id="sentinel"),
    ],
)
def test_a_guard_starts_and_decides_while_its_redis_is_down(url: str, tmp_path: Any) -> None:
    cache = url.format(port=servers.free_port())  # nothing listens there
    guard = KeyGuard(settings(f"sqlite:///{tmp_path}/k.db", cache, rate_limit="2/minute"))
    try:
        issued = guard.keys.create(owner="o", name="n", scopes=["read"], max_uses=10)
        token = issued.token or ""
        answers = []
        for _ in range(3):
            try:
                guard.verify(token)
                answers.append("ok")
            except RequestRejected as exc:
                answers.append(exc.code)
        assert answers == ["ok", "ok", "rate_limited"]  # counted in this process
        guard.keys.revoke(issued.id)
        with pytest.raises(RequestRejected) as info:
            guard.verify(token)
        assert info.value.code == "revoked_key"
    finally:
        guard.close()


def test_sentinel_failover_under_load_makes_no_wrong_decision() -> None:
    """Two instances on one Sentinel setup (the cache and the durable store both go
    through Sentinel) while a thread verifies four keys in a loop, and the test
    forces a failover (`SENTINEL FAILOVER`), revokes a key, then kills the new
    master (the sentinels fail over back).

    No wrong decision means, for every verification:
    - `live` passes, or is refused 503 `unavailable` (the master was away and the
      key was not cached: fail closed); never another refusal (its rate limit,
      100000/minute, cannot be reached, and counting per instance only counts less);
    - `gone` (revoked before the load began) is refused `revoked_key` or 503, never
      passes;
    - `doomed` (revoked during the load) may pass only if the verification began
      less than local_cache_ttl + STORE_TIMEOUT after `revoke` returned (a copy cached
      in process lives local_cache_ttl; a load that read the store just before the
      revocation may take the store's timeout to land); otherwise as `gone`;
    - an unknown key id is refused `invalid_key` or 503;
    - nothing raises anything but a `RequestRejected` (no 500).
    Afterwards, with the failovers done, every key is decided right again within a
    bounded poll, and the record cache is on the new master."""
    import threading

    local_ttl, store_timeout = 0.2, 2.0
    with servers.throwaway_sentinel() as sentinel:
        extra = {"local_cache_ttl": local_ttl, "rate_limit": "100000/minute"}
        store, cache = f"{sentinel.url}?prefix=kgs:", f"{sentinel.url}?prefix=kg:"
        writer, reader = (
            KeyGuard(settings(store, cache, **extra)),
            KeyGuard(settings(store, cache, **extra)),
        )
        try:
            live = writer.keys.create(owner="o", name="live", scopes=["read"])
            gone = writer.keys.create(owner="o", name="gone", scopes=["read"])
            doomed = writer.keys.create(owner="o", name="doomed", scopes=["read"])
            writer.keys.revoke(gone.id)
            keys = {
                "live": live.token or "",
                "gone": gone.token or "",
                "doomed": doomed.token or "",
                "unknown": well_formed_unknown(),
            }
            results: list[tuple[float, str, str]] = []
            stop = threading.Event()

            def load() -> None:
                for _ in range(20_000):  # bounded, whatever happens to the servers
                    if stop.is_set():
                        return
                    for name, token in keys.items():
                        began = time.monotonic()
                        try:
                            reader.verify(token, scopes=["read"])
                            outcome = "ok"
                        except RequestRejected as exc:
                            outcome = exc.code
                        except Exception as exc:  # noqa: BLE001 - any other error is wrong
                            outcome = f"error: {type(exc).__name__}"
                        results.append((began, name, outcome))
                    time.sleep(0.002)

            worker = threading.Thread(target=load, name="load")
            worker.start()
            try:
                assert at_least(results, 40)
                first = sentinel.master_port()
                second = sentinel.failover()  # the replica is the master now
                revoked_at = None
                for _ in range(POLL_LIMIT):  # the store may still be switching over
                    try:
                        writer.keys.revoke(doomed.id)
                        revoked_at = time.monotonic()
                        break
                    except Exception:  # noqa: BLE001 - StoreError/503 while it switches
                        time.sleep(POLL)
                assert revoked_at is not None, "the revocation never reached the store"
                seen = len(results)
                assert at_least(results, seen + 40)
                sentinel.node(second).stop()  # the new master dies: back to the first
                sentinel.wait_master(first)
                seen = len(results)
                assert at_least(results, seen + 40)
            finally:
                stop.set()
                worker.join(60)
            allowed = {
                "live": {"ok", "unavailable"},
                "gone": {"revoked_key", "unavailable"},
                "unknown": {"invalid_key", "unavailable"},
            }
            wrong = []
            for began, name, outcome in results:
                may_pass = name == "doomed" and began < revoked_at + local_ttl + store_timeout
                ok = allowed.get(
                    name, {"revoked_key", "unavailable"} | ({"ok"} if may_pass else set())
                )
                if outcome not in ok:
                    wrong.append((round(began - revoked_at, 3), name, outcome))
            assert not wrong, (
                f"wrong decisions (s after the revocation, key, outcome): {wrong[:10]}"
            )
            assert {name for _, name, outcome in results if outcome == "ok"} >= {"live"}

            from .test_redis_tier import code

            def settled() -> bool:
                codes = [code(lambda t=t: reader.verify(t, scopes=["read"])) for t in keys.values()]
                return codes == ["ok", "revoked_key", "revoked_key", "invalid_key"]

            assert poll_until(settled), "decisions did not settle after the failovers"
            import redis

            client = redis.Redis(port=sentinel.master_port(), socket_timeout=1)
            try:
                assert list(client.scan_iter(match="kg:cache:*")), "no cache on the new master"
            finally:
                client.close()
        finally:
            writer.close()
            reader.close()


def poll_until(check: Callable[[], bool]) -> bool:
    """Poll `check` until it holds (bounded)."""
    for _ in range(POLL_LIMIT):
        if check():
            return True
        time.sleep(POLL)
    return False


def at_least(results: list[Any], count: int) -> bool:
    """Wait (bounded) until the load thread has recorded `count` results."""
    return poll_until(lambda: len(results) >= count)
