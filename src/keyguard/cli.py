"""The `keyguard` command (also `python -m keyguard`, and `flask keyguard` in an
app that uses `KeyGuardExtension`): manage keys from a shell.

    keyguard [--store URL] [--settings FILE] keys create --owner O --name N [--scope S]...
    keyguard keys list [--owner O] [--all] [--wide] [--json]
    keyguard keys show|revoke|suspend|resume|delete ID
    keyguard keys update ID [--scope S]... [--ip CIDR]... [--rate-limit none]
    keyguard keys rotate ID [--grace 24h]
    keyguard keys reencrypt          (signing secrets -> newest master key)
    keyguard master-key new

Settings are read as `KeyGuard()` reads them (`settings.load_settings`):
`--store` over `--settings FILE` (TOML, playing the settings dict's part) over
`KEYGUARD_*` environment variables. Every error is one line on stderr and a
non-zero exit: 2 for bad arguments or settings, 1 for the rest; a store that
cannot be reached is named with the driver's own reason, once. Commands that
only read never create a SQLite store file (nor its directory), nor set a store
up in an existing file without keyguard's table (an app's own database). Commands live
in the `keys` group one function each, so adding one is one decorated function.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import textwrap
import tomllib
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .exceptions import (
    ConfigurationError,
    InvalidKeySettings,
    KeyGuardError,
    KeyLimitExceeded,
    KeyNotFound,
    KeyStateConflict,
    StoreError,
    shown_id,
    shown_value,
)
from .guard import KeyGuard
from .keys import duration
from .models import IssuedKey, KeyInfo
from .settings import mask_url, url_secrets

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
# What a refusal may quote as given (`shown_value`); anything else is shown as a hint.
# A duration: digits, then perhaps a unit word ("90s", "30 days", "1.5h", "2 fortnights").
_DURATION_SHAPE = re.compile(r"\s*[-+]?[0-9]{1,15}(?:\.[0-9]{1,6})?\s*[A-Za-z]{0,12}\s*", re.ASCII)
# A --metadata KEY given without "=VALUE": a word such as "team" or "plan.tier".
_META_KEY_SHAPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:]{0,31}", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NONE = ("none", "null", "off")
CONTEXT = {"help_option_names": ["-h", "--help"]}
_VERSION = "%(prog)s %(version)s"


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text)
    if not m:
        shown = shown_value(text, _DURATION_SHAPE)
        raise click.BadParameter(f"{shown} is not a duration like 90s, 15m, 24h, 30d or 2w")
    try:
        return timedelta(seconds=duration("duration", int(m[1]) * _UNITS[m[2]]))
    except InvalidKeySettings:
        shown = shown_value(text, _DURATION_SHAPE)
        raise click.BadParameter(f"{shown} is longer than 100 years") from None


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        return parse_duration(str(value))


# A whole number as people mistype one ("1.5", "1,000", "-3"): quoted in a refusal.
_NUMBER_SHAPE = re.compile(r"\s*[-+]?[0-9][0-9_.,]{0,19}\s*", re.ASCII)
# A choice as people mistype one ("Signing", "hmac"): a word.
_WORD_SHAPE = re.compile(r"[A-Za-z]{1,12}", re.ASCII)


class WholeNumber(click.ParamType):  # type: ignore[type-arg]
    """click's integer, refused without echoing what does not look like a number
    (click's own INT quotes any value: a secret pasted into --max-uses too)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value))
        except ValueError:
            shown = shown_value(str(value), _NUMBER_SHAPE)
            self.fail(f"{shown} is not a whole number", param, ctx)


class OneOf(click.Choice):  # type: ignore[type-arg]
    """click's Choice, refused without echoing what does not look like a word."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            shown = shown_value(str(value), _WORD_SHAPE)
            choices = ", ".join(repr(str(c)) for c in self.choices)
            self.fail(f"{shown} is not one of {choices}", param, ctx)


def settings_from(path: str | None, store: str | None) -> dict[str, Any]:
    """The settings dict of a run: the TOML file, then `--store` over it. (`KeyGuard`
    reads the `KEYGUARD_*` environment under it, as for an app.)"""
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
    if store:
        settings["store"] = store
    return settings


# -- where the guard comes from, and how errors leave ----------------------------


@dataclass(frozen=True)
class GuardSource:
    """How a command gets its guard: `keyguard` builds one from its settings and
    closes it; `flask keyguard` borrows the app's own and leaves it open."""

    open: Callable[[], KeyGuard]
    owned: bool = True


def _guard(ctx: click.Context) -> KeyGuard:
    source = ctx.find_object(GuardSource)
    assert source is not None, "every keyguard command group sets a GuardSource"
    guard = source.open()
    ctx.find_root().meta["keyguard.guard"] = guard  # for naming the store in errors
    if source.owned:
        ctx.call_on_close(guard.close)
    return guard


def _sqlite_missing(guard: KeyGuard) -> str | None:
    """The file of a SQLite store that is not there yet (None for any other store):
    no such file, or a file without keyguard's table (an app's own database, an
    empty file). A command that only reads must not create the file nor its
    directories, nor set a store up in it (tables, a pepper, WAL mode): the
    guard does that on its first store call (`guard.hasher`), so this is asked
    before any."""
    store = guard.settings.store  # made absolute by load_settings
    if not store.startswith("sqlite://") or store == "sqlite:///:memory:":
        return None
    path = store.removeprefix("sqlite://")
    path = path[1:] if path.startswith("/") else path
    if not os.path.exists(path):
        return path
    return None if _has_keyguard_table(path) else path


def _has_keyguard_table(path: str) -> bool:
    """Whether the SQLite file at `path` holds keyguard's keys table, read through a
    read-only connection, which changes nothing in the file. With no -wal or
    -journal file beside it (nobody is writing it; a WAL database is checkpointed)
    it is opened `immutable`, so not even the -shm and -wal files a reader of a
    WAL database makes appear. A file SQLite cannot read as a database counts as
    holding it: the store then says what is wrong with it (and cannot write it)."""
    quiet = not any(os.path.exists(path + end) for end in ("-wal", "-journal"))
    uri = Path(path).resolve().as_uri() + ("?mode=ro&immutable=1" if quiet else "?mode=ro")
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keyguard_keys'"
            ).fetchone()
    except sqlite3.Error:
        return True
    return found is not None


