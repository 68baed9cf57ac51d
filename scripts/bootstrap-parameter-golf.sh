#!/usr/bin/env bash
# `just bootstrap`: upstream parameter-golf at the pinned commit and its sp1024 data cache,
# or the offline default dataset without network. All logic is in autogolf/data/bootstrap/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m autogolf.data.bootstrap "$@"
