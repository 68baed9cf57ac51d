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
exec .venv/bin/python -m autogolf.agent.launch "$@"