def _elsewhere(ctx: click.Context) -> str:
    source = ctx.find_object(GuardSource)
    if source is not None and not source.owned:  # flask keyguard: the app's settings
        return 'another store: the app\'s KEYGUARD "store" setting or KEYGUARD_STORE'
    return "another store: --store URL or KEYGUARD_STORE"


def _existing(ctx: click.Context, key_id: str) -> KeyGuard:
    """The guard, for a command on one key: with no store file there is no such key,
    and the file is not created to say so."""
    guard = _guard(ctx)
    path = _sqlite_missing(guard)
    if path is not None:
        raise Failure(f"{KeyNotFound(key_id)}: no key store at {path} yet; {_elsewhere(ctx)}")
    return guard


class Failure(click.ClickException):
    """One line on stderr, exit 1 (also when click shows it, as under `flask keyguard`)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"keyguard: error: {_printable(self.format_message())}", file=file, err=True)


class BadInput(Failure):
    """Bad arguments or settings: exit 2."""

    exit_code = 2


def _passwords(guard: KeyGuard | None) -> list[str]:
    if guard is None:
        return []
    return [*url_secrets(guard.settings.store), *url_secrets(guard.settings.cache)]


def _reason(exc: BaseException, guard: KeyGuard | None) -> str:
    """The driver's own words for a StoreError ("database "x" does not exist",
    "Connection refused"), on one line, without any password from the URLs; none
    when the store's message already gives more than the driver error's type."""
    cause = exc.__cause__
    if cause is None or not str(exc).endswith(f": {type(cause).__name__}"):
        return ""
    text = " ".join(str(cause).split())
    text = text.rsplit("FATAL:", 1)[-1].strip().removeprefix("connection failed: ")
    for secret in _passwords(guard):
        text = text.replace(secret, "****")
    return f" ({text[:300]})" if text else ""


def _failure(exc: KeyGuardError, ctx: click.Context) -> Failure:
    if isinstance(exc, KeyLimitExceeded):
        return BadInput(
            f"{exc}: revoke or delete one first (keyguard keys list --owner OWNER, then "
            "keyguard keys revoke ID), or raise policy.max_keys_per_owner"
        )
    if isinstance(exc, KeyStateConflict):  # the key's state, not the arguments (409)
        return Failure(str(exc))
    if isinstance(exc, ConfigurationError | InvalidKeySettings):
        return BadInput(str(exc))
    if isinstance(exc, KeyNotFound):
        return Failure(str(exc))
    guard = ctx.find_root().meta.get("keyguard.guard")
    reason = _reason(exc, guard) if isinstance(exc, StoreError) else ""
    return Failure(f"{type(exc).__name__}: {exc}{reason}")


class Group(click.Group):
    """A command group that turns keyguard's errors into one-line CLI errors, so
    they read the same under `keyguard` and `flask keyguard`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyGuardError as exc:
            raise _failure(exc, ctx) from None
        except click.UsageError as exc:
            if isinstance(exc, _HELP_ONLY):
                raise  # `keyguard keys` alone: the help, as click shows it
            # bad arguments: one line, under `flask keyguard` as under `keyguard`
            raise BadInput(exc.format_message().replace("\n", " ")) from None


