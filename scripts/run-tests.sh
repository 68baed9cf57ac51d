#!/usr/bin/env bash
# Run the test suite. Exit 0 only when tests really ran and passed: pytest's exit code 5
# ("no tests collected") is a failure here, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$status"
