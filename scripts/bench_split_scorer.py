"""What the split scorer costs against the in-process scorer it replaced, measured on one artifact.

Trains the trainer under a profile's settings for a few steps (no machine lock: run it on an
idle machine), then scores its artifact alternately with
  before  the in-process scorer of git revision --before (autogolf/measure/score.py there,
          which imported the trainer and computed everything in one process), and
  after   this checkout's split scorer (a child runs harness_load and sends logits over a
          pipe; the trusted process scores them, draws the random probe, scores the holdout),
--rounds times each, both with the trainer's val_bpb so both score the holdout. Prints each
phase, the medians, and each cost as a share of a whole run of the profile, estimated as
  run_s = steps x step_s + 2 x final evaluation + the rest of the trainer's process time
(the steps: the profile's TRAIN_BUDGET_TOKENS / the trainer's tokens per step, else ITERATIONS).

    .venv/bin/python scripts/bench_split_scorer.py [--profile breadth] [--steps 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.data import dataview  # noqa: E402
from autogolf.data.cache import resolve_dataset  # noqa: E402
from autogolf.run import profiles  # noqa: E402
from autogolf.run.blas import preload_env  # noqa: E402


def train(prof, steps: int, out: Path) -> tuple[dict, dict]:
    dataset, tokenizer, _ = resolve_dataset(REPO / "data")
    env = dict(os.environ, **prof.resolved)
    env.update(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), OUT_DIR=str(out), RUN_ID="bench",
               ITERATIONS=str(steps), PYTHONUNBUFFERED="1")
    env = preload_env(env)
    t = time.perf_counter()
    log = subprocess.run([sys.executable, str(REPO / "benchmark" / "train_gpt_mlx.py")], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    facts = {"trainer_s": time.perf_counter() - t,
             "step_s": float(re.findall(r"step_avg:([\d.]+)ms", log)[-1]) / 1000,
             "eval_s": float(re.search(r"final_int8_zlib_roundtrip .*eval_time:(\d+)ms", log)[1]) / 1000,
             "bpb": float(re.search(r"final_int8_zlib_roundtrip_exact .*val_bpb:([\d.]+)", log)[1]),
             "step_tokens": int(re.search(r"train_batch_tokens:(\d+)", log)[1]),
             "dataset": dataset, "tokenizer": tokenizer}
    return facts, env


def score_once(cmd: list[str], env: dict, cwd: Path, out: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, json.loads(out.read_text())


def commands(facts: dict, prof, work: Path, before: str) -> dict[str, list[str]]:
    view = dataview.plan_slices(sum(dataview.val_stream(facts["dataset"])[1]),
                                int(prof.resolved.get("VAL_MAX_TOKENS", 0)), prof.holdout_tokens)
    old = work / "old_score.py"
    old.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{before}:autogolf/measure/score.py"],
                                  capture_output=True, text=True, check=True).stdout)
    common = ["--trainer", str(REPO / "benchmark" / "train_gpt_mlx.py"),
              "--artifact", str(work / "bench_mlx_model.int8.ptz"), "--dataset-dir", str(facts["dataset"].resolve()),
              "--tokenizer", str(Path(facts["tokenizer"]).resolve()), "--selection", "%d:%d" % view.selection,
              "--trainer-bpb", repr(facts["bpb"]), "--batch-tokens",
              str(int(prof.resolved.get("VAL_BATCH_SIZE", 8192)) // int(prof.resolved.get("GRAD_ACCUM_STEPS", 1)))]
    if view.holdout:
        common += ["--holdout", "%d:%d" % view.holdout]
    return {"before": [sys.executable, str(old), *common, "--out", str(work / "before.json")],
            "after": [sys.executable, "-m", "autogolf.measure.score", *common, "--out", str(work / "after.json")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="breadth")
    parser.add_argument("--steps", type=int, default=2, help="training steps to time (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="scorings of each kind, alternating (default 2)")
    parser.add_argument("--before", default="main", help="git revision of the in-process scorer (default main)")
    args = parser.parse_args()
    prof = profiles.load(args.profile, environ={})
    work = Path(tempfile.mkdtemp(prefix="bench-split-"))
    facts, env = train(prof, args.steps, work)
    scorer_env = {k: v for k, v in env.items() if k not in ("DATA_PATH", "OUT_DIR", "RUN_ID")}
    scorer_env["PYTHONPATH"] = str(REPO)
    cmds = commands(facts, prof, work, args.before)
    runs: dict[str, list] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for kind in ("before", "after"):
            wall, result = score_once(cmds[kind], scorer_env, work, work / f"{kind}.json")
            runs[kind].append((wall, result))
            print(f"{kind}: process {wall:.1f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())
                  + f"; val_bpb {result['selection']['val_bpb']:.8f} (trainer {facts['bpb']:.8f})", flush=True)
    report(prof, facts, runs)
    return 0


def report(prof, facts: dict, runs: dict) -> None:
    budget = prof.resolved.get("TRAIN_BUDGET_TOKENS")
    steps = int(budget) / facts["step_tokens"] if budget else int(prof.resolved.get("ITERATIONS", 1))
    rest = facts["trainer_s"] - 2 * facts["step_s"] - 2 * facts["eval_s"]  # start-up, compile, export
    run_s = steps * facts["step_s"] + 2 * facts["eval_s"] + max(rest, 0.0)

    def med(kind: str, phase: str | None = None) -> float:
        return statistics.median(w if phase is None else r["seconds"].get(phase, 0.0) for w, r in runs[kind])

    split = med("after", "selection") - med("before", "selection")
    probe_now = med("after", "probe") + med("after", "artifact_only")
    probe_then = med("before", "probe")  # the fixed probe and the artifact check, one phase then
    rows = [("whole scoring, before (in-process)", med("before")), ("whole scoring, after (split)", med("after")),
            ("split: selection phase after - before", split), ("probe + artifact check after (random, 8 windows)", probe_now),
            ("probe before (fixed, 1 window + artifact check)", probe_then),
            ("holdout after", med("after", "holdout")), ("holdout before", med("before", "holdout"))]
    print(f"\nrun of {prof.name} estimated: {steps:.0f} steps x {facts['step_s']:.1f} s + 2 x {facts['eval_s']:.1f} s "
          f"evaluation + {max(rest, 0):.1f} s rest = {run_s:.0f} s")
    for name, seconds in rows:
        print(f"  {name:52s} {seconds:8.2f} s  {100 * seconds / run_s:6.2f}% of the run")
    added = med("after") - med("before")
    print(f"  {'added by this change (after - before, whole scoring)':52s} {added:8.2f} s  "
          f"{100 * added / run_s:6.2f}% of the run")


if __name__ == "__main__":
    sys.exit(main())
