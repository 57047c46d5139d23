"""Scopes: what a key may do, and what a route needs.

- A key scope `*` grants everything; `name:*` grants every `name:...` scope.
- `scope_implies` (`{"write": ["read"]}`) is closed transitively at start-up.
- Rules and public paths are globs where `*` matches any run of characters
  (slashes included). Every rule that matches a request adds its scopes: a
  request needs the union, so a broad rule can never be shadowed by a narrow
  one. Patterns compile once; answers are memoised per (method, path).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from .settings import Rule


def glob(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern))
    )


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


class Router:
    """Public paths and per-route rules, compiled once."""

    def __init__(self, public_paths: Sequence[str], rules: Sequence[Rule]) -> None:
        self._public = [glob(p).fullmatch for p in public_paths]
        self._rules = [(glob(r.path).fullmatch, _methods(r.methods), r.scopes) for r in rules]
        self.is_public = lru_cache(maxsize=4096)(self._is_public)
        self.required = lru_cache(maxsize=4096)(self._required)

    def _is_public(self, path: str) -> bool:
        return any(match(path) for match in self._public)

    def _required(self, method: str, path: str) -> tuple[str, ...]:
        needed: dict[str, None] = {}
        for match, methods, scopes in self._rules:
            if (not methods or method in methods) and match(path):
                needed.update(dict.fromkeys(scopes))
        return tuple(needed)