def _quiet_drivers() -> None:
    # psycopg's pool logs each failed connect attempt; the one error line names the cause.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


# -- output ---------------------------------------------------------------------

# Characters a terminal acts on rather than shows, escaped in everything the CLI prints
# from a key (`_printable`): C0 controls (ESC, CR, LF), DEL, C1 controls (U+009B is
# CSI), the bidirectional controls, the line separators, and lone surrogates. Names
# and owners are refused with them today (keys.CONTROL_CHARS), but metadata values
# are not, and a row stored before, or by another tool, may hold anything.
_UNSAFE = (
    *range(0x20), *range(0x7F, 0xA0), 0x61C, 0x200E, 0x200F, 0x2028, 0x2029,
    *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000),
)  # fmt: skip
_ESCAPES = {code: ascii(chr(code))[1:-1] for code in _UNSAFE}  # "\x1b", "\u202e"


def _printable(text: str) -> str:
    """`text` with every character a terminal would act on escaped as Python writes
    it (ESC as \\x1b, U+202E as \\u202e): shown, never obeyed."""
    return text.translate(_ESCAPES)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _status(key: KeyInfo) -> str:
    return key.status()


def _text(value: Any) -> str:
    """A field for people: lists as `a, b`, mappings as `k=v, ...`, nothing as `-`."""
    if value in (None, [], {}, ()):
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _show(key: KeyInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(key.to_dict(), indent=2))
        return
    fields = key.to_dict()
    fields["status"] = _status(key)
    for field, value in fields.items():
        click.echo(f"{field:>14}: {_printable(_text(value))}")


def _issued(issued: IssuedKey, as_json: bool, what: str, quiet: bool = False) -> None:
    if quiet:
        click.echo(issued.token or f"{issued.info.id}\n{issued.secret}")
        return
    if as_json:
        out = {"key": issued.info.to_dict(), "token": issued.token, "secret": issued.secret}
        click.echo(json.dumps({k: v for k, v in out.items() if v is not None}, indent=2))
        return
    info = issued.info
    click.echo(_printable(f"{what} key {info.id} ({info.name}) for {info.owner}"))
    if issued.token:
        click.echo(f"token: {issued.token}")
    if issued.secret:
        click.echo(f"access key: {issued.info.id}\nsecret: {issued.secret}")
    if issued.info.expires_at:
        click.echo(f"expires: {_when(issued.info.expires_at)} UTC")
    click.secho(
        "Store it now: it is shown only once and cannot be recovered.", fg="yellow", err=True
    )


