#!/usr/bin/env bash
# The test command: lint, then the whole pytest suite on SQLite and a real PostgreSQL server.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/ensure-system-packages.sh || exit 1
.venv/bin/ruff check . || exit 1
export PYTHONPATH="$root/include${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass." >&2
  exit 1
fi
exit "$status"
