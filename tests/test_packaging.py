"""The package as a user installs it: built (sdist, then the wheel from that
sdist, as `python -m build` does), installed into a fresh venv with no access to
this checkout or the test venv's packages, imported and run there.

One test, because the venv is the expensive part: it also checks, in that venv,
that what `scripts/demo.sh` installs is enough for the examples it documents
(the multi-instance demo's imports, `examples/flask_app.py`). Its steps are
timed and printed (`pytest -s`); each subprocess has a timeout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import keyguard

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "keyguard"


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KEYGUARD_", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done


def package_files() -> set[str]:
    """Every file the package is made of (code and data), as a wheel names them."""
    return {
        f"keyguard/{p.relative_to(PACKAGE).as_posix()}"
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def demo_install() -> tuple[list[str], list[str]]:
    """The extras and extra packages scripts/demo.sh installs."""
    line = next(x for x in (ROOT / "scripts/demo.sh").read_text().splitlines() if "-e '." in x)
    m = re.search(r"-e '\.\[([a-z,]+)\]'(.*)$", line)
    assert m, line
    return m[1].split(","), m[2].split()


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    pytest.importorskip("build")
    steps: dict[str, float] = {}
    t = time.monotonic()
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], ROOT, 300)
    steps["build sdist + wheel"] = time.monotonic() - t

    version = keyguard.__version__
    (wheel,) = dist.glob(f"keyguard-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"keyguard-{version}.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"keyguard-{version}.dist-info"
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = zf.read(f"{info}/METADATA").decode()
    missing = package_files() - names
    assert not missing, f"files of src/keyguard not in the wheel: {sorted(missing)}"
    assert "keyguard/py.typed" in names
    assert re.search(r"^keyguard = keyguard\.cli:main$", entry_points, re.M)
    assert "Requires-Python: >=3.11" in metadata
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert f"{info}/licenses/LICENSE" in names
    for extra in ("fastapi", "flask", "redis", "postgresql", "signing", "client"):
        assert f"Provides-Extra: {extra}" in metadata
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for needed in ("pyproject.toml", "README.md", "src/keyguard/py.typed", "src/keyguard/cli.py",
                   "LICENSE", "SECURITY.md", "tests/conftest.py", "tests/servers.py",
                   "tests/kgutil.py", "scripts/test.sh", "benchmarks/README.md"):  # fmt: skip
        assert needed in members, needed
    # what the README refers to and what the tests need: every file of these folders that
    # git tracks (a running example's keyguard.db and its -wal/-shm files are not)
    folders = ("tests", "examples", "scripts", "benchmarks", "docs/screenshots")
    if (ROOT / ".git").exists():
        tracked = set(
            subprocess.run(["git", "ls-files", *folders], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
        )  # fmt: skip
    else:  # an unpacked sdist: what it holds, less what a run leaves
        tracked = {
            p.relative_to(ROOT).as_posix()
            for folder in folders
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".db" not in p.name
        }
    for folder in folders:
        files = {f for f in tracked if f.startswith(folder + "/")}
        missing = files - members
        assert files and not missing, f"{folder}: not in the sdist: {sorted(missing)}"
    assert not [m for m in members if m.endswith((".pyc", ".db"))]

    t = time.monotonic()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)  # no system site-packages
    py, bin_ = venv / "bin" / "python", venv / "bin"
    extras, packages = demo_install()
    spec = f"keyguard[{','.join([*extras, 'flask'])}] @ {wheel.as_uri()}"
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec, *packages],
        tmp_path, 600)  # fmt: skip
    steps["venv + pip install"] = time.monotonic() - t

    t = time.monotonic()
    work = tmp_path / "work"  # not the checkout: nothing can come from src/
    work.mkdir()
    assert run([str(bin_ / "keyguard"), "--version"], work, 60).stdout == f"keyguard {version}\n"
    where = run(
        [str(py), "-c", "import importlib.resources as r, keyguard, keyguard.asgi, keyguard.wsgi,"
         " keyguard.fastapi, keyguard.flask, keyguard.admin, keyguard.client;"
         " print(keyguard.__file__); print((r.files('keyguard') / 'py.typed').is_file())"],
        work, 60,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(venv)) and where[1] == "True", where
    token = run([str(bin_ / "keyguard"), "keys", "create", "--owner", "o", "--name", "n", "-q"],
                work, 60).stdout.strip()  # fmt: skip
    listed = run([str(bin_ / "keyguard"), "keys", "list", "--json"], work, 60).stdout
    assert token.split("_")[1] in listed and (work / "keyguard.db").is_file()

    # what scripts/demo.sh installs runs the examples it documents (imports, no servers)
    run([str(py), str(ROOT / "examples/multi_instance/demo.py"), "--help"], work, 60)
    check = "import runpy, sys; sys.path.insert(0, {d!r}); runpy.run_path({f!r}, run_name='x')"
    for example in ("examples/multi_instance/app.py", "examples/flask_app.py",
                    "examples/fastapi_app.py"):  # fmt: skip
        path = ROOT / example
        run([str(py), "-c", check.format(d=str(path.parent), f=str(path))], work, 60)
    steps["run in the venv"] = time.monotonic() - t
    print("packaging steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
