from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from keyguard import KeyGuard

from . import servers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a live Redis (shared: isolate with `redis_prefix`, never flush it)."""
    yield from servers.shared_redis_url()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    yield from servers.shared_postgres_url()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    with servers.fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    return f"kgtest:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def guard() -> Iterator[KeyGuard]:
    """A guard on memory:// that allows private IPs (the test client's peer is private)."""
    g = KeyGuard({"store": "memory://", "policy": {"allow_private_ips": True}})
    yield g
    g.close()


# -- secret-leak watch over the whole suite (issue 6) ---------------------------
# Every token, secret and passphrase issued through `guard.keys` is recorded;
# every log record (root handler; keyguard loggers at DEBUG), every problem+json
# body, every body the two doors send and every KeyGuardError message is scanned
# for them. A leak fails the test it happened in (at teardown).
# tests/security/test_no_secret_leaks.py proves the watch is live.


@pytest.fixture(scope="session", autouse=True)
def secret_watch() -> Iterator[object]:
    from .security.leakwatch import SecretWatch

    watch = SecretWatch()
    watch.install()
    yield watch
    watch.uninstall()


@pytest.fixture(autouse=True)
def _no_secret_leaks(secret_watch: object) -> Iterator[None]:
    from .security.leakwatch import SecretWatch

    assert isinstance(secret_watch, SecretWatch)
    secret_watch.leaks.clear()
    yield
    leaks, secret_watch.leaks[:] = list(secret_watch.leaks), []
    assert not leaks, f"an issued secret leaked into: {', '.join(sorted(set(leaks)))}"
