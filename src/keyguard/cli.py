"""The `keyguard` command (also `python -m keyguard`): manage keys from a shell.

    keyguard [--store URL] [--settings FILE] keys create --owner O --name N [--scope S]...
    keyguard keys list [--owner O] [--all] [--json]
    keyguard keys show|revoke|suspend|resume|delete ID
    keyguard keys rotate ID [--grace 24h]
    keyguard keys reencrypt          (signing secrets -> newest master key)

Settings come from `--settings FILE` (TOML), then `KEYGUARD_*` environment
variables (`KEYGUARD_STORE`, `KEYGUARD_POLICY__MAX_KEYS_PER_OWNER=5`, values
parsed as JSON when they parse), then `--store`. Every error is one line on
stderr and a non-zero exit: 2 for bad arguments or settings, 1 for the rest.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from .exceptions import (
    ConfigurationError,
    InvalidKeySettings,
    KeyGuardError,
    KeyNotFound,
    shown_id,
)
from .guard import KeyGuard
from .keys import duration
from .models import IssuedKey, KeyInfo
from .settings import Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SETTING_NAMES = set(Settings.model_fields)


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 24h, 30d or 2w")
    try:
        return timedelta(seconds=duration("duration", int(m[1]) * _UNITS[m[2]]))
    except InvalidKeySettings:
        raise click.BadParameter(f"{text!r} is longer than 100 years") from None


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        return parse_duration(str(value))


def settings_from(path: str | None, store: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigurationError(f"--settings: cannot read {path!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"--settings: {path!r} is not valid TOML: {exc}") from None
        settings.update(data.get("keyguard", data))
    for name, value in os.environ.items():
        if not name.startswith("KEYGUARD_") or name in ("KEYGUARD_PEPPER", "KEYGUARD_MASTER_KEYS"):
            continue
        key = name.removeprefix("KEYGUARD_").lower().replace("__", ".")
        if key.split(".", 1)[0] not in _SETTING_NAMES:
            continue
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    if store:
        settings["store"] = store
    return settings


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _status(key: KeyInfo) -> str:
    if key.is_revoked:
        return "revoked"
    return "expired" if key.is_expired() else "active"


def _show(key: KeyInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(key.to_dict(), indent=2))
        return
    for field, value in key.to_dict().items():
        click.echo(f"{field:>14}: {value if value not in (None, [], {}) else '-'}")


def _issued(issued: IssuedKey, as_json: bool, what: str) -> None:
    if as_json:
        out = {"key": issued.info.to_dict(), "token": issued.token, "secret": issued.secret}
        click.echo(json.dumps({k: v for k, v in out.items() if v is not None}, indent=2))
        return
    click.echo(f"{what} key {issued.info.id} ({issued.info.name}) for {issued.info.owner}")
    if issued.token:
        click.echo(f"token: {issued.token}")
    if issued.secret:
        click.echo(f"access key: {issued.info.id}\nsecret: {issued.secret}")
    if issued.info.expires_at:
        click.echo(f"expires: {_when(issued.info.expires_at)} UTC")
    click.secho(
        "Store it now: it is shown only once and cannot be recovered.", fg="yellow", err=True
    )


@click.group()
@click.option("--store", metavar="URL", help="Key store URL (overrides settings).")
@click.option("--settings", "settings_file", metavar="FILE", help="Settings file (TOML).")
@click.pass_context
def cli(ctx: click.Context, store: str | None, settings_file: str | None) -> None:
    """keyguard: API keys for your web app."""
    ctx.obj = lambda: KeyGuard(settings_from(settings_file, store))


@cli.group()
def keys() -> None:
    """Issue, list, rotate and revoke keys."""


def _guard(ctx: click.Context) -> KeyGuard:
    guard: KeyGuard = ctx.find_root().obj()
    ctx.call_on_close(guard.close)
    return guard


@keys.command()
@click.option("--owner", required=True, help="Who the key belongs to.")
@click.option("--name", required=True, help="A name to recognise it by.")
@click.option("--scope", "scopes", multiple=True, help="A scope (repeat for several).")
@click.option("--ip", "ips", multiple=True, metavar="CIDR", help="Allowed IP or CIDR (repeatable).")
@click.option("--expires-in", type=Duration(), help="Lifetime such as 30d or 12h.")
@click.option(
    "--kind", type=click.Choice(["bearer", "signing"]), default="bearer", show_default=True
)
@click.option(
    "--passphrase-prompt",
    is_flag=True,
    help="Ask for a passphrase to require with the key (from a pipe: first line of stdin).",
)
@click.option("--rate-limit", help='Per-key limit such as "100/minute".')
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def create(
    ctx: click.Context,
    owner: str,
    name: str,
    scopes: Sequence[str],
    ips: Sequence[str],
    expires_in: timedelta | None,
    kind: str,
    passphrase_prompt: bool,
    rate_limit: str | None,
    as_json: bool,
) -> None:
    """Issue a key; its token (or secret) is printed once."""
    passphrase = _read_passphrase() if passphrase_prompt else None
    issued = _guard(ctx).keys.create(
        owner=owner,
        name=name,
        scopes=list(scopes),
        allowed_ips=list(ips),
        expires_in=expires_in,
        kind=kind,
        passphrase=passphrase,
        rate_limit=rate_limit,
    )
    _issued(issued, as_json, "Created")


def _read_passphrase() -> str:
    """Ask twice at a terminal; from a pipe, take the first line of stdin (getpass
    would read the terminal instead, or warn and echo where there is none)."""
    if sys.stdin.isatty():
        answer = click.prompt("Passphrase", hide_input=True, confirmation_prompt=True, err=True)
        return str(answer)
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise click.UsageError("--passphrase-prompt: no passphrase on stdin")
    return line


@keys.command("list")
@click.option("--owner", help="Only this owner's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, owner: str | None, include_revoked: bool, as_json: bool) -> None:
    """List keys (name, hint, scopes, created, last used, expiry)."""
    found = _guard(ctx).keys.list(owner=owner, include_revoked=include_revoked)
    if as_json:
        click.echo(json.dumps([k.to_dict() for k in found], indent=2))
        return
    table = Table(title=f"{len(found)} key(s)")
    for column in (
        "id",
        "owner",
        "name",
        "hint",
        "scopes",
        "created",
        "last used",
        "expires",
        "status",
    ):
        table.add_column(column, no_wrap=column in ("id", "hint"))
    for k in found:
        table.add_row(
            k.id,
            k.owner,
            k.name,
            k.hint,
            " ".join(k.scopes) or "-",
            _when(k.created_at),
            _when(k.last_used_at),
            _when(k.expires_at),
            _status(k),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@keys.command()
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Show one key."""
    _show(_guard(ctx).keys.get(key_id), as_json)


