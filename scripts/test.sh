#!/usr/bin/env bash
# Set up a virtualenv with the test extras and run the whole test suite; arguments go
# to pytest (bash scripts/test.sh -q -x tests/test_cli.py).
# Redis/PostgreSQL: uses 127.0.0.1:6379 and :5432 when they answer, else starts
# throwaway servers from PATH, else skips those tests (KEYGUARD_REQUIRE_SERVERS=1: fails).
# PYTHON=python3.12 picks the interpreter; a .venv made by another Python version is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION='import sys; print("%d.%d" % sys.version_info[:2])'
want=$("$PY" -c "$VERSION") || { echo "test.sh: cannot run $PY (set PYTHON=...)" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "test.sh: $PY is Python $want; keyguard needs 3.11 or newer (PYTHON=...)" >&2; exit 1; }
have=$(.venv/bin/python -c "$VERSION" 2>/dev/null || echo none)
if [ "$have" != "$want" ]; then
  [ "$have" = none ] || echo "test.sh: .venv has Python $have, $PY is $want: making .venv again"
  "$PY" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
