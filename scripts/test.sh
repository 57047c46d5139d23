#!/usr/bin/env bash
# Set up a virtualenv with the test extras and run the whole test suite; arguments go
# to pytest (bash scripts/test.sh -q -x tests/test_cli.py).
# Redis/PostgreSQL: uses 127.0.0.1:6379 and :5432 when they answer, else starts
# throwaway servers from PATH, else skips those tests (KEYGUARD_REQUIRE_SERVERS=1: fails).
# PYTHON=python3.12 picks the interpreter; a .venv made by another Python version is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_for test.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
