"""Running the sizing probe (sizing.py says what it measures and why) and recording it.

The orchestrator (run.py) and `just calibrate --quick` call `size(...)` with the machine's
run lock held and a `spawn` function that starts a trainer process the way every run does
(its own process group, the hard timeout, the console log, a callback per output line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from autogolf import paths, settings
from autogolf.run import budget, sizing
from autogolf.run.blas import probe as sgemm_probe
from autogolf.run.profiles import Profile

PROBE_TIMEOUT_SECONDS = 900.0  # 1 warm-up + 3 steps + 2 small evaluations, on the slowest CPU

# spawn(command, env, console_path, timeout_s, on_line) -> {"returncode", "timed_out", "trainer_s"}
Spawn = Callable[[list, dict, Path, float, Callable[[str, float], None]], dict]


def needs_probe(profile: Profile, repo_root: Path) -> bool:
    """A sized profile (it has a [sizing] table) with no probe recorded on this host."""
    if profile.sizing is None:
        return False
    return budget.sizing_record(budget.read_machine_file(budget.machine_path(repo_root)), profile.name) is None


def baseline_trainer(repo_root: Path, out_dir: Path) -> tuple[Path, str]:
    """The baseline trainer is the version HEAD holds (on a fresh clone: the project's own):
    the agent's uncommitted edits must not size the budget. Outside git: the working file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = subprocess.run(["git", "-C", str(repo_root), "show", f"HEAD:{paths.TRAINER_RELPATH}"],
                           capture_output=True, timeout=60)
    data = shown.stdout if shown.returncode == 0 and shown.stdout else (repo_root / paths.TRAINER_RELPATH).read_bytes()
    path = out_dir / "train_gpt_mlx.py"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def machine_gflops() -> float | None:
    """Today's fp32 sgemm GFLOP/s (autogolf/blas.py, ~0.5 s); None when it cannot run."""
    try:
        return round(float(sgemm_probe()["gflops"]), 1)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def rules_for(profile: Profile) -> sizing.Rules:
    """The profile's [sizing] rules; AUTOGOLF_SIZING_TARGET (seconds of training) replaces
    the target, for a user who wants breadth shorter or longer on this machine."""
    raw = settings.get("AUTOGOLF_SIZING_TARGET")
    if not raw:
        return profile.sizing
    try:
        target = float(raw)
        if target <= 0:
            raise ValueError
    except ValueError:
        raise sizing.SizingError(f"AUTOGOLF_SIZING_TARGET={raw!r} is not a positive number of seconds") from None
    return dataclasses.replace(profile.sizing, target_train_seconds=target)


def _drop_weights(out_dir: Path) -> None:
    """The probe's model files are tens of MB and mean nothing: only its logs stay."""
    for path in out_dir.glob("*"):
        if path.suffix in (".npz", ".ptz") or path.name == "train_gpt_mlx.py":
            path.unlink(missing_ok=True)


def size(profile: Profile, env: dict, repo_root: Path, spawn: Spawn, say: Callable[[str], None]) -> dict:
    """Probe the baseline trainer, choose the budget and record both in logs/machine.json.
    Returns the record; raises sizing.SizingError when the probe gave no throughput."""
    rules = rules_for(profile)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = repo_root / "logs" / "probe" / stamp
    trainer, sha = baseline_trainer(repo_root, out_dir)
    say(f"autoresearch: sizing {profile.name} to this machine: probing the baseline trainer "
        f"(HEAD's, sha256 {sha[:12]}) for {sizing.PROBE_STEPS} steps of {sizing.PROBE_BATCH_TOKENS:,} "
        f"tokens; once per machine (logs/machine.json), `just calibrate --quick` re-sizes")
    gflops = machine_gflops()
    probe_env = dict(env, **sizing.probe_settings(profile.resolved), RUN_ID=f"probe-{stamp}",
                     OUT_DIR=str(out_dir), PYTHONUNBUFFERED="1")
    clock = sizing.StepClock(started=0.0)
    started = time.monotonic()
    try:
        outcome = spawn([sys.executable, str(trainer)], probe_env, out_dir / "console.txt",
                        PROBE_TIMEOUT_SECONDS, clock.feed)
    finally:
        _drop_weights(out_dir)
    cost = time.monotonic() - started
    if outcome["returncode"] != 0 or outcome.get("timed_out"):
        raise sizing.SizingError(f"the probe trainer failed (exit {outcome['returncode']}"
                                 f"{', timed out' if outcome.get('timed_out') else ''}); its output is in "
                                 f"{(out_dir / 'console.txt').relative_to(repo_root)}")
    probe = sizing.analyse(clock, outcome["trainer_s"])
    probe.update(at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), trainer_sha256=sha, sgemm_gflops=gflops,
                 probe_s=round(cost, 2), blas_preload=env.get("LD_PRELOAD", ""))
    choice = sizing.choose_tokens(rules, probe["train_tok_s"])
    record = {"probe": probe, "tokens": choice["tokens"], "predicted_train_s": choice["predicted_train_s"],
              "predicted_trainer_s": round(sizing.predicted_trainer_s(probe, choice["tokens"]), 1),
              "ladder": list(rules.ladder), "target_train_seconds": rules.target_train_seconds,
              "min_timeout_seconds": rules.min_timeout_seconds,
              "probe_allowance": rules.probe_allowance,
              "timeout_margin": rules.timeout_margin, "note": choice["note"]}
    record = budget.write_sizing(budget.machine_path(repo_root), profile.name, record)
    say(f"autoresearch: sizing: {probe['train_tok_s']:.0f} training tok/s, {probe['fixed_s']:.0f} s "
        f"fixed cost (probe took {cost:.0f} s; sgemm {gflops} GFLOP/s): {profile.name} trains on "
        f"{choice['tokens']:,} tokens, about {choice['predicted_train_s']:.0f} s (target "
        f"{rules.target_train_seconds:.0f} s){'; ' + choice['note'] if choice['note'] else ''}")
    return record