# -- the commands -----------------------------------------------------------------


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="keyguard", message=_VERSION)
@click.option("--store", metavar="URL", help="Key store URL (overrides the settings).")
@click.option(
    "--settings",
    "settings_file",
    metavar="FILE",
    help="Settings file (TOML); it wins over KEYGUARD_* environment variables.",
)
@click.pass_context
def cli(ctx: click.Context, store: str | None, settings_file: str | None) -> None:
    """keyguard: API keys for your web app.

    Settings come from --store, --settings FILE and KEYGUARD_* environment
    variables (KEYGUARD_STORE, KEYGUARD_POLICY__MAX_KEYS_PER_OWNER=5), read as
    the app's KeyGuard() reads them. The default store is ./keyguard.db: run
    the command where the app runs, or give the same absolute path to both.
    Only a command that writes (keys create) makes a SQLite file that is not
    there, or sets keyguard up in a file without its table; list says "no key
    store at PATH yet (0 keys)", show fails (exit 1).

    Shell completion: eval "$(_KEYGUARD_COMPLETE=bash_source keyguard)"
    (zsh_source, fish_source for those shells).
    """
    _quiet_drivers()
    ctx.obj = GuardSource(lambda: KeyGuard(settings_from(settings_file, store)))


@cli.group(cls=Group)
def keys() -> None:
    """Issue, list, rotate and revoke keys."""


_SET_MASTER = (
    "export KEYGUARD_MASTER_KEYS=$(keyguard master-key new) (the same value on every "
    "instance; or signing.master_keys in the settings)"
)


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:  # a key alone is quoted; anything else (a pasted secret) only hinted
            shown = shown_value(pair, _META_KEY_SHAPE)
            raise click.BadParameter(f"{shown} is not KEY=VALUE", param_hint="'--metadata'")
        if not name.strip():  # (the value is not quoted: it may be a secret)
            raise click.BadParameter("KEY=VALUE needs a KEY before '='", param_hint="'--metadata'")
        out[name.strip()] = value
    return out


@keys.command()
@click.option("--owner", required=True, help="Who the key belongs to.")
@click.option("--name", required=True, help="A name to recognise it by.")
@click.option("--scope", "scopes", multiple=True, help="A scope (repeat for several).")
@click.option("--ip", "ips", multiple=True, metavar="CIDR", help="Allowed IP or CIDR (repeatable).")
@click.option("--expires-in", type=Duration(), help="Lifetime such as 30d or 12h.")
@click.option("--kind", type=OneOf(["bearer", "signing"]), default="bearer", show_default=True)
@click.option(
    "--passphrase-prompt",
    is_flag=True,
    help="Require a passphrase with the key: 8 to 256 characters, asked twice at a "
    "terminal (from a pipe: the first line of stdin); it cannot be recovered. Clients "
    "send it in a header (signed requests: the profile's passphrase header):"
    "\n\n\b\nKG-Passphrase: <passphrase>",  # \b: kept whole, never broken at the "-"
)
@click.option("--rate-limit", help='Per-key limit such as "100/minute".')
@click.option(
    "--max-uses", type=WholeNumber(), help="Usage quota: after N requests the key gets 429."
)
@click.option(
    "--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print only the token (signing keys: access key and secret, one a line).",
)
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
    max_uses: int | None,
    metadata: Sequence[str],
    as_json: bool,
    quiet: bool,
) -> None:
    """Issue a key; its token (or secret) is printed once.

    A signing key needs a master key (export KEYGUARD_MASTER_KEYS=$(keyguard
    master-key new)) and the signing extra (cryptography).
    """
    meta = _metadata(metadata)
    guard = _guard(ctx)
    if kind == "signing" and not guard.signing.ring.enabled:
        raise BadInput(
            f"kind: signing keys need a master key to encrypt their secret: {_SET_MASTER}"
        )
    passphrase = _read_passphrase() if passphrase_prompt else None
    issued = guard.keys.create(
        owner=owner,
        name=name,
        scopes=list(scopes),
        allowed_ips=list(ips),
        expires_in=expires_in,
        kind=kind,
        passphrase=passphrase,
        rate_limit=rate_limit,
        max_uses=max_uses,
        metadata=meta or None,
    )
    _issued(issued, as_json, "Created", quiet)


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


