#!/usr/bin/env bash
# Set up a virtualenv and start the FastAPI demo on the embedded default
# (SQLite store ./keyguard.db, in-process cache). Prints a fresh key and curl lines.
# Also installs the PostgreSQL and Redis drivers, for examples/multi_instance/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[fastapi,postgresql,redis]' uvicorn
exec .venv/bin/python examples/fastapi_app.py