@keys.command()
@click.argument("key_id")
@click.option("--name", help="New name.")
@click.option("--scope", "scopes", multiple=True, help="Replace the scopes (repeatable).")
@click.option("--clear-scopes", is_flag=True, help="Remove every scope.")
@click.option(
    "--ip", "ips", multiple=True, metavar="CIDR", help="Replace the allowlist (repeatable)."
)
@click.option("--clear-ips", is_flag=True, help="Remove the allowlist.")
@click.option("--expires-in", type=Duration(), help="New lifetime from now, such as 30d.")
@click.option("--rate-limit", help='New per-key limit such as "100/minute".')
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def update(
    ctx: click.Context,
    key_id: str,
    name: str | None,
    scopes: Sequence[str],
    clear_scopes: bool,
    ips: Sequence[str],
    clear_ips: bool,
    expires_in: timedelta | None,
    rate_limit: str | None,
    as_json: bool,
) -> None:
    """Change a key's name, scopes, allowlist, expiry or rate limit."""
    guard = _guard(ctx)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if scopes or clear_scopes:
        changes["scopes"] = list(scopes)
    if ips or clear_ips:
        changes["allowed_ips"] = list(ips)
    if expires_in is not None:
        changes["expires_at"] = datetime.fromtimestamp(guard.clock(), UTC) + expires_in
    if rate_limit is not None:
        changes["rate_limit"] = rate_limit
    if not changes:
        raise click.UsageError(
            "nothing to change: give --name, --scope, --ip, --expires-in or --rate-limit"
        )
    _show(guard.keys.update(key_id, **changes), as_json)


@keys.command()
@click.argument("key_id")
@click.pass_context
def revoke(ctx: click.Context, key_id: str) -> None:
    """Refuse the key from now on."""
    key = _guard(ctx).keys.revoke(key_id)
    click.echo(f"Revoked key {key.id} ({key.name}).")


@keys.command()
@click.argument("key_id")
@click.pass_context
def suspend(ctx: click.Context, key_id: str) -> None:
    """Refuse the key until it is resumed (nothing else about it changes)."""
    key = _guard(ctx).keys.suspend(key_id)
    click.echo(f"Suspended key {key.id} ({key.name}).")


@keys.command()
@click.argument("key_id")
@click.pass_context
def resume(ctx: click.Context, key_id: str) -> None:
    """Accept a suspended key again (counts against the owner's key limit)."""
    key = _guard(ctx).keys.resume(key_id)
    click.echo(f"Resumed key {key.id} ({key.name}).")


@keys.command()
@click.argument("key_id")
@click.option(
    "--grace",
    type=Duration(),
    default="0s",
    show_default=True,
    help="How long the old secret still works.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def rotate(ctx: click.Context, key_id: str, grace: timedelta, as_json: bool) -> None:
    """Issue a new secret; the old one works until the grace period ends."""
    _issued(_guard(ctx).keys.rotate(key_id, grace=grace), as_json, "Rotated")


@keys.command()
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def delete(ctx: click.Context, key_id: str, yes: bool) -> None:
    """Delete a key for good (revoke keeps it listed)."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete key {shown_id(key_id)}?", abort=True, err=True)
    _guard(ctx).keys.delete(key_id)
    click.echo(f"Deleted key {key_id}.")


@keys.command()
@click.pass_context
def reencrypt(ctx: click.Context) -> None:
    """Re-encrypt every signing secret under the newest master key."""
    count = _guard(ctx).keys.reencrypt()
    click.echo(f"Re-encrypted {count} signing key(s) under the newest master key.")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"keyguard: error: {message}", err=True)
    sys.exit(code)


# click >= 8.2 raises this for a bare `keyguard` or `keyguard keys`: its message is the help.
_HELP_ONLY = tuple(
    t for t in [getattr(click.exceptions, "NoArgsIsHelpError", None)] if t is not None
)


def _tolerant_output() -> None:
    """On a non-UTF-8 stdout, unencodable characters (the hint's ellipsis, a name)
    are escaped instead of raising after a key was already created."""
    for stream in (sys.stdout, sys.stderr):
        utf = (getattr(stream, "encoding", None) or "").lower().startswith("utf")
        if isinstance(stream, io.TextIOWrapper) and not utf:
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> None:
    _tolerant_output()
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="keyguard",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except click.UsageError as exc:
        if isinstance(exc, _HELP_ONLY):
            click.echo(exc.format_message(), err=True)
            sys.exit(2)
        _fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), 1)
    except (ConfigurationError, InvalidKeySettings) as exc:
        _fail(str(exc), 2)
    except KeyNotFound as exc:
        _fail(str(exc), 1)
    except KeyGuardError as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)


__all__ = ["cli", "main"]
