# Sourced by demo.sh and test.sh: make (or keep) .venv with $PYTHON (default python3),
# 3.11 or newer; a .venv made by another Python major.minor is made again.
# Usage: venv_for NAME   (NAME: the calling script, for its messages)
venv_for() {
  local name=$1 py=${PYTHON:-python3} version want have
  version='import sys; print("%d.%d" % sys.version_info[:2])'
  want=$("$py" -c "$version") || { echo "$name: cannot run $py (set PYTHON=...)" >&2; exit 1; }
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "$name: $py is Python $want; keyguard needs 3.11 or newer (PYTHON=...)" >&2; exit 1; }
  have=$(.venv/bin/python -c "$version" 2>/dev/null || echo none)
  if [ "$have" != "$want" ]; then
    [ "$have" = none ] || echo "$name: .venv has Python $have, $py is $want: making .venv again"
    "$py" -m venv --clear .venv
  fi
}
