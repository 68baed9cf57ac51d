#!/usr/bin/env bash
# pi-autoresearch 1.6 runs .auto/checks.sh after every passing benchmark: our checks.
set -euo pipefail
exec bash "$(dirname "$0")/../autoresearch.checks.sh" "$@"
