"""The `keyguard` command from outside, as a new user drives it.

Most runs call `keyguard.cli.main([...])` in-process (capsys for the output,
SystemExit for the exit code); a few run the real thing as a subprocess
(`python -m keyguard` and the installed console script). Every store is a SQLite
file under tmp_path, and what the CLI did is checked through a `KeyGuard` opened
on that same file (or over HTTP), not by re-reading the CLI's own output.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import keyguard
from keyguard import AuthenticationError, KeyGuard, StoreError
from keyguard.cli import main
from keyguard.client import SignedAuth
from keyguard.crypto import generate_master_key

from .signing_util import asgi_app

TOKEN = re.compile(r"\bkg_[0-9A-Za-z]{16}_[0-9A-Za-z]{30}\b")
PUBLIC_NET = "203.0.113.0/24"  # TEST-NET-3: not private, so the default policy accepts it
PUBLIC_IP = "203.0.113.9"
SRC = str(Path(keyguard.__file__).resolve().parents[1])


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def token(self) -> str:
        found = TOKEN.findall(self.out)
        assert len(found) == 1, self.out
        return str(found[0])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KEYGUARD_* setting from the developer's shell; cwd is the test's own dir."""
    for name in list(os.environ):
        if name.startswith("KEYGUARD_") or name in ("FORCE_COLOR", "PYTHONIOENCODING"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def kg(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """kg("keys", "list", stdin=...) -> Run: the CLI in-process."""

    def run(*args: str, stdin: str | None = None) -> Run:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Run(code, out, err)

    return run


@pytest.fixture
def cli(kg: Callable[..., Run], db: str) -> Callable[..., Run]:
    """Like `kg`, on the test's SQLite file (`--store`)."""
    return lambda *args, **kw: kg("--store", db, *args, **kw)


@pytest.fixture
def guard(db: str) -> Iterator[KeyGuard]:
    """A second, independent KeyGuard on the CLI's store file."""
    g = KeyGuard({"store": db})
    yield g
    g.close()


def one_error(run: Run, code: int) -> str:
    """The run failed with `code` and said so in exactly one line."""
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("keyguard: error: "), run.err
    return lines[0]


def create(cli: Callable[..., Run], *args: str) -> tuple[str, dict[str, Any]]:
    """Create a key with --json; returns (token, key dict)."""
    run = cli("keys", "create", *args, "--json")
    assert run.code == 0, run
    data = run.json()
    return data["token"], data["key"]


# --- create -------------------------------------------------------------------


def test_create_prints_token_once_with_warning_on_stderr(
    cli: Callable[..., Run], guard: KeyGuard
) -> None:
    run = cli(
        "keys", "create", "--owner", "alice", "--name", "ci deploy",
        "--scope", "read", "--scope", "write", "--ip", PUBLIC_NET, "--expires-in", "30d",
    )  # fmt: skip
    assert run.code == 0, run
    token = run.token
    assert run.out.count(token) == 1
    assert token not in run.err
    assert "shown only once" in run.err
    assert run.err.count("\n") == 1  # the warning is the one line on stderr
    key_id = token.split("_")[1]
    assert f"Created key {key_id} (ci deploy) for alice" in run.out

    info = guard.verify(token, client_ip=PUBLIC_IP, scopes=["read", "write"])
    assert (info.id, info.owner, info.name) == (key_id, "alice", "ci deploy")
    assert info.allowed_ips == (PUBLIC_NET,) or list(info.allowed_ips) == [PUBLIC_NET]
    assert info.expires_at is not None
    assert abs((info.expires_at - info.created_at) - timedelta(days=30)) < timedelta(seconds=5)


def test_create_json_parses_and_carries_the_token(cli: Callable[..., Run], guard: KeyGuard) -> None:
    run = cli("keys", "create", "--owner", "bob", "--name", "script", "--scope", "x", "--json")
    assert run.code == 0, run
    data = run.json()
    assert set(data) == {"key", "token"}
    assert TOKEN.fullmatch(data["token"])
    assert data["key"]["owner"] == "bob" and data["key"]["scopes"] == ["x"]
    assert data["token"] not in run.err
    assert guard.verify(data["token"], scopes=["x"]).id == data["key"]["id"]


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        pytest.param("90s", 90, id="seconds"),
        pytest.param("15m", 900, id="minutes"),
        pytest.param("12h", 12 * 3600, id="hours"),
        pytest.param("2w", 14 * 86400, id="weeks"),
    ],
)
def test_create_expires_in_units(cli: Callable[..., Run], duration: str, seconds: int) -> None:
    _, key = create(cli, "--owner", "o", "--name", "n", "--expires-in", duration)
    created = datetime.fromisoformat(key["created_at"])
    expires = datetime.fromisoformat(key["expires_at"])
    assert abs((expires - created).total_seconds() - seconds) < 5


def test_create_without_allowlist_is_clamped_to_policy(cli: Callable[..., Run]) -> None:
    _, key = create(cli, "--owner", "o", "--name", "n", "--expires-in", "365d")
    days = datetime.fromisoformat(key["expires_at"]) - datetime.fromisoformat(key["created_at"])
    assert abs(days - timedelta(days=90)) < timedelta(seconds=5)


def test_create_with_passphrase_from_stdin(cli: Callable[..., Run], guard: KeyGuard) -> None:
    run = cli(
        "keys", "create", "--owner", "o", "--name", "pp", "--passphrase-prompt",
        stdin="correct horse battery\n",
    )  # fmt: skip
    assert run.code == 0, run
    assert "correct horse" not in run.out + run.err
    token = run.token
    assert guard.verify(token, passphrase="correct horse battery").has_passphrase
    with pytest.raises(AuthenticationError) as caught:
        guard.verify(token, passphrase="wrong horse battery")
    assert caught.value.code == "invalid_passphrase"


