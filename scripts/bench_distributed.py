#!/usr/bin/env python3
"""1 process against N data-parallel processes (mlx.launch, ring, loopback), and this trainer
against a reference revision's (`.venv/bin/python scripts/bench_distributed.py`).

Runs the trainer three ways on the same data, seed and global batch:
  ref    the trainer at --reference (default: main), one process
  one    this checkout's trainer, one process
  many   this checkout's trainer, --nproc processes through mlx.launch
and prints every step's train_loss side by side, the largest differences, the final
post-round-trip val_bpb of each, and the throughput (median tok/s of the timed steps).
One process splits each batch over N CPU streams and each rank uses one, so all three split
the batch alike. It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.measure import logparse  # noqa: E402
from autogolf.run import distributed  # noqa: E402
from autogolf.run.blas import preload_env  # noqa: E402
from autogolf.data.cache import resolve_dataset  # noqa: E402
from autogolf.data.dataview import build_view  # noqa: E402

TRAINER = REPO / "benchmark" / "train_gpt_mlx.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24, help="training steps of each run (default 24)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default 2)")
    p.add_argument("--reference", default="main",
                   help="git revision whose trainer is the single-process reference (default main; '' skips it)")
    p.add_argument("--layers", type=int, default=2, help="NUM_LAYERS (default 2)")
    p.add_argument("--dim", type=int, default=128, help="MODEL_DIM (default 128)")
    p.add_argument("--batch-tokens", type=int, default=4096,
                   help="TRAIN_BATCH_TOKENS, the global batch of every run (default 4096)")
    p.add_argument("--seq-len", type=int, default=256, help="TRAIN_SEQ_LEN (default 256)")
    p.add_argument("--val-tokens", type=int, default=16384,
                   help="validation tokens scored, the first of the split (default 16384)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run (default 1800)")
    return p.parse_args(argv)


def run(name: str, trainer: Path, nproc: int, args, work: Path) -> logparse.ParsedLog:
    dataset, tokenizer = args.data
    env = preload_env(dict(os.environ, DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), RUN_ID=name,
                           OUT_DIR=str(work), ITERATIONS=str(args.steps), WARMUP_STEPS="1", TRAIN_LOG_EVERY="1",
                           MAX_WALLCLOCK_SECONDS="0", WARMDOWN_ITERS=str(args.steps),
                           TRAIN_BATCH_TOKENS=str(args.batch_tokens), GRAD_ACCUM_STEPS="1",
                           TRAIN_SEQ_LEN=str(args.seq_len), MLX_MAX_MICROBATCH_TOKENS=str(args.batch_tokens),
                           VAL_BATCH_SIZE=str(args.batch_tokens),
                           NUM_LAYERS=str(args.layers), MODEL_DIM=str(args.dim), NUM_HEADS="4",
                           NUM_KV_HEADS="2", CPU_STREAMS=str(args.nproc if nproc == 1 else 1),
                           PYTHONUNBUFFERED="1"))
    launch = distributed.plan({"NPROC": str(nproc)})
    cmd = distributed.trainer_command(sys.executable, trainer, launch, REPO)
    print(f"bench_distributed: running {name} ({nproc} process{'es' if nproc > 1 else ''}) ...", flush=True)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    code, note = distributed.rank_returncode(out.returncode, out.stderr)
    if code != 0:
        raise SystemExit(f"bench_distributed: {name} failed ({code}) {note}\n{out.stdout[-1500:]}{out.stderr[-1500:]}")
    return logparse.parse_file(work / f"{name}.txt")


def data_view(work: Path, val_tokens: int) -> tuple[Path, Path]:
    """The cache's train shards and the first val_tokens of its validation split (upstream's
    trainer scores the whole split it is given), as the harness gives every run."""
    dataset, tokenizer, _ = resolve_dataset(REPO / "data")
    view, _ = build_view(dataset, work / "view", val_tokens, 0)
    return view, tokenizer


def reference_trainer(rev: str, work: Path) -> Path | None:
    if not rev:
        return None
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:benchmark/train_gpt_mlx.py"],
                          capture_output=True, text=True)
    if text.returncode != 0:
        print(f"bench_distributed: no trainer at {rev!r} ({text.stderr.strip()}); skipping the reference")
        return None
    path = work / "reference_trainer.py"
    path.write_text(text.stdout)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # a trainer neither through the harness hook nor joining the group itself: one process
        distributed.require_support(TRAINER)
    except distributed.LaunchError as e:
        print(f"bench_distributed: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        work = Path(tmp)
        args.data = data_view(work, args.val_tokens)
        runs = {}
        ref = reference_trainer(args.reference, work)
        if ref is not None:
            runs[f"ref({args.reference})"] = run("ref", ref, 1, args, work)
        runs["one"] = run("one", TRAINER, 1, args, work)
        runs[f"nproc{args.nproc}"] = run("many", TRAINER, args.nproc, args, work)
    names = list(runs)
    print("\nstep " + " ".join(f"{n:>14}" for n in names))
    for i in range(args.steps):
        print(f"{i + 1:>4} " + " ".join(f"{runs[n].train_steps[i].train_loss:>14.4f}" for n in names))
    base = runs["one"]
    for n in names:
        if n == "one":
            continue
        diff = max(abs(a.train_loss - b.train_loss) for a, b in zip(base.train_steps, runs[n].train_steps))
        bpb_diff = abs(base.roundtrip_exact[1] - runs[n].roundtrip_exact[1])
        print(f"one vs {n}: max |train_loss diff| over {args.steps} steps = {diff:.4f} (printed to 4 decimals); "
              f"|final val_bpb diff| = {bpb_diff:.8f}")
    for n in names:
        timed = [s.tok_s for s in runs[n].train_steps[1:] if s.tok_s]  # step 1 pays for compilation
        print(f"{n:>14}: final val_bpb {runs[n].roundtrip_exact[1]:.8f}  median tok_s {statistics.median(timed):.0f} "
              f"(global batch {args.batch_tokens} tokens, {len(timed)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
