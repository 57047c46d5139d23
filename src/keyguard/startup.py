"""What a `KeyGuard` says when it starts (logger `keyguard`).

INFO: which store and cache it is configured with (nothing is opened yet: the
store and Redis are opened on first use), passwords masked, a SQLite file as the
absolute path it will use. WARNING: when it can tell that it runs in a server
with several worker processes (gunicorn, uvicorn, hypercorn) while its cache is
per process, since rate limits, failure counts, quotas and the replay cache are
then counted per worker and a revoke reaches other workers only after
`local_cache_ttl`. No message starts with "keyguard: " (the logger's name says
it); the warnings name keyguard in their words, since with no logging
configured Python prints the bare message.

How it tells: the server's own configuration object on the call stack (the
app is imported, or the guard built, inside the server's loading code: gunicorn's
`cfg.workers`, uvicorn's `config.workers`), else the command line (`-w N`,
`--workers N`) and `GUNICORN_CMD_ARGS` / `WEB_CONCURRENCY`. It cannot tell for a
guard built later outside those frames with the worker count set only in a
config file or in code. Must not do I/O or change anything: it only looks.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from types import FrameType

from .settings import Settings, mask_url

logger = logging.getLogger("keyguard")
SERVERS = ("gunicorn", "uvicorn", "hypercorn")
_WORKERS = re.compile(r"^(?:-w|--workers)(?:=?(\d+))?$")


def describe(settings: Settings) -> str:
    store, cache = settings.store, settings.cache
    text = f"store {mask_url(store)}"
    if store.startswith("sqlite://") and store != "sqlite:///:memory:":
        text += f" (file {store.removeprefix('sqlite:///')})"
    if cache is None:
        return text + ", no cache"
    scope = " (this process only)" if cache == "memory://" else ""
    return f"{text}, cache {mask_url(cache)}{scope}"


def log_start(settings: Settings) -> None:
    """Log what the guard is configured with; warn about per-process state under many workers."""
    logger.info("configured %s", describe(settings))
    found = server_workers(frame=sys._getframe(1))
    if found is None or found[1] < 2:
        return
    server, workers = found
    if settings.store == "memory://":
        logger.warning(
            "%s runs %d worker processes and keyguard's store is memory://: every worker has "
            "its own keys. Use a sqlite:///, postgresql:// or redis:// store shared by all.",
            server,
            workers,
        )
    if settings.cache is None or settings.cache == "memory://":
        logger.warning(
            "%s runs %d worker processes and keyguard's cache is %s, kept per process: rate "
            "limits, failed-attempt counts, usage quotas and the replay cache of signed requests "
            "are counted per worker, and a revoke made in one worker reaches the others only "
            "after local_cache_ttl (%s s). Set cache to a redis:// URL that every worker shares.",
            server,
            workers,
            "None" if settings.cache is None else "memory://",
            f"{settings.local_cache_ttl:g}",
        )


def server_workers(
    *,
    frame: FrameType | None = None,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, int] | None:
    """(server, worker processes) when this process looks like a server's worker."""
    found = _from_stack(frame) if frame is not None else None
    if found is not None:
        return found
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    parts = PurePath(argv[0]).parts if argv else ()  # .../bin/gunicorn, .../uvicorn/__main__.py
    server = next((s for s in SERVERS if parts and (parts[-1].startswith(s) or s in parts)), None)
    if server is None and environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        server = "gunicorn"
    if server is None:
        return None
    if "--reload" in argv:
        return server, 1
    args = [*argv[1:]]
    if server == "gunicorn":
        args = shlex.split(environ.get("GUNICORN_CMD_ARGS", "")) + args
    workers = _workers_option(args)
    if workers is None:
        concurrency = environ.get("WEB_CONCURRENCY", "")
        workers = int(concurrency) if concurrency.isdigit() else 1
    return server, workers


def _workers_option(args: Sequence[str]) -> int | None:
    found = None
    for i, arg in enumerate(args):
        m = _WORKERS.match(arg)
        if m is None:
            continue
        value = m[1] if m[1] is not None else (args[i + 1] if i + 1 < len(args) else "")
        if value.isdigit():
            found = int(value)  # the last one given wins, as in argparse and click
    return found


def _from_stack(frame: FrameType | None) -> tuple[str, int] | None:
    """The worker count of a gunicorn/uvicorn object loading this app up the stack."""
    depth = 0
    while frame is not None and depth < 200:
        obj = frame.f_locals.get("self")
        module = type(obj).__module__
        if module.startswith(("gunicorn.", "uvicorn.")):
            for attr in ("cfg", "config"):  # gunicorn's first: a UvicornWorker carries both
                cfg = getattr(obj, attr, None)
                workers = getattr(cfg, "workers", None)
                if isinstance(workers, int) and not isinstance(workers, bool):
                    if getattr(cfg, "reload", False) is True:
                        workers = 1  # uvicorn ignores --workers when reloading
                    return module.split(".", 1)[0], workers
        frame = frame.f_back
        depth += 1
    return None
