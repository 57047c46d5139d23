"""The two drivers of the step (check.py): the same verdicts, whichever runs it,
for every kind of I/O the step can ask for; a refusal raised by the I/O goes
back to the step and becomes the verdict; the warm path needs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from keyguard import KeyGuard
from keyguard.decision import (
    ADMIT,
    BODY,
    FAILED,
    FETCH,
    REMEMBER,
    SLOW,
    TARGET,
    Facts,
    Need,
    step,
)

from .kgutil import facts as make_facts
from .kgutil import other_secret
from .signing_util import MASTER, signed


def twin_guards(**settings: Any) -> tuple[KeyGuard, KeyGuard]:
    base: dict[str, Any] = {
        "store": "memory://",
        "signing": {"master_keys": [MASTER]},
        "pepper": "a-pepper-for-the-driver-tests",
        "abuse": {"max_failures": "2/minute"},
    }
    one = KeyGuard({**base, **settings})
    return one, KeyGuard({**base, **settings}, store=one.store)


def bearer(token: str, path: str = "/x", peer: str = "203.0.113.5", **extra: str) -> Facts:
    headers = {"authorization": [f"Bearer {token}"], **{k: [v] for k, v in extra.items()}}
    return Facts("GET", path, peer, headers)


def signed_facts(key: Any, peer: str = "203.0.113.5", **extra: str) -> Facts:
    headers = {k.lower(): [v] for k, v in signed(key.info.id, key.secret, "GET", "/x").items()}
    headers.update({k: [v] for k, v in extra.items()})
    return make_facts("GET", "/x", peer, headers, body=b"", raw_path="/x")


CASES: list[Any] = [
    pytest.param(lambda g: bearer(g.keys.create(owner="o", name="n").token), "ok", id="bearer"),
    pytest.param(lambda g: bearer("kg_nonsense"), "invalid_key", id="malformed"),
    pytest.param(
        lambda g: bearer(other_secret(g.keys.create(owner="o", name="n").token)),
        "invalid_key",
        id="wrong-secret",
    ),
    pytest.param(
        lambda g: bearer(g.keys.create(owner="o", name="n", rate_limit="1/minute").token),
        "ok",
        id="rate-limited-key",
    ),
    pytest.param(
        lambda g: bearer(
            g.keys.create(owner="o", name="n", passphrase="long passphrase").token,
            **{"kg-passphrase": "long passphrase"},
        ),
        "ok",
        id="passphrase",
    ),
    pytest.param(
        lambda g: signed_facts(g.keys.create(owner="o", name="s", kind="signing")),
        "ok",
        id="signed",
    ),
    pytest.param(lambda g: Facts("GET", "/x", "203.0.113.5", {}), "missing_credentials", id="none"),
]


@pytest.mark.parametrize(("make", "code"), CASES)
async def test_both_drivers_give_the_same_verdict(
    make: Callable[[KeyGuard], Facts], code: str
) -> None:
    one, two = twin_guards()
    facts = make(one)
    again = make_facts(
        facts.method,
        facts.path,
        facts.peer,
        facts.headers,
        body=facts.body,
        raw_path=facts.raw_path,
    )
    sync, asyn = one.check(facts), await two.acheck(again)
    codes = [v.error.code if v.error else "ok" for v in (sync, asyn)]
    assert codes == [code, code]
    assert (sync.key_id, sync.proven) == (asyn.key_id, asyn.proven)
    one.close()
    two.close()


def test_the_warm_path_needs_nothing_and_a_cold_one_names_its_io() -> None:
    guard = KeyGuard({"store": "memory://", "abuse": {"max_failures": "2/minute"}})
    token = guard.keys.create(owner="o", name="n", rate_limit="10/minute").token or ""
    cold = step(guard.parts, bearer(token))
    assert isinstance(cold, Need) and cold.kind == FETCH
    guard.check(bearer(token))  # cached, proven, the route remembered
    warm = step(guard.parts, bearer(token))
    assert isinstance(warm, Need) and warm.kind == ADMIT  # only step 8 is left: count it
    plain = guard.keys.create(owner="o", name="p").token or ""
    guard.check(bearer(plain))
    guard.check(bearer(plain))
    answered = step(guard.parts, bearer(plain))
    assert not isinstance(answered, Need) and answered.entry is not None  # nothing at all
    wrong = step(guard.parts, bearer(other_secret(plain)))
    assert isinstance(wrong, Need) and wrong.kind == FAILED  # a failure is counted
    guard.close()


def test_every_need_kind_is_reachable() -> None:
    """Each I/O the step can ask for, asked for by a request that needs it."""
    guard = KeyGuard(
        {
            "store": "memory://",
            "hashing": "argon2id",
            "signing": {"master_keys": [MASTER]},
            "abuse": {"max_failures": "5/minute"},
        }
    )
    seen: set[str] = set()

    def record(facts: Facts) -> None:
        out = step(guard.parts, facts)
        while isinstance(out, Need):
            seen.add(out.kind)
            kind, arg, known = out
            if kind == FETCH:
                known.entry, known.fetched = guard.cache.load(arg), True
            elif kind == BODY:
                raise AssertionError("the facts carry the body already")
            elif kind == SLOW:
                known.slow[arg[0]] = guard.hasher.slow(*arg)
            elif kind == ADMIT:
                known.admitted = True
            elif kind == REMEMBER:
                known.remembered = True
            else:
                known.counted = True
            out = step(guard.parts, facts, known)

    token = guard.keys.create(owner="o", name="n", max_uses=5).token or ""
    record(bearer(token))  # fetch, slow (argon2), admit
    record(bearer(other_secret(token)))  # slow, failed
    key = guard.keys.create(owner="o", name="s", kind="signing")
    record(signed_facts(key))  # fetch, remember
    unread = Facts("GET", "/x", "203.0.113.5", signed_facts(key).headers)
    assert step(guard.parts, unread).kind == TARGET  # type: ignore[union-attr]
    unread.raw_path = "/x"  # the target gathered (no I/O), the key able to sign: the body
    assert step(guard.parts, unread).kind == BODY  # type: ignore[union-attr]
    assert seen == {FETCH, SLOW, ADMIT, REMEMBER, FAILED}
    guard.close()


async def test_a_refusal_from_the_io_becomes_the_verdict() -> None:
    """A spent quota (raised by the counting), a replayed signature (by the replay
    cache): the step turns them into the verdict, on both drivers."""
    one, two = twin_guards()
    token = one.keys.create(owner="o", name="n", max_uses=1).token or ""
    assert one.check(bearer(token)).error is None
    spent = (await two.acheck(bearer(token))).error or one.check(bearer(token)).error
    assert spent is not None and spent.code == "quota_exhausted"
    key = one.keys.create(owner="o", name="s", kind="signing")
    facts = signed_facts(key)
    assert one.check(facts).error is None
    replay = one.check(signed_facts_again(facts)).error
    assert replay is not None and replay.code == "replayed_request"
    one.close()
    two.close()


def signed_facts_again(facts: Facts) -> Facts:
    return make_facts(facts.method, facts.path, facts.peer, facts.headers, body=b"", raw_path="/x")


def test_the_async_driver_runs_on_any_event_loop() -> None:
    guard = KeyGuard({"store": "memory://", "hashing": "argon2id"})
    token = guard.keys.create(owner="o", name="n").token or ""
    for _ in range(2):  # two loops, one after the other, one guard
        verdict = asyncio.run(guard.acheck(bearer(token)))
        assert verdict.error is None
    guard.close()
