"""Secret comparisons go through `hmac.compare_digest`: counted at run time for
bearer secrets (current and in-grace previous) and passphrases, and checked
statically: no `==`/`!=` on anything secret-named in the modules that compare
secrets (hashing.py, decision.py, and signing.py / crypto.py when present)."""

from __future__ import annotations

import ast
import hmac
import re
from pathlib import Path

import pytest

import keyguard
import keyguard.hashing
from keyguard import AuthenticationError, KeyGuard

SRC = Path(keyguard.__file__).parent
SECRET_NAMES = re.compile(
    r"secret|signature|digest|passphrase|_hash|hash_|token|mac|pepper|expected|presented", re.I
)
MODULES = ["hashing.py", "decision.py", "signing.py", "crypto.py"]


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def counting(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keyguard.hashing.hmac, "compare_digest", counting)
    return calls


def test_bearer_checks_use_compare_digest(guard: KeyGuard, compare_calls: list) -> None:
    issued = guard.keys.create(owner="o", name="n")
    compare_calls.clear()
    guard.verify(issued.token)
    assert len(compare_calls) == 1
    wrong = guard.keys.rotate(issued.id, grace=0)  # the old token is now wrong
    compare_calls.clear()
    with pytest.raises(AuthenticationError):
        guard.verify(issued.token)
    assert compare_calls  # the refusal went through compare_digest too
    compare_calls.clear()
    guard.verify(wrong.token)
    assert len(compare_calls) == 1


def test_previous_secret_in_grace_uses_compare_digest(guard: KeyGuard, compare_calls: list) -> None:
    issued = guard.keys.create(owner="o", name="n")
    guard.keys.rotate(issued.id, grace=3600)
    compare_calls.clear()
    guard.verify(issued.token)
    assert len(compare_calls) == 2  # current (no match), then previous (match)


def test_remembered_passphrase_checks_use_compare_digest(
    guard: KeyGuard, compare_calls: list
) -> None:
    issued = guard.keys.create(owner="o", name="n", passphrase="right passphrase")
    guard.verify(issued.token, passphrase="right passphrase")  # argon2 once, then remembered
    compare_calls.clear()
    guard.verify(issued.token, passphrase="right passphrase")
    with pytest.raises(AuthenticationError):
        guard.verify(issued.token, passphrase="wrong passphrase")
    # bearer + passphrase, twice (the wrong one compares the token again when the step
    # is called back after argon2 ran off the loop)
    assert len(compare_calls) in (4, 5)


def test_argon2_bearer_hashes_use_compare_digest_once_remembered(compare_calls: list) -> None:
    guard = KeyGuard({"store": "memory://", "hashing": "argon2id"})
    issued = guard.keys.create(owner="o", name="n")
    guard.verify(issued.token)
    compare_calls.clear()
    guard.verify(issued.token)
    assert len(compare_calls) == 1


def _secret_comparisons(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                continue
            # A length is public, and a value looked up *by* a secret (a dict keyed by a
            # signature) is not the secret: neither leaks anything through timing.
            if any(
                isinstance(o, ast.Call)
                and isinstance(o.func, ast.Name | ast.Attribute)
                and ast.unparse(o.func).split(".")[-1] in ("len", "get")
                for o in operands
            ):
                continue
            text = " ".join(ast.unparse(o) for o in operands)
            if SECRET_NAMES.search(text):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_equality_on_secrets(module: str) -> None:
    path = SRC / module
    assert _secret_comparisons(path) == []


def test_the_static_check_sees_a_planted_comparison(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def check(stored, presented):\n    return stored_hash == digest(presented)\n"
    )
    assert len(_secret_comparisons(planted)) == 1