async def test_create_signing_key_and_reencrypt(
    cli: Callable[..., Run], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = generate_master_key(), generate_master_key()
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", old)
    run = cli("keys", "create", "--owner", "trader", "--name", "bot", "--kind", "signing")
    assert run.code == 0, run
    access = re.search(r"^access key: (\S+)$", run.out, re.M)
    secret = re.search(r"^secret: (\S+)$", run.out, re.M)
    assert access and secret, run.out
    assert secret[1] not in run.err and old not in run.out + run.err
    assert "shown only once" in run.err

    async def call(master_keys: list[str]) -> int:
        g = KeyGuard({"store": db, "signing": {"master_keys": master_keys}})
        try:
            auth = SignedAuth(access[1], secret[1])
            transport = httpx.ASGITransport(asgi_app(g))
            async with httpx.AsyncClient(transport=transport, base_url="http://t", auth=auth) as c:
                return (await c.get("/orders")).status_code
        finally:
            g.close()

    assert await call([old]) == 200

    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", f"{new},{old}")
    run = cli("keys", "reencrypt")
    assert run.code == 0, run
    assert "Re-encrypted 1 signing key(s)" in run.out
    assert secret[1] not in run.out + run.err
    assert await call([new]) == 200  # the old master key can now be dropped

    monkeypatch.delenv("KEYGUARD_MASTER_KEYS")
    assert "master" in one_error(cli("keys", "reencrypt"), 2)


def test_signing_key_json_has_secret_not_token(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", generate_master_key())
    data = cli(
        "keys", "create", "--owner", "t", "--name", "b", "--kind", "signing", "--json"
    ).json()
    assert set(data) == {"key", "secret"}
    assert data["key"]["kind"] == "signing"


# --- list and show ---------------------------------------------------------------


def test_list_table_shows_the_columns(cli: Callable[..., Run], guard: KeyGuard) -> None:
    used, used_key = create(cli, "--owner", "alice", "--name", "used-one", "--scope", "read")
    _, fresh = create(
        cli, "--owner", "alice", "--name", "fresh-one", "--ip", PUBLIC_NET, "--expires-in", "7d"
    )
    guard.verify(used)
    guard.flush()

    run = cli("keys", "list")
    assert run.code == 0 and run.err == "", run
    header = next(line for line in run.out.splitlines() if line.startswith("id "))
    for column in ("name", "hint", "scopes", "created", "last used", "expires", "status"):
        assert column in header
    rows = {k["name"]: line for k in (used_key, fresh) for line in run.out.splitlines()
            if k["id"] in line}  # fmt: skip
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert used_key["hint"] in rows["used-one"] and "read" in rows["used-one"]
    assert rows["used-one"].count(today) >= 2  # created and last used
    assert fresh["hint"] in rows["fresh-one"]
    week = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%d")
    assert week in rows["fresh-one"]
    assert "2 key(s)" in run.out
    assert not TOKEN.search(run.out)
    assert used.split("_")[2] not in run.out


def test_list_owner_all_and_json(cli: Callable[..., Run]) -> None:
    t1, a1 = create(cli, "--owner", "alice", "--name", "a-live")
    t2, a2 = create(cli, "--owner", "alice", "--name", "a-revoked")
    t3, _ = create(cli, "--owner", "bob", "--name", "b-live")
    assert cli("keys", "revoke", a2["id"]).code == 0

    def names(*args: str) -> list[str]:
        run = cli("keys", "list", "--json", *args)
        assert run.code == 0, run
        for token in (t1, t2, t3):
            assert token not in run.out and token.split("_")[2] not in run.out
        return [k["name"] for k in run.json()]

    assert names() == ["a-live", "b-live"]
    assert names("--owner", "alice") == ["a-live"]
    assert names("--owner", "alice", "--all") == ["a-live", "a-revoked"]
    assert names("--all") == ["a-live", "a-revoked", "b-live"]
    assert names("--owner", "nobody") == []

    table = cli("keys", "list", "--all", "--owner", "alice").out
    assert re.search(rf"{a2['id']}.*revoked", table)
    assert re.search(rf"{a1['id']}.*active", table)
    assert "b-live" not in table


def test_show(cli: Callable[..., Run]) -> None:
    token, key = create(cli, "--owner", "alice", "--name", "shown", "--scope", "read")
    run = cli("keys", "show", key["id"])
    assert run.code == 0, run
    assert re.search(rf"^\s*id: {key['id']}$", run.out, re.M)
    assert re.search(r"^\s*name: shown$", run.out, re.M)
    assert key["hint"] in run.out
    as_json = cli("keys", "show", key["id"], "--json").json()
    assert as_json == key
    assert token.split("_")[2] not in run.out


# --- update, revoke, rotate, delete ----------------------------------------------


def _days(key: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(key["expires_at"])
    return (expires - datetime.now(UTC)).total_seconds() / 86400


@pytest.mark.parametrize(
    ("args", "check"),
    [
        pytest.param(
            ["--scope", "models:read"],
            lambda k: k["scopes"] == ["models:read"],
            id="scope-replaces",
        ),
        pytest.param(["--clear-scopes"], lambda k: k["scopes"] == [], id="clear-scopes"),
        pytest.param(
            ["--ip", "198.51.100.0/24"],
            lambda k: k["allowed_ips"] == ["198.51.100.0/24"] and k["scopes"] == ["read", "write"],
            id="ip-replaces",
        ),
        pytest.param(
            ["--clear-ips"],
            lambda k: k["allowed_ips"] == [] and 89.9 < _days(k) <= 90,
            id="clear-ips-clamps-expiry",
        ),
        pytest.param(["--expires-in", "2h"], lambda k: 0.08 < _days(k) < 0.09, id="expires-in"),
        pytest.param(
            ["--name", "renamed"], lambda k: k["name"] == "renamed" and k["scopes"], id="name"
        ),
        pytest.param(
            ["--rate-limit", "10/second"], lambda k: k["rate_limit"] == "10/second", id="rate"
        ),
    ],
)
def test_update(
    cli: Callable[..., Run], guard: KeyGuard, args: list[str], check: Callable[[Any], bool]
) -> None:
    token, key = create(
        cli, "--owner", "o", "--name", "n", "--scope", "read", "--scope", "write",
        "--ip", PUBLIC_NET, "--expires-in", "365d",
    )  # fmt: skip
    run = cli("keys", "update", key["id"], *args, "--json")
    assert run.code == 0, run
    assert check(run.json()), run.json()
    assert check(guard.keys.get(key["id"]).to_dict())
    assert token.split("_")[2] not in run.out + run.err


def test_update_scope_takes_effect(cli: Callable[..., Run], guard: KeyGuard) -> None:
    token, key = create(cli, "--owner", "o", "--name", "n", "--scope", "read")
    assert cli("keys", "update", key["id"], "--scope", "write").code == 0
    assert guard.verify(token, scopes=["write"]).scopes
    with pytest.raises(keyguard.AuthorizationError):
        guard.verify(token, scopes=["read"])


def test_revoke(cli: Callable[..., Run], guard: KeyGuard) -> None:
    token, key = create(cli, "--owner", "o", "--name", "gone")
    run = cli("keys", "revoke", key["id"])
    assert run.code == 0 and f"Revoked key {key['id']} (gone)" in run.out
    with pytest.raises(AuthenticationError) as caught:
        guard.verify(token)
    assert caught.value.code == "revoked_key"
    assert cli("keys", "list", "--json").json() == []


def test_rotate_with_grace(cli: Callable[..., Run], db: str) -> None:
    old, key = create(cli, "--owner", "o", "--name", "rotating")
    run = cli("keys", "rotate", key["id"], "--grace", "24h")
    assert run.code == 0, run
    new = run.token
    assert new != old and new.split("_")[1] == key["id"]
    assert "shown only once" in run.err and new not in run.err and old not in run.out
    assert f"Rotated key {key['id']}" in run.out

    later = {"now": time.time()}
    g = KeyGuard({"store": db}, clock=lambda: later["now"])
    try:
        assert g.verify(old).id == g.verify(new).id == key["id"]  # within grace
        later["now"] += 25 * 3600
        g.forget(key["id"])
        assert g.verify(new).id == key["id"]
        with pytest.raises(AuthenticationError):
            g.verify(old)
    finally:
        g.close()


def test_rotate_json_and_no_grace(cli: Callable[..., Run], guard: KeyGuard) -> None:
    old, key = create(cli, "--owner", "o", "--name", "r")
    data = cli("keys", "rotate", key["id"], "--json").json()
    assert data["key"]["id"] == key["id"]
    assert guard.verify(data["token"]).id == key["id"]
    with pytest.raises(AuthenticationError):
        guard.verify(old)


def test_delete(cli: Callable[..., Run], guard: KeyGuard) -> None:
    token, key = create(cli, "--owner", "o", "--name", "doomed")
    run = cli("keys", "delete", key["id"], "--yes")
    assert run.code == 0 and f"Deleted key {key['id']}" in run.out
    with pytest.raises(AuthenticationError):
        guard.verify(token)
    assert "no key with id" in one_error(cli("keys", "show", key["id"]), 1)
    assert cli("keys", "list", "--all", "--json").json() == []


# --- settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "toml",
    [
        pytest.param('store = "{db}"\n[policy]\nallow_private_ips = true\n', id="top-level"),
        pytest.param(
            '[keyguard]\nstore = "{db}"\n[keyguard.policy]\nallow_private_ips = true\n',
            id="keyguard-table",
        ),
    ],
)
def test_settings_file(
    kg: Callable[..., Run], tmp_path: Path, db: str, guard: KeyGuard, toml: str
) -> None:
    path = tmp_path / "keyguard.toml"
    path.write_text(toml.format(db=db))
    run = kg("--settings", str(path), "keys", "create", "--owner", "o", "--name", "lan",
             "--ip", "10.0.0.0/8")  # fmt: skip
    assert run.code == 0, run
    assert guard.keys.get(run.token.split("_")[1]).allowed_ips  # landed in the file's store
    assert not (tmp_path / "keyguard.db").exists()


def test_env_store_and_precedence(
    kg: Callable[..., Run], tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYGUARD_STORE", db)
    _, key = create(kg, "--owner", "o", "--name", "via-env")
    assert [k["id"] for k in kg("--store", db, "keys", "list", "--json").json()] == [key["id"]]

    other = f"sqlite:///{tmp_path / 'other.db'}"
    path = tmp_path / "s.toml"
    path.write_text(f'store = "{other}"\n')
    # as for KeyGuard(dict): the file (the settings dict) beats the environment,
    # and --store beats both
    assert kg("--settings", str(path), "keys", "list", "--json").json() == []
    assert len(kg("--settings", str(path), "--store", db, "keys", "list", "--json").json()) == 1


def test_env_policy_limit(cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_POLICY__MAX_KEYS_PER_OWNER", "1")
    assert cli("keys", "create", "--owner", "o", "--name", "first").code == 0
    run = cli("keys", "create", "--owner", "o", "--name", "second")
    assert "maximum of 1" in one_error(run, 2)
    assert not TOKEN.search(run.out)
    assert cli("keys", "create", "--owner", "other", "--name", "first").code == 0


def test_default_store_is_keyguard_db_in_cwd(kg: Callable[..., Run], tmp_path: Path) -> None:
    _, key = create(kg, "--owner", "o", "--name", "default")
    assert (tmp_path / "keyguard.db").is_file()
    with closing(KeyGuard({"store": f"sqlite:///{tmp_path / 'keyguard.db'}"})) as g:
        assert g.keys.get(key["id"]).name == "default"


# --- bad input: one line on stderr, a non-zero exit, never a traceback ------------

C = ["keys", "create", "--owner", "o", "--name", "n"]
BAD = [
    pytest.param(
        ["keys", "create", "--owner", "o"], {}, 2, "Missing option '--name'", id="no-name"
    ),
    pytest.param(
        ["keys", "create", "--name", "n"], {}, 2, "Missing option '--owner'", id="no-owner"
    ),
    pytest.param([*C, "--expires-in", "3x"], {}, 2, "'3x' is not a duration", id="duration-create"),
    pytest.param(["keys", "rotate", "k", "--grace", "3x"], {}, 2, "--grace", id="duration-grace"),
    pytest.param(["keys", "update", "k", "--expires-in", "3x"], {}, 2, "3x", id="duration-update"),
    pytest.param([*C, "--expires-in", "0s"], {}, 2, "expires_in", id="duration-zero"),
    pytest.param(["keys", "show", "nope"], {}, 1, "no key with id 'nope'", id="show-unknown"),
    pytest.param(["keys", "revoke", "nope"], {}, 1, "no key with id", id="revoke-unknown"),
    pytest.param(["keys", "rotate", "nope"], {}, 1, "no key with id", id="rotate-unknown"),
    pytest.param(["keys", "delete", "nope", "--yes"], {}, 1, "no key with id", id="delete-unknown"),
    pytest.param(["keys", "update", "nope", "--name", "x"], {}, 1, "no key", id="update-unknown"),
    pytest.param(["keys", "update", "k"], {}, 2, "nothing to change", id="update-nothing"),
    pytest.param([*C, "--ip", "10.0.0.0/8"], {}, 2, "private", id="private-ip"),
    pytest.param([*C, "--ip", "127.0.0.1"], {}, 2, "allowed_ips", id="loopback-ip"),
    pytest.param([*C, "--ip", "nonsense"], {}, 2, "allowed_ips", id="bad-ip"),
    pytest.param([*C, "--scope", "bad scope"], {}, 2, "scopes", id="bad-scope"),
    pytest.param([*C, "--rate-limit", "5/fortnight"], {}, 2, "rate_limit", id="bad-rate"),
    pytest.param([*C, "--kind", "magic"], {}, 2, "--kind", id="bad-kind"),
    pytest.param(
        [*C, "--kind", "signing"],
        {},
        2,
        "a master key to encrypt their secret: export KEYGUARD_MASTER_KEYS=$(keyguard master-key "
        "new)",
        id="signing-no-master",
    ),  # fmt: skip
    pytest.param([*C, "--bogus"], {}, 2, "No such option '--bogus'", id="unknown-option"),
    pytest.param(["--bogus", "keys", "list"], {}, 2, "--bogus", id="unknown-root-option"),
    pytest.param(["keys", "frobnicate"], {}, 2, "frobnicate", id="unknown-command"),
    pytest.param(["keys", "list"], {"KEYGUARD_CACHE_TTL": "abc"}, 2, "cache_ttl", id="env-value"),
    pytest.param(
        ["keys", "list"],
        {"KEYGUARD_POLICY__MAX_KEYS_PER_OWNER": "many"},
        2,
        "policy.max_keys_per_owner",
        id="env-section-value",
    ),  # fmt: skip
    pytest.param(["keys", "list"], {"KEYGUARD_PEPPER": "short"}, 2, "pepper", id="env-pepper"),
    pytest.param(
        ["keys", "list"],
        {"KEYGUARD_MASTER_KEYS": "sup3r-s3cret!"},
        2,
        "master_keys: entry 0 is not a base64url-encoded 32-byte key (make one with: keyguard "
        "master-key new)",
        id="env-master-key",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("args", "env", "code", "fragment"), BAD)
def test_bad_input_is_one_line(
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    code: int,
    fragment: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = one_error(cli(*args), code)
    assert fragment in line
    for value in env.values():
        assert value not in line  # a bad pepper or master key is never echoed


@pytest.mark.parametrize(
    ("args", "files", "fragment"),
    [
        pytest.param(["--store", "bogus://x"], {}, "store", id="store-scheme"),
        pytest.param(["--settings", "{dir}/missing.toml"], {}, "cannot read", id="file-missing"),
        pytest.param(["--settings", "{dir}/s.toml"], {"s.toml": "store = ["}, "TOML", id="toml"),
        pytest.param(["--settings", "{dir}/s.toml"], {"s.toml": "store = 5"}, "store", id="type"),
        pytest.param(
            ["--settings", "{dir}/s.toml"], {"s.toml": "nonsense = 5"}, "nonsense", id="unknown"
        ),
        pytest.param(
            ["--settings", "{dir}/s.toml"],
            {"s.toml": "[policy]\nmax_keys_per_owner = -1"},
            "policy.max_keys_per_owner",
            id="section-value",
        ),  # fmt: skip
    ],
)
def test_bad_settings_are_one_line(
    kg: Callable[..., Run], tmp_path: Path, args: list[str], files: dict[str, str], fragment: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    run = kg(*[a.format(dir=tmp_path) for a in args], "keys", "list")
    assert fragment in one_error(run, 2)


def test_passphrase_prompt_needs_stdin(cli: Callable[..., Run]) -> None:
    assert "passphrase" in one_error(cli(*C, "--passphrase-prompt", stdin=""), 2)
    run = cli(*C, "--passphrase-prompt", stdin="short\n")
    assert "passphrase" in one_error(run, 2) and "short" not in run.err.split(":", 2)[2]
    assert not TOKEN.search(run.out)


def test_help_and_bare_command(kg: Callable[..., Run]) -> None:
    run = kg("keys", "create", "--help")
    assert run.code == 0 and "--owner" in run.out and "--passphrase-prompt" in run.out
    bare = kg()
    assert bare.code == 2 and "Usage: keyguard" in bare.err and "keys" in bare.err
    assert len(bare.err.splitlines()) > 3  # the help, readable, not squashed onto one line


# --- the real command, as a subprocess --------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGUARD_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def sh(*argv: str, cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=_env(**env), input=stdin, capture_output=True, text=True, timeout=30
    )


SCRIPT = Path(sys.executable).with_name("keyguard")


def test_python_m_keyguard_and_console_script(tmp_path: Path) -> None:
    created = sh(
        sys.executable, "-m", "keyguard", "keys", "create", "--owner", "o", "--name", "sub",
        "--scope", "read", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    assert data["token"] not in created.stderr
    assert (tmp_path / "keyguard.db").is_file()  # the embedded default, in cwd

    if not SCRIPT.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    listed = sh(str(SCRIPT), "keys", "list", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert data["key"]["id"] in listed.stdout and data["key"]["hint"] in listed.stdout
    with closing(KeyGuard({"store": f"sqlite:///{tmp_path / 'keyguard.db'}"})) as g:
        assert g.verify(data["token"], scopes=["read"]).name == "sub"


def test_subprocess_passphrase_from_a_pipe(tmp_path: Path) -> None:
    run = sh(
        sys.executable, "-m", "keyguard", "keys", "create", "--owner", "o", "--name", "p",
        "--passphrase-prompt", cwd=tmp_path, stdin="a long passphrase\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # only the warning: no getpass echo warning, no prompt, no passphrase
    assert run.stderr.splitlines() == [
        "Store it now: it is shown only once and cannot be recovered."
    ]
    token = TOKEN.search(run.stdout)
    assert token
    with closing(KeyGuard({"store": f"sqlite:///{tmp_path / 'keyguard.db'}"})) as g:
        assert g.verify(token[0], passphrase="a long passphrase").has_passphrase


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        pytest.param(["keys", "show", "nope"], {}, 1, id="not-found"),
        pytest.param(["keys", "create", "--owner", "o"], {}, 2, id="usage"),
        pytest.param(["keys", "list"], {"KEYGUARD_STORE": "nope://"}, 2, id="env-settings"),
    ],
)
def test_subprocess_errors(tmp_path: Path, args: list[str], env: dict[str, str], code: int) -> None:
    run = sh(sys.executable, "-m", "keyguard", *args, cwd=tmp_path, **env)
    assert run.returncode == code
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("keyguard: error: ")


def test_subprocess_ascii_terminal(tmp_path: Path) -> None:
    """The hint's ellipsis on an ASCII-only stdout: escaped, not a traceback."""
    db = f"sqlite:///{tmp_path / 'k.db'}"
    created = sh(sys.executable, "-m", "keyguard", "--store", db, "keys", "create",
                 "--owner", "o", "--name", "n\u00e9", cwd=tmp_path,
                 PYTHONIOENCODING="ascii")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert TOKEN.search(created.stdout)  # the token got out even though the name did not
    listed = sh(sys.executable, "-m", "keyguard", "--store", db, "keys", "list", cwd=tmp_path,
                PYTHONIOENCODING="ascii")  # fmt: skip
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "kg_" in listed.stdout


def test_unrelated_keyguard_env_is_ignored(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYGUARD_REQUIRE_SERVERS", "1")  # the test suite's, not a setting
    assert cli("keys", "list", "--json").json() == []


def test_broken_store_is_one_line(kg: Callable[..., Run], tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database " * 20)
    run = kg("--store", f"sqlite:///{tmp_path / 'junk.db'}", "keys", "list")
    assert "StoreError" in one_error(run, 1)


# --- conventions (SPEC section 8) -------------------------------------------------


def test_version_and_short_help(kg: Callable[..., Run]) -> None:
    run = kg("--version")
    assert run.code == 0 and run.out == f"keyguard {keyguard.__version__}\n"
    for args in (["-h"], ["keys", "-h"], ["keys", "create", "-h"], ["master-key", "new", "-h"]):
        run = kg(*args)
        assert run.code == 0 and run.out.startswith("Usage: keyguard"), (args, run)
    assert "_KEYGUARD_COMPLETE=bash_source keyguard" in kg("-h").out  # completion documented


@pytest.mark.parametrize("columns", ["60", "80", "120"])
def test_help_tells_the_passphrase_rules(
    kg: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    out = kg("keys", "create", "-h").out
    text = " ".join(out.split())
    assert "8 to 256 characters" in text and "cannot be recovered" in text
    assert "KG-Passphrase: <passphrase>" in out  # whole, on one line: never "KG-⏎Passphrase"


def test_create_quiet_prints_only_the_token(cli: Callable[..., Run], guard: KeyGuard) -> None:
    run = cli("keys", "create", "--owner", "o", "--name", "q", "--quiet")
    assert run.code == 0 and run.err == "", run
    assert TOKEN.fullmatch(run.out.rstrip("\n")) and run.out.count("\n") == 1
    assert guard.verify(run.out.strip()).name == "q"


def test_create_quiet_signing_key(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", generate_master_key())
    run = cli("keys", "create", "--owner", "o", "--name", "s", "--kind", "signing", "-q")
    assert run.code == 0 and run.err == "", run
    access_key, secret = run.out.splitlines()
    with closing(KeyGuard({"store": db})) as g:
        assert g.keys.get(access_key).kind == "signing"
    assert len(secret) >= 32 and secret != access_key


def test_create_max_uses_and_metadata(cli: Callable[..., Run], guard: KeyGuard) -> None:
    token, key = create(
        cli, "--owner", "o", "--name", "trial", "--max-uses", "2",
        "--metadata", "plan=trial", "--metadata", "team=ml=ops",
    )  # fmt: skip
    assert key["max_uses"] == 2 and key["metadata"] == {"plan": "trial", "team": "ml=ops"}
    assert guard.keys.get(key["id"]).metadata == {"plan": "trial", "team": "ml=ops"}
    shown = cli("keys", "show", key["id"]).out
    assert re.search(r"^\s*metadata: plan=trial, team=ml=ops$", shown, re.M)
    assert "max_uses" in one_error(cli(*C, "--max-uses", "0"), 2)
    assert "KEY=VALUE" in one_error(cli(*C, "--metadata", "novalue"), 2)


def test_option_refusals_of_click_never_echo_a_pasted_secret(
    cli: Callable[..., Run], guard: KeyGuard
) -> None:
    """--max-uses and --kind refuse what is not a number or a word without echoing
    it (a token, a signing secret or a passphrase pasted there); a typo is quoted.
    (--settings FILE and an unknown command are named as given: a path and a
    command name, as click prints them.)"""
    token = guard.keys.create(owner="o", name="victim").token or ""
    for pasted in (token, "x" * 39 + "WXYZ", "Hunter2-Hunter2x", "correct horse battery"):
        for option in ("--max-uses", "--kind"):
            run = cli(*C, option, pasted)
            line = one_error(run, 2)
            assert option in line and pasted not in run.out + run.err, line
            assert pasted[4:] not in run.err and "…" in line, line
    assert "'1.5' is not a whole number" in one_error(cli(*C, "--max-uses", "1.5"), 2)
    line = one_error(cli(*C, "--kind", "Signin"), 2)
    assert "'Signin' is not one of 'bearer', 'signing'" in line
    assert create(cli, "--owner", "o", "--name", "n", "--max-uses", " 7 ")[1]["max_uses"] == 7
    assert "positive" in one_error(cli(*C, "--max-uses", "-3"), 2)


def test_update_rate_limit_none_and_metadata(cli: Callable[..., Run], guard: KeyGuard) -> None:
    _, key = create(cli, "--owner", "o", "--name", "r", "--rate-limit", "5/second")
    for word in ("none", "None", "NULL"):
        assert cli("keys", "update", key["id"], "--rate-limit", "9/minute").code == 0
        run = cli("keys", "update", key["id"], "--rate-limit", word, "--json")
        assert run.code == 0 and run.json()["rate_limit"] is None, run
    assert guard.keys.get(key["id"]).rate_limit is None
    assert cli("keys", "update", key["id"], "--metadata", "a=1").code == 0
    assert guard.keys.get(key["id"]).metadata == {"a": "1"}


def test_show_prints_lists_not_python_reprs(cli: Callable[..., Run]) -> None:
    _, key = create(cli, "--owner", "o", "--name", "s", "--scope", "read", "--scope", "write",
                    "--ip", PUBLIC_NET, "--ip", "198.51.100.7")  # fmt: skip
    out = cli("keys", "show", key["id"]).out
    assert re.search(r"^\s*scopes: read, write$", out, re.M), out
    assert re.search(rf"^\s*allowed_ips: {PUBLIC_NET}, 198\.51\.100\.7(/32)?$", out, re.M), out
    assert re.search(r"^\s*status: active$", out, re.M)
    assert "[" not in out and "{" not in out and "'" not in out


UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def test_names_and_owners_with_terminal_controls_are_refused(cli: Callable[..., Run]) -> None:
    for field, value in (
        ("--name", "ok\x9b2J"),
        ("--name", "x\u202eevil"),
        ("--owner", "a\x1b[1m"),
    ):
        args = {"--owner": "o", "--name": "n", field: value}
        run = cli("keys", "create", *[x for kv in args.items() for x in kv])
        assert f"error: {field[2:]}: " in one_error(run, 2) and value not in run.err


def test_what_the_cli_prints_from_a_key_cannot_drive_the_terminal(
    cli: Callable[..., Run], guard: KeyGuard, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata (not checked for controls) and rows stored before names were (or by
    another tool) are printed with ESC, C1, bidi controls and line breaks escaped,
    by every command that prints them; --json escapes them as JSON does."""
    fake = "x\r\x1b[2K\x1b[1A        scopes: read\n        status: revoked\x9b0m\u202e"
    key = guard.keys.create(owner="o", name="n", metadata={"note": fake, "\x1b]0;t\x07": 1})
    store = guard.store
    store.modify(key.id, lambda r: r.replace(name="ok\x9b2J\x9b31mREVOKED \u202eevil",
                                             owner="acme\u2066\x1bc"))  # fmt: skip
    runs = [
        cli("keys", "list"),
        cli("keys", "list", "--wide"),
        cli("keys", "show", key.id),
        cli("keys", "show", key.id, "--json"),
        cli("keys", "list", "--json"),
        cli("keys", "update", key.id, "--scope", "read"),
        cli("keys", "suspend", key.id),
        cli("keys", "resume", key.id),
    ]
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    runs.append(cli("keys", "delete", key.id))  # the question names the key
    runs.append(cli("keys", "rotate", key.id))
    runs.append(cli("keys", "revoke", key.id))
    for run in runs:
        assert not UNSAFE.search(run.out + run.err), (run, UNSAFE.findall(run.out + run.err))
    shown = runs[2].out
    assert "note=x\\r\\x1b[2K\\x1b[1A        scopes: read\\n" in shown
    assert "ok\\x9b2J\\x9b31mREVOKED \\u202eevil" in shown and "acme\\u2066\\x1bc" in shown
    assert "ok\\x9b2J" in runs[0].out and "Delete key" in runs[8].err
    assert json.loads(runs[3].out)["metadata"]["note"] == fake  # JSON: escaped, same value


def test_master_key_new(kg: Callable[..., Run], db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = kg("master-key", "new"), kg("master-key", "new")
    assert first.code == 0 and re.fullmatch(r"[A-Za-z0-9_-]{43}\n", first.out), first
    assert first.out != second.out
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", first.out.strip())  # it is what the setting takes
    run = kg("--store", db, "keys", "create", "--owner", "o", "--name", "s", "--kind", "signing")
    assert run.code == 0, run


def test_delete_without_a_terminal_needs_yes(cli: Callable[..., Run], guard: KeyGuard) -> None:
    token, key = create(cli, "--owner", "o", "--name", "kept")
    line = one_error(cli("keys", "delete", key["id"], stdin=""), 2)
    assert "--yes" in line and "not a terminal" in line
    assert guard.verify(token).id == key["id"]  # still there
    assert cli("keys", "delete", key["id"], "--yes", stdin="").code == 0


def test_rotate_says_until_when_the_old_secret_works(
    cli: Callable[..., Run], guard: KeyGuard
) -> None:
    first, key = create(cli, "--owner", "o", "--name", "r")
    run = cli("keys", "rotate", key["id"], "--grace", "2h")
    until = datetime.now(UTC) + timedelta(hours=2)
    assert run.code == 0, run
    line = next(line for line in run.out.splitlines() if "old secret" in line)
    assert until.strftime("%Y-%m-%d") in line and "UTC" in line
    assert "rotating again" in line and "ends that grace" in line
    second = run.token
    assert guard.verify(first).id == guard.verify(second).id  # both work in the grace

    data = cli("keys", "rotate", key["id"], "--grace", "1h", "--json").json()
    valid_until = datetime.fromisoformat(data["old_secret_valid_until"])
    assert timedelta(minutes=59) < valid_until - datetime.now(UTC) <= timedelta(hours=1)
    guard.forget(key["id"])
    with pytest.raises(AuthenticationError):
        guard.verify(first)  # the second rotate ended the first one's grace, as it said
    assert guard.verify(second).id == key["id"] == guard.verify(data["token"]).id

    run = cli("keys", "rotate", key["id"])
    assert "The old secret stopped working now." in run.out


def test_rotate_says_the_old_secret_stops_when_the_key_expires(
    cli: Callable[..., Run], guard: KeyGuard
) -> None:
    """A grace longer than the key's life ends with the key: that is the end said,
    in words and in --json, not the grace's."""
    first, key = create(cli, "--owner", "o", "--name", "r", "--ip", PUBLIC_NET,
                        "--expires-in", "1d")  # fmt: skip
    expires = datetime.fromisoformat(key["expires_at"])
    run = cli("keys", "rotate", key["id"], "--grace", "30d")
    assert run.code == 0, run
    line = next(line for line in run.out.splitlines() if "old secret" in line)
    assert f"until {expires:%Y-%m-%d %H:%M} UTC (when the key expires)" in line, line
    assert guard.verify(first, client_ip=PUBLIC_IP).id == key["id"]  # in the grace
    data = cli("keys", "rotate", key["id"], "--grace", "30d", "--json").json()
    assert datetime.fromisoformat(data["old_secret_valid_until"]) == expires
    data = cli("keys", "rotate", key["id"], "--grace", "2h", "--json").json()
    until = datetime.fromisoformat(data["old_secret_valid_until"])  # shorter: the grace's
    assert timedelta(minutes=119) < until - datetime.now(UTC) <= timedelta(hours=2)
    run = cli("keys", "rotate", key["id"], "--grace", "2h")
    assert "(when the key expires)" not in run.out and "keeps working until" in run.out


def test_key_limit_error_suggests_revoke_or_delete(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYGUARD_POLICY__MAX_KEYS_PER_OWNER", "1")
    assert cli("keys", "create", "--owner", "o", "--name", "one").code == 0
    line = one_error(cli("keys", "create", "--owner", "o", "--name", "two"), 2)
    assert "maximum of 1" in line and "revoke or delete" in line
    assert "keyguard keys list --owner" in line and "policy.max_keys_per_owner" in line


def test_private_ip_refusal_says_how_to_allow_it(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = one_error(cli(*C, "--ip", "127.0.0.1"), 2)
    assert "policy.allow_private_ips" in line and "KEYGUARD_POLICY__ALLOW_PRIVATE_IPS=1" in line
    monkeypatch.setenv("KEYGUARD_POLICY__ALLOW_PRIVATE_IPS", "1")  # as the message says
    assert cli(*C, "--ip", "127.0.0.1", "--json").json()["key"]["allowed_ips"] == ["127.0.0.1/32"]


@pytest.fixture
def listed(cli: Callable[..., Run]) -> list[dict[str, Any]]:
    keys = []
    for args in (
        ["--owner", "acme-corporation", "--name", "a rather long name for a key",
         "--scope", "inference", "--scope", "models:read", "--scope", "billing:write"],
        ["--owner", "bob", "--name", "ci", "--ip", PUBLIC_NET, "--expires-in", "30d"],
    ):  # fmt: skip
        keys.append(create(cli, *args)[1])
    return keys


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_list_fits_the_terminal(
    cli: Callable[..., Run],
    listed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    run = cli("keys", "list")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert all(len(line) <= columns for line in lines[1:]), run.out  # line 0 names the store
    for key in listed:
        row = next(line for line in lines if key["id"] in line)
        assert "active" in row  # id and status always; a long name wraps onto another line
    assert "--wide shows all)" in " ".join(run.out.split())


def test_list_wide_and_the_store_it_read(
    cli: Callable[..., Run], listed: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    run = cli("keys", "list", "--wide")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0] == f"2 key(s) in {db}"  # which file: another directory is another store
    header = next(line for line in lines if line.startswith("id "))
    for column in ("owner", "name", "hint", "scopes", "created", "last used", "expires",
                   "status", "kind", "allowed IPs", "rate limit", "max uses"):  # fmt: skip
        assert column in header, header
    row = next(line for line in lines if listed[1]["id"] in line)
    assert listed[1]["hint"] in row and PUBLIC_NET in row and "bearer" in row
    assert "hidden" not in run.out


def test_completion_script(tmp_path: Path) -> None:
    if not SCRIPT.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    run = sh(str(SCRIPT), cwd=tmp_path, _KEYGUARD_COMPLETE="bash_source")
    assert run.returncode == 0 and "_keyguard_completion" in run.stdout, run.stderr
    words = sh(str(SCRIPT), cwd=tmp_path, _KEYGUARD_COMPLETE="bash_complete",
               COMP_WORDS="keyguard keys ro", COMP_CWORD="2")  # fmt: skip
    assert "rotate" in words.stdout


# --- driver errors: the cause, once, in plain words ------------------------------


@pytest.mark.servers
def test_postgresql_database_missing_is_named_once(postgres_admin_url: str, tmp_path: Path) -> None:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(postgres_admin_url)
    url = (f"postgresql://{p.get('user', 'postgres')}:pw-not-shown@{p.get('host', '127.0.0.1')}"
           f":{p.get('port', 5432)}/kg_no_such_db_{os.getpid()}?pool_timeout=1")  # fmt: skip
    run = sh(sys.executable, "-m", "keyguard", "--store", url, "keys", "list", cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr  # no repeated pool warnings
    assert lines[0].startswith("keyguard: error: StoreError: postgresql store ")
    assert f'database "kg_no_such_db_{os.getpid()}" does not exist' in lines[0]
    assert "pw-not-shown" not in run.stderr


def _bad_postgres_url(admin_url: str, database: str, **query: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(admin_url)
    user, host, port = p.get("user", "postgres"), p.get("host", "127.0.0.1"), p.get("port", 5432)
    params = "&".join(f"{k}={v}" for k, v in {"pool_timeout": "1", **query}.items())
    return f"postgresql://{user}:pw-not-shown@{host}:{port}/{database}?{params}"


@pytest.mark.servers
def test_postgresql_store_error_from_python_says_why(
    postgres_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """From Python, not only the CLI: the StoreError's own text carries the driver's
    reason, on one line and without the password; keyguard's pool logs its failed
    connects once, not once a second."""
    database = f"kg_no_such_db_{os.getpid()}"
    url = _bad_postgres_url(postgres_admin_url, database, password="qs-not-shown")
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        with closing(KeyGuard({"store": url})) as g, pytest.raises(StoreError) as info:
            g.keys.list()
        time.sleep(1.5)  # the pool keeps retrying in the background meanwhile
    text = str(info.value)
    assert text.startswith("postgresql store ") and "\n" not in text
    assert text.endswith(f': database "{database}" does not exist'), text
    assert "pw-not-shown" not in text and "qs-not-shown" not in text
    pool_lines = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert len(pool_lines) <= 2, pool_lines  # "error connecting in 'keyguard'", once
    assert all("not-shown" not in line for line in pool_lines)


def test_postgresql_refused_connection_from_python(tmp_path: Path) -> None:
    with socket.socket() as s:  # bound, never listening: refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"postgresql://u:pw-not-shown@127.0.0.1:{port}/x?pool_timeout=0.5"
        with closing(KeyGuard({"store": url})) as g, pytest.raises(StoreError) as info:
            g.keys.get("k")
    assert str(info.value) == f"postgresql store 127.0.0.1:{port}/x: Connection refused"


def test_postgresql_reason_never_shows_a_password() -> None:
    from keyguard.stores.postgresql import reason

    said = Exception(
        'missing "=" after "x" in connection info string: host=db password=hunter2 '
        "sslpassword='a b' postgresql://app:s3cret@db/keys and the-url-pw again\nDETAIL: more"
    )
    text = reason(said, ("the-url-pw",))
    assert "hunter2" not in text and "a b" not in text and "s3cret" not in text
    assert "the-url-pw" not in text and "DETAIL" not in text
    assert "password=****" in text and "postgresql://****@db/keys" in text


def test_only_keyguards_pool_is_quietened(caplog: pytest.LogCaptureFixture) -> None:
    import keyguard.stores.postgresql  # noqa: F401  (installs the filter)

    pool_log = logging.getLogger("psycopg.pool")
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        for name in ("keyguard", "keyguard", "theirs", "theirs", "keyguard"):
            pool_log.warning("error connecting in %r: %s", name, f"refused {os.getpid()}")
    said = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert said.count(f"error connecting in 'theirs': refused {os.getpid()}") == 2
    assert said.count(f"error connecting in 'keyguard': refused {os.getpid()}") == 1


def test_redis_connection_refused_is_named_once(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"redis://:pw-not-shown@127.0.0.1:{port}/0"
        run = sh(sys.executable, "-m", "keyguard", "--store", url, "keys", "list", cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"keyguard: error: StoreError: redis store 127.0.0.1:{port}/0")
    assert "Connection refused" in lines[0] and "pw-not-shown" not in run.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--store", "bogus://"], {}, id="store"),
        pytest.param([], {"KEYGUARD_PUBLIC_PATHS": '["/a", 5]'}, id="list-item"),
        pytest.param([], {"KEYGUARD_TRUSTED_PROXIES": "nonsense"}, id="proxies"),
        pytest.param([], {"KEYGUARD_LOCAL_CACHE_SIZE": "1.5"}, id="int"),
    ],
)
def test_settings_errors_have_no_pydantic_wording(
    kg: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = one_error(kg(*args, "keys", "list"), 2)
    for pydantic in ("Value error", "Input should", "valid tuple", "validation error"):
        assert pydantic not in line, line


# --- a store that is not there: read, never made -----------------------------------


def test_read_only_commands_do_not_create_the_store(
    kg: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "keyguard.db"
    run = kg("keys", "list")
    assert run.code == 0 and run.err == "", run  # an empty listing is an answer (as gh)
    assert run.out == (
        f"no key store at {default} yet (0 keys); another store: --store URL or KEYGUARD_STORE\n"
    )
    run = kg("keys", "list", "--json")
    assert run.code == 0 and run.out == "[]\n" and f"no key store at {default} yet" in run.err
    line = one_error(kg("keys", "show", "AbCdEfGh12345678"), 1)
    assert "no key with id 'AbCdEfGh12345678'" in line and f"no key store at {default}" in line
    assert "--store URL or KEYGUARD_STORE" in line
    for args in (["revoke", "k"], ["suspend", "k"], ["resume", "k"], ["rotate", "k"],
                 ["update", "k", "--name", "x"], ["delete", "k", "--yes"]):  # fmt: skip
        assert f"no key store at {default}" in one_error(kg("keys", *args), 1), args
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", generate_master_key())
    run = kg("keys", "reencrypt")
    assert run.code == 0 and "nothing to re-encrypt" in run.out, run
    deep = tmp_path / "deep" / "er" / "keys.db"
    run = kg("--store", f"sqlite:///{deep}", "keys", "list")
    assert run.code == 0 and f"no key store at {deep} yet (0 keys)" in run.out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no directory

    for args in (["-h"], ["keys", "list", "-h"]):  # and the help says so
        assert "no key store at PATH yet (0 keys)" in " ".join(kg(*args).out.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    assert kg("keys", "create", "--owner", "o", "--name", "n").code == 0  # a write makes it
    assert default.is_file()
    assert (
        kg("--store", f"sqlite:///{deep}", "keys", "create", "--owner", "o", "--name", "n").code
        == 0
    )
    assert deep.is_file()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_read_only_commands_leave_a_database_that_is_not_a_store_untouched(
    kg: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wal: bool
) -> None:
    """An existing SQLite file without keyguard's table (the app's own database, an
    empty file) is answered as a store that is not there: no tables, no pepper, no
    WAL mode written, not even a -wal or -shm file beside it; a write sets it up."""
    import sqlite3

    app_db, empty = tmp_path / "app.db", tmp_path / "empty.db"
    with closing(sqlite3.connect(app_db)) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.commit()
    empty.touch()
    before = _snapshot(tmp_path)
    monkeypatch.setenv("KEYGUARD_MASTER_KEYS", generate_master_key())
    for path in (app_db, empty):
        store = ["--store", f"sqlite:///{path}"]
        run = kg(*store, "keys", "list")
        assert run.code == 0 and run.out.startswith(f"no key store at {path} yet (0 keys)"), run
        run = kg(*store, "keys", "list", "--json")
        assert run.code == 0 and run.out == "[]\n" and f"no key store at {path} yet" in run.err
        line = one_error(kg(*store, "keys", "show", "AbCdEfGh12345678"), 1)
        assert "no key with id 'AbCdEfGh12345678'" in line and f"no key store at {path}" in line
        for args in (["revoke", "k"], ["suspend", "k"], ["resume", "k"], ["rotate", "k"],
                     ["update", "k", "--name", "x"], ["delete", "k", "--yes"]):  # fmt: skip
            assert f"no key store at {path}" in one_error(kg(*store, "keys", *args), 1), args
        run = kg(*store, "keys", "reencrypt")
        assert run.code == 0 and "nothing to re-encrypt" in run.out, run
    assert _snapshot(tmp_path) == before  # not a byte, not a file
    with closing(sqlite3.connect(app_db)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert mode == ("wal" if wal else "delete") and tables == ["users"]

    store = ["--store", f"sqlite:///{app_db}"]  # a write makes it a store, beside the app's
    token, key = create(lambda *a: kg(*store, *a), "--owner", "o", "--name", "n")
    assert kg(*store, "keys", "show", key["id"]).code == 0
    assert [k["id"] for k in kg(*store, "keys", "list", "--json").json()] == [key["id"]]
    g = KeyGuard({"store": f"sqlite:///{app_db}"})
    assert g.verify(token).id == key["id"]
    g.close()


def test_a_file_that_is_no_database_is_named_and_left_alone(
    kg: Callable[..., Run], tmp_path: Path
) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("not a database")
    line = one_error(kg("--store", f"sqlite:///{junk}", "keys", "list"), 1)
    assert "file is not a database" in line and str(junk) in line
    assert junk.read_text() == "not a database" and [p.name for p in tmp_path.iterdir()] == [
        "notes.db"
    ]


def test_reencrypt_without_a_master_key_says_how_to_set_one(cli: Callable[..., Run]) -> None:
    line = one_error(cli("keys", "reencrypt"), 2)
    assert "no master key is configured" in line and "KEYGUARD_MASTER_KEYS" in line
    assert "keyguard master-key new" in line


def test_list_says_how_many_revoked_keys_it_hides(cli: Callable[..., Run]) -> None:
    _, kept = create(cli, "--owner", "o", "--name", "kept")
    for name in ("gone", "also-gone"):
        assert cli("keys", "revoke", create(cli, "--owner", "o", "--name", name)[1]["id"]).code == 0
    run = cli("keys", "list")
    assert run.out.splitlines()[0].startswith("1 key(s) in ")
    assert "(2 revoked key(s) hidden; --all shows them)" in run.out.splitlines()
    run = cli("keys", "list", "--all")
    assert run.out.splitlines()[0].startswith("3 key(s) in ") and "revoked key(s)" not in run.out
    assert [k["id"] for k in cli("keys", "list", "--json").json()] == [kept["id"]]


@pytest.mark.parametrize("columns", [70, 80, 100])
def test_list_never_breaks_a_name_inside_a_word(
    cli: Callable[..., Run],
    listed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    create(cli, "--owner", "bob", "--name", "production-deployment-bot", "--scope", "inference")
    monkeypatch.setenv("COLUMNS", str(columns))
    run = cli("keys", "list")
    lines = run.out.splitlines()
    assert all(len(line) <= columns for line in lines[1:]), run.out
    words = {w for line in lines for w in line.split()}
    for name in ("a rather long name for a key", "production-deployment-bot"):
        assert set(name.split()) <= words, run.out  # each word whole, on one line
    header = next(line for line in lines if line.startswith("id "))
    assert "name" in header and "status" in header


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "deleted"), [("y", True), ("n", False)])
def test_delete_asks_naming_the_key_its_name_and_owner(
    kg: Callable[..., Run],
    db: str,
    guard: KeyGuard,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    deleted: bool,
) -> None:
    token, key = create(lambda *a: kg("--store", db, *a), "--owner", "acme", "--name", "ci bot")
    monkeypatch.setattr(sys, "stdin", _Terminal(answer + "\n"))
    run = kg("--store", db, "keys", "delete", key["id"])
    assert f'Delete key {key["id"]} "ci bot" of owner "acme" (active)?' in run.err, run
    if deleted:
        assert run.code == 0 and f"Deleted key {key['id']}." in run.out
        with pytest.raises(AuthenticationError):
            guard.verify(token)
    else:
        assert run.code == 1 and run.err.endswith("keyguard: error: aborted\n")
        assert guard.verify(token).id == key["id"]
