#!/usr/bin/env bash
# Set up a virtualenv and start the FastAPI demo on the embedded default
# (SQLite store ./keyguard.db, in-process cache). Prints a fresh key and curl lines,
# then "serving on http://127.0.0.1:$PORT (Ctrl-C stops it)"; PORT=8001 for another port.
# Also installs the PostgreSQL and Redis drivers, for examples/multi_instance/demo.py.
# PYTHON=python3.12 picks the interpreter; a .venv made by another Python version is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_for demo.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[fastapi,postgresql,redis]' uvicorn
exec .venv/bin/python examples/fastapi_app.py
