#!/usr/bin/env bash
# The supervisor window: the libtmux supervisor that keeps the agent window alive (restarts with
# backoff, nudges, circuit breaker; one per repository). Logic: autogolf/agent/supervisor.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m autogolf.agent.supervisor "$@"
