#!/usr/bin/env bash
# The benchmark pi-autoresearch runs: trains benchmark/train_gpt_mlx.py under a profile and
# prints METRIC lines, then one summary line. The logic is in autogolf/run/orchestrator.py.
#   PROFILE=breadth|confirm|full|smoke bash autoresearch.sh   (default breadth)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  echo "autoresearch: no .venv here; run scripts/setup.sh first" >&2
  exit 2
fi
# bash >= 5 knows the time to the microsecond: the harness counts its own start-up from here
export AUTOGOLF_START_TIME="${EPOCHREALTIME:-}"
# Isolated from the environment (-E: no PYTHON* variables; -s: no user site-packages) with the
# checkout's own harness code first on the path (-m from here), and bytecode only in a cache of
# the harness's own (pycache_prefix): a __pycache__/*.pyc planted in the repository is never
# read. The sandboxed trainer cannot write that cache (autogolf/sandbox.py).
pycache="${XDG_CACHE_HOME:-$HOME/.cache}/autogolf/pycache"
exec .venv/bin/python -E -s -X "pycache_prefix=$pycache" -m autogolf.run "$@"
