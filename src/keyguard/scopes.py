"""Scopes: what a key may do, and what a route needs.

- A key scope `*` grants everything; `name:*` grants every `name:...` scope.
- `scope_implies` (`{"write": ["read"]}`) is closed transitively at start-up.
- Rules and public paths are globs where `*` matches any run of characters
  (slashes included). Every rule that matches a request adds its scopes: a
  request needs the union, so a broad rule can never be shadowed by a narrow
  one. Patterns compile once; answers are memoised per (method, path).
- They match what the app routes (SPEC section 4 step 0): the method
  upper-cased (Werkzeug upper-cases it, so a lower-case `post` still runs a
  POST view) and the path below the mount point, which the doors work out
  (`route_path`). Matching is linear in the path: a glob is its literal parts,
  found left to right with `str.find` (leftmost-first is exact for `*`-only
  globs), never a backtracking regex that a crafted path could make explode.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

from .settings import Rule

MEMO_PATH_LEN = 512  # longer paths are matched every time, not memoised (bounded memory)
_SLASHES = re.compile("/{2,}").sub


def glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for `pattern`, where `*` matches any run of characters.

    The text between stars must appear in order: the first part as a prefix,
    the last as a suffix, the middle ones each at its leftmost place after the
    previous one (taking the leftmost never loses a match when the only wildcard
    is `*`). One `find` per part, each starting where the last ended."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern.__eq__
    head, *middle, tail = parts
    least = len(head) + len(tail) + sum(map(len, middle))

    def match(path: str) -> bool:
        if len(path) < least or not path.startswith(head) or not path.endswith(tail):
            return False
        at, end = len(head), len(path) - len(tail)
        for part in middle:
            found = path.find(part, at, end)
            if found < 0:
                return False
            at = found + len(part)
        return True

    return match


def route_path(path: str, root_path: str) -> str:
    """The path an ASGI app routes: `path` less the mount point `root_path`,
    exactly as Starlette's router takes it (`starlette._utils.get_route_path`),
    and "/" for the mount point itself."""
    if not root_path or not path.startswith(root_path):
        return path or "/"
    rest = path[len(root_path) :]
    if not rest:
        return "/"
    return rest if rest[0] == "/" else path


class Scopes:
    """Expands granted scopes and checks needed ones."""

    def __init__(self, implies: Mapping[str, Sequence[str]]) -> None:
        closure: dict[str, frozenset[str]] = {}
        for root in implies:
            seen: set[str] = set()
            todo = [root]
            while todo:
                scope = todo.pop()
                if scope not in seen:
                    seen.add(scope)
                    todo.extend(implies.get(scope, ()))
            closure[root] = frozenset(seen)
        self._closure = closure
        self.expand = lru_cache(maxsize=4096)(self._expand)

    def _expand(self, granted: tuple[str, ...]) -> frozenset[str]:
        out: set[str] = set()
        for scope in granted:
            out |= self._closure.get(scope, {scope})
        return frozenset(out)

    @staticmethod
    def missing(granted: frozenset[str], needed: Iterable[str]) -> list[str]:
        """The needed scopes that `granted` (already expanded) does not cover."""
        if "*" in granted:
            return []
        out = []
        for scope in needed:
            if scope in granted:
                continue
            head, colon, _ = scope.partition(":")
            if colon and f"{head}:*" in granted:
                continue
            out.append(scope)
        return out


def _methods(methods: Sequence[str]) -> frozenset[str]:
    # A GET route answers HEAD too (Starlette, Flask), so a GET rule guards HEAD.
    return frozenset((*methods, "HEAD") if "GET" in methods else methods)


def spellings(path: str) -> tuple[str, ...]:
    """Every path a router behind the gate may take `path` for: as sent; with runs
    of slashes as one (Werkzeug routes "//admin" as "/admin", a mount's rest
    "//x" as "/x"); with "." and ".." segments resolved (StaticFiles and
    `send_from_directory` normalise so); without a trailing slash (Flask's
    `strict_slashes=False`). A rule applies when it matches any of them, and a
    path is public only when every one is: the gate never judges a request by a
    spelling milder than the one that runs. The usual path has one spelling."""
    if "//" not in path and "/." not in path and (len(path) < 2 or path[-1] != "/"):
        return (path,)
    merged = _SLASHES("/", path)
    resolved = posixpath.normpath(merged) if "/." in merged else merged
    if resolved.startswith("//"):  # normpath keeps a leading double slash
        resolved = "/" + resolved.lstrip("/")
    forms = {path, merged, resolved}
    forms.update(f.rstrip("/") or "/" for f in tuple(forms))
    return tuple(forms)


class Router:
    """Public paths and per-route rules, compiled once. `method` and `path` are
    what the app routes: the doors pass the route path; the method is
    upper-cased here; every spelling of the path counts (`spellings`)."""

    def __init__(self, public_paths: Sequence[str], rules: Sequence[Rule]) -> None:
        self._public = [glob(p) for p in public_paths]
        self._rules = [(glob(r.path), _methods(r.methods), r.scopes) for r in rules]
        # Every request asks, so the call is the memo itself with nothing around it:
        # its callers memoise only paths up to MEMO_PATH_LEN and ask `public` for the
        # rest (bounded memory, whatever path length a server accepts).
        self.is_public = lru_cache(maxsize=256)(self.public)
        self._required_memo = lru_cache(maxsize=4096)(self._required)

    def required(self, method: str, path: str) -> tuple[str, ...]:
        """The scopes a request needs: the union of every matching rule's."""
        if len(path) > MEMO_PATH_LEN or len(method) > 16:
            return self._required(method, path)
        return self._required_memo(method, path)

    def public(self, path: str) -> bool:
        """Is `path` public (every spelling of it)? Unmemoised; see `is_public`."""
        public = self._public
        return all(any(match(form) for match in public) for form in spellings(path))

    def _required(self, method: str, path: str) -> tuple[str, ...]:
        method = method.upper()
        needed: dict[str, None] = {}
        for form in spellings(path):
            for match, methods, scopes in self._rules:
                if (not methods or method in methods) and match(form):
                    needed.update(dict.fromkeys(scopes))
        return tuple(needed)
