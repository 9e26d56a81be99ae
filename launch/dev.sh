#!/usr/bin/env bash
# The README's two quick-start commands go through here; each installs what it needs first
# (launch/setup_env.sh: about 5 minutes from nothing, seconds when the venv is current).
#   bash launch/dev.sh train [--config F] [key=value ...]   the main job (embedded default)
#   bash launch/dev.sh test  [pytest args ...]               the test suite
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLSYS_VENV:-$ROOT/.venv}"
cmd="${1:-}"; shift || true
bash "$ROOT/launch/setup_env.sh"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
case "$cmd" in
  train)
    exec "$VENV/bin/rlsys" train "$@" ;;
  test)
    set +e
    "$VENV/bin/python" -m pytest tests -ra "$@"
    rc=$?
    # pytest exits 5 when it collected nothing: a suite that ran no test has failed.
    if [[ $rc -eq 5 ]]; then echo "[rlsys] no tests were collected: failing" >&2; exit 1; fi
    exit $rc ;;
  *)
    echo "usage: bash launch/dev.sh {train|test} [args]" >&2; exit 2 ;;
esac
