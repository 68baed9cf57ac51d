#!/usr/bin/env bash
# Installs the agent into the project, never globally: Node >= 22.19 (the system's, or a pinned
# build from the npm registry into .tools/), then pi and pi-autoresearch from
# agent/package-lock.json into agent/node_modules. Idempotent. Logic: autogolf/agent/install.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m autogolf.agent.install "$@"
