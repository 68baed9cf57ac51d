"""What the harness's own score of the artifact costs (autogolf/measure/score.py), measured.

Runs the trainer under a profile's settings for a few steps (no machine lock: run it on an
idle machine), then the harness's scorer on its artifact, and prints: the trainer's step
time and its final evaluation, the scorer's phases (load, causality probe, selection slice,
holdout), their agreement, and the scorer's share of a whole run of the profile estimated as
ITERATIONS x step + 2 evaluations + the rest of the trainer's process time.

    .venv/bin/python scripts/bench_scoring.py [--profile breadth] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.run import profiles  # noqa: E402
from autogolf.run.blas import preload_env  # noqa: E402
from autogolf.data.cache import resolve_dataset  # noqa: E402
from autogolf.data import dataview  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="breadth", help="profile whose settings to use (default breadth)")
    parser.add_argument("--steps", type=int, default=3, help="training steps to time (default 3)")
    args = parser.parse_args()
    prof = profiles.load(args.profile, environ={})
    dataset, tokenizer, _ = resolve_dataset(REPO / "data")
    out = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    env = dict(os.environ, **prof.resolved)
    env.update(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), OUT_DIR=str(out), RUN_ID="bench",
               ITERATIONS=str(args.steps), PYTHONUNBUFFERED="1")
    env = preload_env(env)
    t = time.perf_counter()
    log = subprocess.run([sys.executable, str(REPO / "benchmark" / "train_gpt_mlx.py")], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    trainer_s = time.perf_counter() - t
    step_ms = float(re.findall(r"step_avg:([\d.]+)ms", log)[-1])
    eval_ms = float(re.search(r"final_int8_zlib_roundtrip .*eval_time:(\d+)ms", log)[1])
    trainer_bpb = float(re.search(r"final_int8_zlib_roundtrip_exact .*val_bpb:([\d.]+)", log)[1])
    view = dataview.plan_slices(sum(dataview.val_stream(dataset)[1]), int(prof.resolved.get("VAL_MAX_TOKENS", 0)),
                                prof.holdout_tokens)
    cmd = [sys.executable, "-m", "autogolf.measure.score", "--trainer", str(REPO / "benchmark" / "train_gpt_mlx.py"),
           "--artifact", str(out / "bench_mlx_model.int8.ptz"), "--dataset-dir", str(dataset.resolve()),
           "--tokenizer", str(Path(tokenizer).resolve()), "--selection", "%d:%d" % view.selection,
           "--out", str(out / "score.json")]
    if view.holdout:
        cmd += ["--holdout", "%d:%d" % view.holdout]
    scorer_env = {k: v for k, v in env.items() if k not in ("DATA_PATH", "OUT_DIR", "RUN_ID")}
    t = time.perf_counter()
    subprocess.run(cmd, env=dict(scorer_env, PYTHONPATH=str(REPO)), cwd=out, check=True)
    scorer_s = time.perf_counter() - t
    result = json.loads((out / "score.json").read_text())
    iterations = int(prof.resolved.get("ITERATIONS", args.steps))
    rest_s = trainer_s - args.steps * step_ms / 1000 - 2 * eval_ms / 1000
    run_s = iterations * step_ms / 1000 + 2 * eval_ms / 1000 + rest_s
    without_holdout = scorer_s - result["seconds"].get("holdout", 0.0)
    print(f"trainer: step {step_ms / 1000:.1f} s, final evaluation {eval_ms / 1000:.1f} s, process {trainer_s:.1f} s")
    print("scorer phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items()) + f"; process {scorer_s:.1f} s")
    print(f"agreement: harness {result['selection']['val_bpb']:.8f} trainer {trainer_bpb:.8f} "
          f"|diff| {abs(result['selection']['val_bpb'] - trainer_bpb):.2e}")
    print(f"a whole {args.profile} run ({iterations} steps) estimated at {run_s:.0f} s: scorer {without_holdout:.1f} s "
          f"= {100 * without_holdout / run_s:.1f}% without the holdout, {scorer_s:.1f} s = {100 * scorer_s / run_s:.1f}% with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
