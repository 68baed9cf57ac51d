"""Every AUTOGOLF_* environment variable, declared once: its default and what it means.

Code reads them through `get(name)`, never through os.environ directly, so this table is
the whole list (`just settings` prints it, and a test fails on a read of an undeclared
name). A variable set to the empty string counts as unset: its default applies.
Variables of the trainer itself (ITERATIONS, VAL_MAX_TOKENS, ...) are not here: they
belong to the trainer and the profiles (autogolf/run/profiles.toml).

    python -m autogolf.settings      (`just settings`) lists them, with any value set now
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping


class SettingError(ValueError):
    """A setting (a variable, a profile, a budget) is wrong; the message says which and how
    to fix it. The orchestrator reports it as config_error (exit 2)."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # "" = unset; the reader decides what unset means
    meaning: str  # one line
    read_by: str  # the module or script that reads it


_DECLARED = (
    # --- one benchmark run (autoresearch.sh)
    Setting("AUTOGOLF_TRAINER", "", "trainer script to run instead of benchmark/train_gpt_mlx.py",
            "run/orchestrator"),
    Setting("AUTOGOLF_TIMEOUT", "", "hard timeout of the trainer in seconds (default: sized from the "
            "machine for breadth, else the profile's timeout_seconds)", "run/orchestrator"),
    Setting("AUTOGOLF_KILL_GRACE_SECONDS", "10", "seconds between SIGTERM and SIGKILL of a trainer's "
            "process tree", "run/orchestrator"),
    Setting("AUTOGOLF_SIZING", "on", "on: a profile with a [sizing] table (breadth) is sized to this machine "
            "by a probe (run/sizing.py); off: its fixed budget and timeout_seconds", "run/orchestrator"),
    Setting("AUTOGOLF_SIZING_TARGET", "", "seconds of baseline training the next sizing probe aims at "
            "(default: the profile's target_train_seconds, breadth 240)", "run/probe"),
    Setting("AUTOGOLF_START_TIME", "", "when autoresearch.sh started (bash's EPOCHREALTIME; set by the "
            "script)", "run/orchestrator"),
    Setting("AUTOGOLF_KEEP_RAW_MODEL", "", "1 keeps the trainer's raw (unquantized) weights in logs/",
            "run/storage"),
    Setting("AUTOGOLF_KEEP_LAST", "5", "artifacts of this many latest runs stay in logs/ (with every "
            "best)", "run/storage"),
    Setting("AUTOGOLF_LOCK_PATH", "", "the machine-wide run lock file (default /tmp/autogolf-<uid>.lock)",
            "run/runlock"),
    Setting("AUTOGOLF_LOCK_WAIT_SECONDS", "900", "how long a run waits for the lock before lock_timeout "
            "", "run/runlock"),
    Setting("AUTOGOLF_BLAS", "", "the BLAS library to preload for MLX on Linux CPU (a path, or 'none')",
            "run/blas"),
    Setting("AUTOGOLF_CPU_SPEED", "", "0 turns off the trainer's CPU speed-ups (BLAS, float32, fast CPU attention "
            "and RoPE, CPU streams): the trainer then runs as upstream's", "run/cpu_speed"),
    Setting("AUTOGOLF_RING_PORT", "", "first TCP port of the ring backend for NPROC / HOSTS (default: a "
            "free one)", "run/distributed"),
    Setting("AUTOGOLF_HOLDOUT", "", "'every' scores the hidden holdout on every run, not only on "
            "improving ones", "measure/score"),
    Setting("AUTOGOLF_LOOP", "", "1: the run was started by the agent loop (agent/launch.py sets it for "
            "the agent): harness files that differ from HEAD are restored from HEAD before the run, "
            "instead of the run refusing (config_error)", "run/orchestrator"),
    Setting("AUTOGOLF_RESTORED", "", "set by the harness for itself only: '<pid> <json>' of what it "
            "restored from HEAD before it re-executed itself on the restored code", "run/orchestrator"),
    Setting("AUTOGOLF_SANDBOX", "auto", "what confines the trainer: auto (bwrap, else landlock, else "
            "seatbelt on macOS), one of bwrap|landlock|seatbelt, or off: run unconfined and accept it "
            "(shown on every summary line); with no mechanism and not off, a run is never kept",
            "autogolf/sandbox"),
    Setting("AUTOGOLF_MIN_IMPROVEMENT", "0.002", "the smallest val_bpb drop that counts as an "
            "improvement", "judge/verdict"),
    # --- data (just bootstrap)
    Setting("AUTOGOLF_UPSTREAM_URL", "https://github.com/openai/parameter-golf.git",
            "where `just bootstrap` clones upstream parameter-golf from", "data/bootstrap"),
    Setting("AUTOGOLF_UPSTREAM_COMMIT", "", "upstream commit to check out (default: "
            "benchmark/UPSTREAM_COMMIT.txt)", "data/bootstrap"),
    Setting("AUTOGOLF_GIT_TIMEOUT", "1800", "seconds a git command of the bootstrap may take",
            "data/bootstrap"),
    Setting("AUTOGOLF_SYNTH_SCALE", "1", "size factor of the offline default corpus", "data/bootstrap"),
    # --- the agent loop
    Setting("AUTOGOLF_AGENT_CMD", "", "run this CLI agent (through bash -c) instead of pi", "agent/launch"),
    Setting("AUTOGOLF_AGENT_MESSAGE", "", "the kickoff or resume message, set for AUTOGOLF_AGENT_CMD",
            "agent/launch"),
    Setting("AUTOGOLF_AGENT_RESUME", "", "1 after a restart, set for AUTOGOLF_AGENT_CMD", "agent/launch"),
    Setting("AUTOGOLF_PI_PROVIDER", "", "the provider pi uses (with AUTOGOLF_PI_MODEL)", "agent/launch"),
    Setting("AUTOGOLF_PI_MODEL", "", "the model pi uses", "agent/launch"),
    Setting("AUTOGOLF_PI_ARGS", "", "extra flags for pi (split like a shell)", "agent/launch"),
    Setting("AUTOGOLF_NPM_REGISTRY", "", "npm registry for Node and pi (default: npm_config_registry, "
            "else registry.npmjs.org)", "agent/install"),
    Setting("AUTOGOLF_ALLOW_DIRTY", "", "1 starts the loop on a checkout with uncommitted changes",
            "agent/loop"),
    Setting("AUTOGOLF_TMUX_SOCKET", "", "tmux socket name of the loop's session (default: tmux's)",
            "agent/session"),
    Setting("AUTOGOLF_POLL_SECONDS", "1", "how often the supervisor looks at the agent", "agent/supervisor"),
    Setting("AUTOGOLF_BACKOFF_SECONDS", "5", "first restart backoff; doubles per consecutive failure",
            "agent/supervisor"),
    Setting("AUTOGOLF_BACKOFF_MAX_SECONDS", "300", "the longest restart backoff", "agent/supervisor"),
    Setting("AUTOGOLF_HEALTHY_SECONDS", "300", "an agent up this long resets the failure count",
            "agent/supervisor"),
    Setting("AUTOGOLF_ERROR_GRACE_SECONDS", "30", "quiet seconds after a failed pi reply before a restart",
            "agent/supervisor"),
    Setting("AUTOGOLF_RATE_LIMIT_WAIT_SECONDS", "30", "the first probe after a provider fault (a rate "
            "limit without Retry-After, an outage); the probes' wait then grows", "agent/supervisor"),
    Setting("AUTOGOLF_RATE_LIMIT_MAX_WAIT_SECONDS", "900", "the longest wait between two probes of a "
            "provider that keeps failing", "agent/supervisor"),
    Setting("AUTOGOLF_STALL_SECONDS", "", "silence after which `just status` calls a trainer stalled "
            "(default: max(60, a quarter of its hard timeout))", "agent/status"),
    Setting("AUTOGOLF_SUPERVISOR_EXIT", "", "set by the supervisor window's restart loop: the exit "
            "status of the supervisor it replaces", "agent/supervisor"),
    Setting("AUTOGOLF_SUPERVISOR_RESTART_SECONDS", "", "the first pause before the window's restart loop "
            "replaces a dead supervisor (default 2, doubling to 10)", "scripts/tmux-pi-autoresearch.sh"),
    Setting("AUTOGOLF_NUDGE_SECONDS", "900", "no output and no benchmark this long: a nudge to the agent",
            "agent/supervisor"),
    Setting("AUTOGOLF_BREAKER_RESTARTS", "5", "more counted restarts than this within the window stop "
            "the loop", "agent/supervisor"),
    Setting("AUTOGOLF_BREAKER_WINDOW_SECONDS", "3600", "the circuit breaker's window", "agent/supervisor"),
    # --- set-up and tests (read by shell scripts and the test suite, listed here for `just settings`)
    Setting("AUTOGOLF_BACKEND", "", "cpu, cuda or metal: override the backend setup.sh detects",
            "scripts/setup.sh"),
    Setting("AUTOGOLF_CUDA", "", "12 or 13: the CUDA wheels setup.sh installs (default: the driver's)",
            "scripts/setup.sh"),
    Setting("AUTOGOLF_SETUP_DRY_RUN", "", "1: setup.sh prints the backend and extra, installs nothing",
            "scripts/setup.sh"),
    Setting("AUTOGOLF_TEST_WORKERS", "2", "processes for the tests not marked `alone` in `just test` "
            "(pytest-xdist; 1 for one process)", "scripts/run-tests.sh"),
    Setting("AUTOGOLF_FIXTURES", "", "the real FineWeb test fixtures (default: ../shared/fixtures)",
            "tests, scripts/bench_corpus.py"),
    Setting("AUTOGOLF_UPSTREAM_MIRROR", "", "a local clone of upstream for the bootstrap tests",
            "tests/test_bootstrap.py"),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _DECLARED}


def get(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of a declared variable in `environ` (default os.environ), or its declared
    default when it is unset or empty. An undeclared name is a bug: KeyError."""
    setting = SETTINGS[name]
    value = (os.environ if environ is None else environ).get(name, "")
    return value if value else setting.default


def default(name: str) -> str:
    """The declared default of a variable (for code that needs it without the environment)."""
    return SETTINGS[name].default


def describe(environ: Mapping[str, str] | None = None) -> str:
    """The table `just settings` prints: name, default, meaning, reader, and any value set now."""
    environ = os.environ if environ is None else environ
    width = max(len(s.name) for s in _DECLARED)
    lines = []
    for s in _DECLARED:
        now = f"  [set: {environ[s.name]}]" if environ.get(s.name) else ""
        default = f" (default {s.default})" if s.default else ""
        lines.append(f"{s.name:<{width}}  {s.meaning}{default}; read by {s.read_by}{now}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
    sys.exit(0)
