#!/usr/bin/env bash
# Run the test suite. Exit 0 only when tests really ran and passed: pytest's exit code 5
# ("no tests collected") is a failure here, not a pass. The agent (pi, pi-autoresearch) is
# installed first, so the agent-loop tests run the real thing; in CI a failed install fails.
#
# With no arguments the suite runs in two phases: most tests over AUTOGOLF_TEST_WORKERS
# processes (default 2; pytest-xdist, each test file on one worker), then the tests marked
# `alone` one at a time with nothing else running (they compare the speed of runs made at
# different moments, which a neighbour's load would skew, or change what every run checks,
# such as the shared venv's start-up hooks). With arguments, one plain
# pytest run of what they select.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! bash scripts/setup-agent.sh; then
  if [ -n "${CI:-}" ]; then
    echo "run-tests: the agent could not be installed; CI must test the real pi" >&2
    exit 1
  fi
  echo "run-tests: warning: the agent could not be installed; the tests that need pi will skip" >&2
fi

status=0
pytest_phase() {  # pytest_phase ARGS...: runs pytest, and sets status to the first failure's code
  local rc=0
  # --durations=25: every run says where its time goes
  .venv/bin/python -m pytest --durations=25 "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests; treating that as a failure" >&2
    rc=1
  fi
  if [ "$status" -eq 0 ]; then status=$rc; fi
}

if [ "$#" -gt 0 ]; then
  pytest_phase "$@"
  exit "$status"
fi
workers="${AUTOGOLF_TEST_WORKERS:-2}"
echo "run-tests: phase 1 of 2: the tests not marked alone, over $workers processes"
pytest_phase -n "$workers" --dist loadfile -m "not alone"
echo "run-tests: phase 2 of 2: the tests marked alone, one at a time"
pytest_phase -m alone
exit "$status"
