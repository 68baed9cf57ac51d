#!/usr/bin/env bash
# The agent window: checks pi's prerequisites (each missing one is named with its fix), then
# runs pi with pi-autoresearch: the kickoff on a first start, a resume that carries the loop on
# after a restart. --check only checks. Logic: autogolf/agent/launch.py, which also exports
# AUTOGOLF_LOOP=1 for the agent (its benchmarks restore harness files from HEAD, not refuse).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "run-pi-autoresearch: missing: .venv; run scripts/setup.sh" >&2
  exit 2
fi
if [ "${1:-}" = --check ]; then
  exec .venv/bin/python -m autogolf.agent.launch "$@"
fi
# Not exec: this shell outlives the agent to write down how it ended (the supervisor's restart
# reason and breaker record). tmux 3.3a was measured to lose a dead pane's exit status for
# good (64 of 150 quick exits); the supervisor reads this file then.
exit_file=logs/agent/agent.exit
mkdir -p logs/agent
rm -f "$exit_file"
status=0
.venv/bin/python -m autogolf.agent.launch "$@" || status=$?
echo "$status" > "$exit_file"
exit "$status"