# A listing's columns, and the order they are hidden in when the terminal is narrow
# (id, name and status always show).
_DROP_ORDER = ("created", "hint", "owner", "last used", "expires", "scopes")
# These wrap between words rather than be hidden; the name is given room first, so it
# breaks inside a word only when even the id, the name and the status alone do not fit.
_WRAPS = ("name", "scopes")


def _columns(wide: bool) -> list[tuple[str, Callable[[KeyInfo], str]]]:
    when = _when if wide else _day
    columns: list[tuple[str, Callable[[KeyInfo], str]]] = [
        ("id", lambda k: k.id),
        ("owner", lambda k: k.owner),
        ("name", lambda k: k.name),
        ("hint", lambda k: k.hint),
        ("scopes", lambda k: " ".join(k.scopes) or "-"),
        ("created", lambda k: when(k.created_at)),
        ("last used", lambda k: when(k.last_used_at)),
        ("expires", lambda k: when(k.expires_at)),
        ("status", _status),
    ]
    if wide:
        columns[7:7] = [
            ("from", lambda k: _text(k.last_used_from)),
            ("kind", lambda k: k.kind),
            ("allowed IPs", lambda k: " ".join(k.allowed_ips) or "-"),
            ("rate limit", lambda k: k.rate_limit or "-"),
            ("max uses", lambda k: _text(k.max_uses)),
            ("passphrase", lambda k: "yes" if k.has_passphrase else "-"),
        ]
    return columns


def _table(found: Sequence[KeyInfo], wide: bool, width: int) -> tuple[Table, list[str]]:
    """The listing; when it would not fit `width`, columns are hidden (in _DROP_ORDER),
    then the name and the scopes wrap between words, the name keeping its width first."""
    columns = _columns(wide)
    cells = {title: [_printable(get(k)) for k in found] for title, get in columns}
    natural = {t: max([cell_len(t), *map(cell_len, v)]) for t, v in cells.items()}
    least = dict(natural)  # the narrowest a column gets without breaking a word
    for title in _WRAPS:
        words = [w for cell in cells[title] for w in cell.split()]
        least[title] = max([cell_len(title), *map(cell_len, words)])
    hidden: list[str] = []

    def total(widths: dict[str, int]) -> int:  # two spaces between columns
        return sum(widths[t] + 2 for t, _ in columns if t not in hidden) - 2

    for title in _DROP_ORDER:
        if wide or total(least) <= width:
            break
        hidden.append(title)
    widths = {t: least[t] for t, _ in columns if t not in hidden}
    spare = width - total(widths)
    for title in _WRAPS:  # the name first: it gets its whole width before the scopes
        if title in widths and spare > 0:
            more = min(spare, natural[title] - widths[title])
            widths[title] += more
            spare -= more
    if spare < 0:  # even id, name and status do not fit: the name folds inside a word
        widths["name"] = max(cell_len("name"), widths["name"] + spare)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    shown = [(t, get) for t, get in columns if t not in hidden]
    for title, _ in shown:
        table.add_column(
            title,
            no_wrap=title not in _WRAPS,
            overflow="fold",
            width=None if wide else widths[title],
        )
    for i in range(len(found)):  # as Text: a name such as "[/]" is shown, not read as markup
        table.add_row(*(Text(cells[title][i]) for title, _ in shown))
    return table, hidden


