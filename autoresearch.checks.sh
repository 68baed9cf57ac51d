#!/usr/bin/env bash
# Runs after every successful benchmark (pi-autoresearch): artifact cap, log contract,
# trainer imports and length, protected files. The logic is in autogolf/judge/checks.py.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  echo "checks: no .venv here; run scripts/setup.sh first" >&2
  exit 2
fi
exec .venv/bin/python -m autogolf.judge.checks "$@"
