#!/usr/bin/env bash
# Set up a virtualenv with the test extras and run the whole test suite.
# Redis/PostgreSQL: uses 127.0.0.1:6379 and :5432 when they answer, else starts
# throwaway servers from PATH, else skips those tests (KEYGUARD_REQUIRE_SERVERS=1: fails).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