@keys.command("list")
@click.option("--owner", help="Only this owner's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--wide", is_flag=True, help="Every column, full times, however wide.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(
    ctx: click.Context, owner: str | None, include_revoked: bool, wide: bool, as_json: bool
) -> None:
    """List keys (name, hint, scopes, created, last used, expiry).

    Narrow terminals hide columns (created, hint, owner first); --wide shows all.
    Revoked keys are left out unless --all, and a line says how many. A SQLite
    store file that does not exist (or holds no keyguard table) is not created
    nor set up: the answer is "no key store at PATH yet (0 keys)", exit 0 (with
    --json: [] on stdout, that line on stderr).
    """
    guard = _guard(ctx)
    missing = _sqlite_missing(guard)
    if missing is not None:
        line = f"no key store at {missing} yet (0 keys); {_elsewhere(ctx)}"
        if as_json:
            click.echo("[]")
        click.echo(line, err=as_json)
        return
    every = guard.keys.list(owner=owner, include_revoked=True)
    found = [k for k in every if include_revoked or k.revoked_at is None]
    if as_json:
        click.echo(json.dumps([k.to_dict() for k in found], indent=2))
        return
    width = shutil.get_terminal_size((120, 24)).columns
    table, hidden = _table(found, wide, width)
    click.echo(f"{len(found)} key(s) in {mask_url(guard.settings.store)}")
    if found:
        Console(width=10_000 if wide else width, soft_wrap=wide).print(table)
    revoked = len(every) - len(found)
    if revoked:
        them = "it" if revoked == 1 else "them"
        click.echo(f"({revoked} revoked key(s) hidden; --all shows {them})")
    if hidden:
        click.echo(textwrap.fill(f"(hidden: {', '.join(hidden)}; --wide shows all)", width))


@keys.command()
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Show one key.

    Exit 1 when there is none, also when the SQLite store file does not exist
    (it is not created).
    """
    _show(_existing(ctx, key_id).keys.get(key_id), as_json)


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
@click.option("--rate-limit", help='New per-key limit such as "100/minute"; "none" removes it.')
@click.option(
    "--metadata", multiple=True, metavar="KEY=VALUE", help="Replace the metadata (repeatable)."
)
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
    metadata: Sequence[str],
    as_json: bool,
) -> None:
    """Change a key's name, scopes, allowlist, expiry, rate limit or metadata."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if scopes or clear_scopes:
        changes["scopes"] = list(scopes)
    if ips or clear_ips:
        changes["allowed_ips"] = list(ips)
    if rate_limit is not None:
        changes["rate_limit"] = None if rate_limit.strip().lower() in _NONE else rate_limit
    if metadata:
        changes["metadata"] = _metadata(metadata)
    if not changes and expires_in is None:
        raise click.UsageError(
            "nothing to change: give --name, --scope, --ip, --expires-in, --rate-limit "
            "or --metadata"
        )
    guard = _existing(ctx, key_id)
    if expires_in is not None:
        changes["expires_at"] = datetime.fromtimestamp(guard.clock(), UTC) + expires_in
    _show(guard.keys.update(key_id, **changes), as_json)


@keys.command()
@click.argument("key_id")
@click.pass_context
def revoke(ctx: click.Context, key_id: str) -> None:
    """Refuse the key from now on (it stays listed with --all)."""
    key = _existing(ctx, key_id).keys.revoke(key_id)
    click.echo(_printable(f"Revoked key {key.id} ({key.name})."))


@keys.command()
@click.argument("key_id")
@click.pass_context
def suspend(ctx: click.Context, key_id: str) -> None:
    """Refuse the key until it is resumed (nothing else about it changes)."""
    key = _existing(ctx, key_id).keys.suspend(key_id)
    click.echo(_printable(f"Suspended key {key.id} ({key.name})."))


@keys.command()
@click.argument("key_id")
@click.pass_context
def resume(ctx: click.Context, key_id: str) -> None:
    """Accept a suspended key again (counts against the owner's key limit)."""
    key = _existing(ctx, key_id).keys.resume(key_id)
    click.echo(_printable(f"Resumed key {key.id} ({key.name})."))


