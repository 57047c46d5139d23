#!/usr/bin/env bash
# Set up a virtualenv and start the FastAPI demo on the embedded default
# (SQLite store ./keyguard.db, in-process cache). Prints a fresh key and curl lines,
# then "serving on http://127.0.0.1:$PORT (Ctrl-C stops it)"; PORT=8001 for another port.
# Also installs the PostgreSQL and Redis drivers, for examples/multi_instance/demo.py.
# PYTHON=python3.12 picks the interpreter; a .venv made by another Python version is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION='import sys; print("%d.%d" % sys.version_info[:2])'
want=$("$PY" -c "$VERSION") || { echo "demo.sh: cannot run $PY (set PYTHON=...)" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "demo.sh: $PY is Python $want; keyguard needs 3.11 or newer (PYTHON=...)" >&2; exit 1; }
have=$(.venv/bin/python -c "$VERSION" 2>/dev/null || echo none)
if [ "$have" != "$want" ]; then
  [ "$have" = none ] || echo "demo.sh: .venv has Python $have, $PY is $want: making .venv again"
  "$PY" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[fastapi,postgresql,redis]' uvicorn
exec .venv/bin/python examples/fastapi_app.py
