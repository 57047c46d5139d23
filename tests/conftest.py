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