@keys.command()
@click.argument("key_id")
@click.option(
    "--grace",
    type=Duration(),
    default="0s",
    show_default=True,
    help="How long the old secret still works. Rotating again ends an earlier grace at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def rotate(ctx: click.Context, key_id: str, grace: timedelta, as_json: bool) -> None:
    """Issue a new secret; the old one works until the grace period ends."""
    guard = _existing(ctx, key_id)
    now = datetime.fromtimestamp(guard.clock(), UTC)
    issued = guard.keys.rotate(key_id, grace=grace)
    # The old secret works until the grace ends or the key expires, whichever is first
    # (an expired key refuses every secret).
    expires = issued.info.expires_at
    until = min(now + grace, expires or now + grace) if grace > timedelta(0) else None
    if until is not None and until <= now:  # the key had expired already
        until = None
    if as_json:
        out = {"key": issued.info.to_dict(), "token": issued.token, "secret": issued.secret}
        out["old_secret_valid_until"] = until.isoformat() if until else None
        click.echo(json.dumps({k: v for k, v in out.items() if v is not None}, indent=2))
        return
    _issued(issued, False, "Rotated")
    if until is None:
        click.echo("The old secret stopped working now.")
    else:
        when = " (when the key expires)" if until == expires else ""
        click.echo(
            f"The old secret keeps working until {_when(until)} UTC{when}; rotating again "
            "before then ends that grace at once (only one old secret is kept)."
        )


@keys.command()
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Delete without asking (needed without a terminal).")
@click.pass_context
def delete(ctx: click.Context, key_id: str, yes: bool) -> None:
    """Delete a key for good (revoke keeps it listed)."""
    if not yes and not sys.stdin.isatty():
        raise BadInput(
            f"not deleting key {shown_id(key_id)} without --yes: stdin is not a "
            "terminal, so nobody can confirm"
        )
    guard = _existing(ctx, key_id)
    if not yes:
        key = guard.keys.get(key_id)  # the question names what would be deleted
        click.confirm(
            _printable(f'Delete key {key.id} "{key.name}" of owner "{key.owner}"')
            + f" ({key.status()})? It cannot be undone",
            abort=True,
            err=True,
        )
    guard.keys.delete(key_id)
    click.echo(_printable(f"Deleted key {key_id}."))


@keys.command()
@click.pass_context
def reencrypt(ctx: click.Context) -> None:
    """Re-encrypt every signing secret under the newest master key.

    Needs the master keys, newest first: KEYGUARD_MASTER_KEYS="$NEW,$OLD".
    """
    guard = _guard(ctx)
    if not guard.signing.ring.enabled:
        raise BadInput(
            "signing.master_keys: no master key is configured, so nothing can be re-encrypted: "
            'set KEYGUARD_MASTER_KEYS to the master keys, newest first ("$NEW,$OLD"; '
            "make a new one with: keyguard master-key new)"
        )
    missing = _sqlite_missing(guard)
    if missing is not None:
        click.echo(f"no key store at {missing} yet: nothing to re-encrypt; {_elsewhere(ctx)}")
        return
    count = guard.keys.reencrypt()
    click.echo(f"Re-encrypted {count} signing key(s) under the newest master key.")


@cli.group("master-key", cls=Group)
def master_key() -> None:
    """Master keys, which encrypt signing secrets at rest."""


@master_key.command("new")
def master_key_new() -> None:
    """Print a fresh master key (base64url, 32 bytes).

    Put it first in KEYGUARD_MASTER_KEYS (comma-separated, newest first) or in
    signing.master_keys, on every instance, then run `keyguard keys reencrypt`.
    """
    from .crypto import generate_master_key

    click.echo(generate_master_key())


def flask_group(guard: Callable[[], KeyGuard]) -> click.Group:
    """`flask keyguard ...`: the same commands on the Flask app's own guard."""

    @click.group("keyguard", cls=Group, context_settings=CONTEXT)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        """Manage this app's API keys, with the app's own keyguard settings."""
        _quiet_drivers()
        ctx.obj = GuardSource(guard, owned=False)

    group.add_command(keys)
    group.add_command(master_key)
    return group


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"keyguard: error: {_printable(message)}", err=True)
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
        code = cli.main(
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
        _fail(exc.format_message(), exc.exit_code)
    except KeyGuardError as exc:  # raised outside a command (none today): still one line
        _fail(f"{type(exc).__name__}: {exc}", 1)
    if isinstance(code, int) and code:
        sys.exit(code)


__all__ = ["cli", "flask_group", "main"]
