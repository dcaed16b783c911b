# Sourced by the scripts: a project venv with the locked, hash-checked dependencies
# (requirements/test.lock, made by ./scripts/lock) and the package itself, reinstalled only when
# the lock or pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EXPORT_SERVICE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/test.lock" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --require-hashes -r "$ROOT/requirements/test.lock"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
