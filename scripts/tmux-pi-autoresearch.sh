#!/usr/bin/env bash
# The supervisor window: the libtmux supervisor that keeps the agent window alive (restarts with
# backoff, nudges, circuit breaker; one per repository). Logic: autogolf/agent/supervisor.py.
# This loop keeps the supervisor itself alive, being simpler than it: a supervisor that dies
# (kill -9, a crash) is started again after a short pause; exit 0 (stopped, or another one
# runs) and 3 (the breaker tripped) end it. The new one logs its predecessor's exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
# AUTOGOLF_SUPERVISOR_RESTART_SECONDS: the first pause before a dead supervisor is replaced (default 2)
base="${AUTOGOLF_SUPERVISOR_RESTART_SECONDS:-2}"
pause=$base
while true; do
  started=$SECONDS
  status=0
  .venv/bin/python -m autogolf.agent.supervisor "$@" || status=$?
  case "$status" in 0|3) exit "$status" ;; esac
  # one that ran a minute starts afresh; one that died young doubles the next pause (a crash
  # loop must not spin), up to 10 s so that a replacement is always back within 15 s
  if [ $((SECONDS - started)) -ge 60 ]; then pause=$base; fi
  echo "tmux-pi-autoresearch: the supervisor died (exit status $status); a new one in ${pause} s" >&2
  export AUTOGOLF_SUPERVISOR_EXIT="$status"
  sleep "$pause"
  pause=$((pause * 2 > 10 ? 10 : pause * 2))
done
