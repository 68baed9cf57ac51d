#!/usr/bin/env python3
"""Trainer throughput benchmark: FLOPs per token, tok/s, achieved GFLOP/s, and the ratio to
an sgemm peak measured in the same run (`just bench-trainer`).

It runs the trainer (benchmark/train_gpt_mlx.py) for a few steps on a fixed config and
reads the trainer's own `step:` lines. When upstream's trainer is present
(.upstream/parameter-golf/train_gpt_mlx.py, else this repository's git copy of it, or
--upstream PATH) it also runs it on the
same data and config, twice: as-is (bfloat16 compute), and as a "savvy user" would run it
(float32 compute, patched into a temporary copy outside the repo), and prints ours/upstream.

This measures; it never asserts speed. Every trainer process gets the optimized BLAS through
LD_PRELOAD (autogolf.run.blas.preload_env), and so does the sgemm probe.

FLOPs per token (multiply-add = 2 FLOPs; forward + backward = 3 x forward):
    N_mm      = L * (d*d [q] + 2*d*kv_dim [k, v] + d*d [out] + 2*mlp_mult*d*d [mlp])
                + V*d [the tied output head; the embedding lookup is not a matmul]
    matmul    = 6 * N_mm
    attention = 12 * L * T * d   (q.k scores and p@v: 2*T*d each per token and layer, forward;
                                  x3 for fwd+bwd)
    total     = matmul + attention
Attention is counted over the FULL T x T score matrix, the convention of PaLM's MFU formula
(6N + 12*L*T*d) and what the upstream baseline computes. A trainer that skips the blocks
the causal mask hides does less work than credited; the causal half alone would be
6 * L * (T + 1) * d, printed for reference. Not counted: norms, RoPE, softmax and other
elementwise work, the optimizer (Muon's Newton-Schulz runs once per step, not per token).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.run.blas import preload_env, probe  # noqa: E402
from autogolf.data.shards import list_shards, read_tokens, write_shard  # noqa: E402

DEFAULT_TRAINER = REPO / "benchmark" / "train_gpt_mlx.py"
DEFAULT_UPSTREAM = REPO / ".upstream" / "parameter-golf" / "train_gpt_mlx.py"
# bf16 matmul on the Linux CPU runs at ~5 GFLOP/s whatever the BLAS: used for rough ETAs
BF16_CPU_GFLOPS = 5.0


@dataclass(frozen=True)
class Config:
    layers: int
    dim: int
    heads: int
    kv_heads: int
    mlp_mult: int
    vocab: int
    seq_len: int
    batch_tokens: int  # tokens per optimizer step = one microbatch = one chunk

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


CONFIGS = {
    # upstream's baseline model at 8,192 tokens per step (8 sequences of 1024)
    "baseline": Config(layers=9, dim=512, heads=8, kv_heads=4, mlp_mult=2, vocab=1024, seq_len=1024,
                       batch_tokens=8192),
    "small": Config(layers=4, dim=256, heads=4, kv_heads=2, mlp_mult=2, vocab=1024, seq_len=512,
                    batch_tokens=8192),
    # for tests: seconds per step even in bfloat16
    "tiny": Config(layers=2, dim=64, heads=2, kv_heads=1, mlp_mult=2, vocab=1024, seq_len=128,
                   batch_tokens=1024),
}


def flops_per_token(c: Config) -> dict:
    """Training FLOPs per token (see the module docstring for the formula)."""
    kv_dim = c.kv_heads * c.head_dim
    per_layer = c.dim * c.dim + 2 * c.dim * kv_dim + c.dim * c.dim + 2 * c.mlp_mult * c.dim * c.dim
    matmul_params = c.layers * per_layer + c.vocab * c.dim
    matmul = 6 * matmul_params
    attention = 12 * c.layers * c.seq_len * c.dim
    return {"matmul_params": matmul_params, "matmul": matmul, "attention": attention,
            "attention_causal": 6 * c.layers * (c.seq_len + 1) * c.dim, "total": matmul + attention}


def expected_model_params(c: Config) -> int:
    """Parameter count of the baseline architecture: the matmul weights (the tied embedding
    counted once) plus the control tensors (attn_scale, mlp_scale, 2 x resid_mix, q_gain per
    block; one skip weight vector per U-Net skip). A trainer reporting another count has a
    different architecture, and the FLOPs formula above no longer describes it."""
    control = c.layers * (4 * c.dim + c.heads) + (c.layers // 2) * c.dim
    return flops_per_token(c)["matmul_params"] + control


# ----------------------------------------------------------------------------------- data

def resolve_data(args) -> tuple[Path | None, Path]:
    """(dataset dir or None for random tokens, tokenizer path)."""
    data_path = Path(args.data_path).resolve() if args.data_path else None
    # absolute: the trainers run in a temporary working directory
    tokenizer = Path(args.tokenizer_path).resolve() if args.tokenizer_path else None
    if data_path is None and not args.random_data:
        try:
            from autogolf.data.cache import CacheError, resolve_dataset
            found_dir, found_tok, _ = resolve_dataset(REPO / "data")
            data_path, tokenizer = found_dir, tokenizer or found_tok
        except (ImportError, CacheError, OSError, ValueError) as e:
            print(f"data: no finished dataset cache under {REPO / 'data'} ({type(e).__name__}); using "
                  f"random tokens (pass --data-path, or build one with `just bootstrap`)")
    if data_path is not None and not list_shards(data_path, "train"):
        sys.exit(f"error: {data_path} has no fineweb_train_*.bin shards; pass --data-path to a dataset "
                 f"folder or --random-data")
    if tokenizer is None:
        candidates = sorted((REPO / "data" / "tokenizers").glob("*.model"))
        tokenizer = candidates[0] if candidates else None
    if tokenizer is None or not tokenizer.is_file():
        sys.exit(f"error: no SentencePiece tokenizer ({tokenizer or 'data/tokenizers/*.model'} not found); "
                 f"pass --tokenizer-path PATH.model (vocab size must match the config) or run `just bootstrap`")
    return data_path, tokenizer


def build_bench_dataset(src: Path | None, dest_root: Path, c: Config, total_steps: int, seed: int) -> Path:
    """A dataset folder both trainers read: the source's train shards (symlinked) or random
    tokens, and a validation split of ONE sequence, so the end-of-run evaluations the
    trainers always do (last step and int8 round trip) cost next to nothing."""
    name = src.name if src is not None else "bench_random"
    dest = dest_root / "datasets" / name
    dest.mkdir(parents=True)
    val_tokens = c.seq_len + 1
    rng = np.random.default_rng(seed)
    if src is None:
        # enough for warm-up and timed steps without wrapping, plus slack
        n = (total_steps + 2) * c.batch_tokens + 1
        write_shard(dest / "fineweb_train_000000.bin", rng.integers(0, c.vocab, n, dtype=np.uint16))
        write_shard(dest / "fineweb_val_000000.bin", rng.integers(0, c.vocab, val_tokens, dtype=np.uint16))
        return dest
    for shard in list_shards(src, "train"):
        (dest / shard.name).symlink_to(shard.resolve())
    val_shards = list_shards(src, "val")
    if not val_shards:
        sys.exit(f"error: {src} has no fineweb_val_*.bin shard; the trainers need one")
    tokens = read_tokens(val_shards[0], mmap=True)[:val_tokens]
    if tokens.size < val_tokens:
        sys.exit(f"error: {val_shards[0]} has {tokens.size} tokens, fewer than one sequence of {c.seq_len} + 1")
    write_shard(dest / "fineweb_val_000000.bin", np.array(tokens, dtype=np.uint16))
    return dest


# ----------------------------------------------------------------------------------- runs

STEP_LINE = re.compile(r"^step:(\d+)/(\d+) train_loss:\S+ train_time:(\d+)ms step_avg:\S+ms tok_s:(\d+)$")
MODEL_PARAMS_LINE = re.compile(r"^model_params:(\d+) ")
ECHO = ("warmup_step:", "step:", "model_params:", "backend:", "compute_dtype:", "error", "Error",
        "Traceback", "stopping_early")


@dataclass
class Run:
    name: str
    trainer: Path
    steps: int
    warmup: int
    log_path: Path | None = None
    tok_s: float | None = None
    step_ms: float | None = None
    steps_timed: int = 0
    model_params: int | None = None
    note: str = ""
    error: str = ""


def trainer_env(c: Config, data_dir: Path, tokenizer: Path, out_dir: Path, run: Run) -> dict:
    env = preload_env(dict(os.environ))
    env.update({
        "DATA_PATH": str(data_dir), "TOKENIZER_PATH": str(tokenizer), "OUT_DIR": str(out_dir),
        "RUN_ID": f"bench_{run.name}", "ITERATIONS": str(run.steps), "WARMUP_STEPS": str(run.warmup),
        "TRAIN_BATCH_TOKENS": str(c.batch_tokens), "GRAD_ACCUM_STEPS": "1",
        "MLX_MAX_MICROBATCH_TOKENS": str(c.batch_tokens), "TRAIN_SEQ_LEN": str(c.seq_len),
        "NUM_LAYERS": str(c.layers), "MODEL_DIM": str(c.dim), "NUM_HEADS": str(c.heads),
        "NUM_KV_HEADS": str(c.kv_heads), "MLP_MULT": str(c.mlp_mult), "VOCAB_SIZE": str(c.vocab),
        # a step line for every step, no periodic validation, no wall-clock cap
        "TRAIN_LOG_EVERY": "1", "VAL_LOSS_EVERY": "0", "MAX_WALLCLOCK_SECONDS": "0",
        # the one-sequence validation split
        "VAL_BATCH_SIZE": str(c.seq_len),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def throughput(steps: list[tuple[int, int, int]], batch_tokens: int) -> tuple[float, float, int, str]:
    """(tok/s, ms/step, steps timed, note) from (step, train_time_ms, tok_s) rows. The first
    timed step still pays one-off costs (the optimizer's first call, allocation), so with two
    or more steps it is dropped and the rest are timed by their train_time difference."""
    steps = sorted(steps)
    if len(steps) >= 2:
        n = len(steps) - 1
        ms = steps[-1][1] - steps[0][1]
        if ms > 0:
            return batch_tokens * n / (ms / 1000.0), ms / n, n, ""
    _, _, tok_s = steps[-1]
    return float(tok_s), 1000.0 * batch_tokens / max(tok_s, 1e-9), 1, \
        "one step: includes first-step overhead"


def run_trainer(run: Run, c: Config, env: dict, work: Path, timeout: float, eta_s: float) -> Run:
    """Run one trainer to completion, echoing its progress lines, and parse its step lines."""
    run.log_path = work / f"{run.name}.console.txt"
    print(f"\n[{run.name}] {run.trainer}  ({run.warmup} warm-up + {run.steps} steps; "
          f"rough ETA {fmt_s(eta_s)})  load:{os.getloadavg()[0]:.2f}", flush=True)
    cmd = [sys.executable, str(run.trainer)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL)) if timeout > 0 else None
    if timer:
        timer.start()
    rows, tail = [], []
    try:
        with open(run.log_path, "w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip("\n")
                tail = (tail + [line])[-20:]
                elapsed = time.perf_counter() - start
                if m := STEP_LINE.match(line):
                    rows.append((int(m[1]), int(m[3]), int(m[4])))
                elif m := MODEL_PARAMS_LINE.match(line):
                    run.model_params = int(m[1])
                if line.startswith(ECHO):
                    extra = ""
                    if line.startswith(f"warmup_step:{run.warmup}/") and run.warmup > 0:
                        # the warm-up ran the real step shapes: a fair per-step estimate
                        per_step = elapsed / run.warmup
                        extra = f"  (ETA ~{fmt_s(per_step * run.steps)} for the timed steps)"
                    print(f"  [{run.name} {elapsed:7.1f}s] {line[:200]}{extra}", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    if proc.returncode != 0:
        why = f"timed out after {timeout:.0f}s" if proc.returncode == -signal.SIGKILL else \
            f"exit code {proc.returncode}"
        run.error = f"{why}; last lines: " + " | ".join(tail[-5:])
    if rows:
        run.tok_s, run.step_ms, run.steps_timed, run.note = throughput(rows, c.batch_tokens)
    elif not run.error:
        run.error = "no step: lines with tok_s in its output"
    return run


def patch_upstream_fp32(upstream: Path, dest_dir: Path) -> Path:
    """A temporary copy of upstream's trainer computing in float32 (it hard-codes bfloat16)."""
    source = upstream.read_text(encoding="utf-8")
    patched, n = re.subn(r"^COMPUTE_DTYPE = mx\.bfloat16[ \t]*$", "COMPUTE_DTYPE = mx.float32", source,
                         flags=re.MULTILINE)
    if n != 1:
        sys.exit(f"error: {upstream}: expected one line `COMPUTE_DTYPE = mx.bfloat16` to patch to float32, "
                 f"found {n}; update patch_upstream_fp32 in {Path(__file__).name} for this upstream version")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / upstream.name
    dest.write_text(patched, encoding="utf-8")
    return dest


def fmt_s(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


# ----------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", choices=sorted(CONFIGS), default="baseline",
                   help="model and batch shape: baseline (9x512, seq 1024, 8,192 tokens/step), "
                        "small (4x256, seq 512), tiny (2x64, seq 128; for tests). Default baseline")
    p.add_argument("--steps", type=int, default=4,
                   help="training steps of our trainer after the warm-up; the first is not timed "
                        "when there are two or more (default 4)")
    p.add_argument("--warmup", type=int, default=1,
                   help="WARMUP_STEPS: compile-priming steps before the clock starts (default 1)")
    p.add_argument("--trainer", default=str(DEFAULT_TRAINER),
                   help="our trainer script (default benchmark/train_gpt_mlx.py)")
    p.add_argument("--data-path",
                   help="dataset folder with fineweb_{train,val}_*.bin (default: the cache in data/, "
                        "else random tokens)")
    p.add_argument("--tokenizer-path",
                   help="SentencePiece .model matching the data (default: the cache's tokenizer, else "
                        "the first data/tokenizers/*.model)")
    p.add_argument("--random-data", action="store_true",
                   help="train on uniformly random tokens even when a cache exists (speed does not "
                        "depend on the token values)")
    p.add_argument("--upstream", default=str(DEFAULT_UPSTREAM),
                   help="upstream's train_gpt_mlx.py to compare with, when the file exists "
                        "(default .upstream/parameter-golf/train_gpt_mlx.py)")
    p.add_argument("--no-upstream", action="store_true", help="skip the upstream comparison")
    p.add_argument("--upstream-modes", default="as-is,fp32",
                   help="comma-separated upstream runs: as-is (its bfloat16 compute) and/or fp32 "
                        "(a temporary copy patched to float32). Default as-is,fp32")
    p.add_argument("--upstream-steps", type=int, default=2,
                   help="timed steps for upstream after 1 warm-up step (default 2; as-is at the "
                        "baseline config takes minutes per step)")
    p.add_argument("--probe-size", type=int, default=2048,
                   help="n of the n x n x n fp32 sgemm peak probe (default 2048)")
    p.add_argument("--timeout", type=float, default=7200,
                   help="seconds before a trainer run is killed (0: never; default 7200)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary folder (data, consoles, trainer logs) and print its path")
    args = p.parse_args(argv)
    if args.steps < 1 or args.upstream_steps < 1 or args.warmup < 0:
        p.error("--steps and --upstream-steps must be at least 1, --warmup at least 0")
    modes = [m for m in args.upstream_modes.split(",") if m]
    if not set(modes) <= {"as-is", "fp32"}:
        p.error(f"--upstream-modes {args.upstream_modes!r}: use as-is and/or fp32")
    args.modes = modes
    return args


def sgemm_peak(n: int) -> tuple[float, str]:
    result = probe(n)
    return result["gflops"], result["blas"]


def print_header(args, c, f: dict, data_src, tokenizer) -> None:
    print(f"config:{args.config} layers:{c.layers} dim:{c.dim} heads:{c.heads} kv_heads:{c.kv_heads} "
          f"mlp_mult:{c.mlp_mult} vocab:{c.vocab} seq_len:{c.seq_len} batch_tokens:{c.batch_tokens}")
    print(f"flops_per_token:{f['total']} matmul:{f['matmul']} (6 x {f['matmul_params']} matmul params) "
          f"attention:{f['attention']} (12*L*T*d, full TxT; causal half would be {f['attention_causal']})")
    print(f"data:{data_src or 'random tokens'} tokenizer:{tokenizer}")
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} (others may share the cores)")


def plan_runs(args, trainer: Path, upstream: Path, use_upstream: bool, work: Path) -> list[Run]:
    """Our trainer, then upstream's as it is and patched to float32 (when fetched and asked)."""
    runs = [Run("ours", trainer, args.steps, args.warmup)]
    if use_upstream:
        if "as-is" in args.modes:
            runs.append(Run("upstream_as_is", upstream, args.upstream_steps, 1))
        if "fp32" in args.modes:
            runs.append(Run("upstream_fp32", patch_upstream_fp32(upstream, work / "upstream_fp32"),
                            args.upstream_steps, 1))
    elif not args.no_upstream:
        print(f"upstream: {upstream} not found; comparing nothing (fetch it with `just bootstrap`)")
    return runs


def print_table(runs: list[Run], f: dict, c, peak: float) -> None:
    """One Markdown row per run: tok/s, ms/step, GFLOP/s and its share of the sgemm peak."""
    want_params = expected_model_params(c)
    print("\n| run | tok/s | ms/step | GFLOP/s | of sgemm peak | steps timed | note |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        if r.tok_s is None:
            print(f"| {r.name} | - | - | - | - | 0 | FAILED: {r.error[:150]} |")
            continue
        gflop_s = f["total"] * r.tok_s / 1e9
        note = "; ".join(x for x in (r.note, r.error and f"exit: {r.error[:100]}") if x)
        if r.model_params is not None and r.model_params != want_params:
            note = "; ".join(x for x in (note, f"model_params {r.model_params} != {want_params}: "
                                         f"architecture differs, FLOPs formula is approximate") if x)
        print(f"| {r.name} | {r.tok_s:.1f} | {r.step_ms:.0f} | {gflop_s:.2f} | {gflop_s / peak:.1%} "
              f"| {r.steps_timed} | {note} |")
    print()


def print_machine_lines(runs: list[Run], f: dict, config: str, peak: float) -> None:
    """BENCH lines, one per run (GFLOP/s = flops_per_token * tok/s / 1e9), and RATIO lines."""
    for r in runs:
        if r.tok_s is not None:
            gflop_s = f["total"] * r.tok_s / 1e9
            print(f"BENCH name={r.name} config={config} flops_per_token={f['total']} "
                  f"tok_s={r.tok_s:.2f} gflop_s={gflop_s:.3f} sgemm_gflop_s={peak:.1f} "
                  f"peak_ratio={gflop_s / peak:.4f} steps_timed={r.steps_timed} "
                  f"model_params={r.model_params if r.model_params is not None else '-'}")
    ours = runs[0]
    for r in runs[1:]:
        if ours.tok_s and r.tok_s:
            print(f"RATIO ours/{r.name}={ours.tok_s / r.tok_s:.2f}")


def bench(args, c, f: dict, trainer: Path, upstream: Path, use_upstream: bool, data_src, tokenizer,
          work: Path) -> int:
    """The sgemm peak, every run on the same data, the peak again; then the results."""
    peak_before, blas = sgemm_peak(args.probe_size)
    print(f"sgemm_probe: {args.probe_size}^3 fp32 {peak_before:.1f} GFLOP/s blas:{blas} "
          f"load:{os.getloadavg()[0]:.2f}", flush=True)
    runs = plan_runs(args, trainer, upstream, use_upstream, work)
    most_steps = max(r.steps + r.warmup for r in runs)
    data_dir = build_bench_dataset(data_src, work, c, most_steps, seed=1337)
    flops_step = f["total"] * c.batch_tokens
    for run in runs:
        gflops_guess = BF16_CPU_GFLOPS if run.name == "upstream_as_is" else 0.3 * peak_before
        eta = flops_step * (run.steps + run.warmup) / (gflops_guess * 1e9)
        env = trainer_env(c, data_dir, tokenizer, work / "logs", run)
        run_trainer(run, c, env, work, args.timeout, eta)
    peak_after, _ = sgemm_peak(args.probe_size)
    peak = max(peak_before, peak_after)
    print(f"\nsgemm_probe: after the runs {peak_after:.1f} GFLOP/s load:{os.getloadavg()[0]:.2f}; "
          f"peak used: {peak:.1f} (the best of the two; other users of the cores lower it)")
    print_table(runs, f, c, peak)
    print_machine_lines(runs, f, args.config, peak)
    if args.keep:
        print(f"kept: {work} (consoles *.console.txt, trainer logs in logs/)")
    failed = [r for r in runs if r.tok_s is None]
    for r in failed:
        print(f"error: {r.name} failed ({r.error}); full console: "
              f"{r.log_path if args.keep else 'rerun with --keep'}", file=sys.stderr)
    return 1 if failed else 0


def upstream_from_git(work: Path) -> Path | None:
    """Upstream's trainer at the pinned commit from this repository's git objects
    (autogolf/measure/upstream.py), written into the work folder; None if it is not there."""
    from autogolf.measure.upstream import UpstreamMissing, upstream_bytes

    try:
        data, where = upstream_bytes()
    except UpstreamMissing as e:
        print(f"upstream: {e}")
        return None
    path = work / "upstream" / "train_gpt_mlx.py"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    print(f"upstream: {where}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    c = CONFIGS[args.config]
    f = flops_per_token(c)
    trainer = Path(args.trainer).resolve()
    if not trainer.is_file():
        sys.exit(f"error: trainer {trainer} not found; pass --trainer PATH")
    upstream = Path(args.upstream).resolve()
    data_src, tokenizer = resolve_data(args)
    print_header(args, c, f, data_src, tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        if not upstream.is_file() and args.upstream == str(DEFAULT_UPSTREAM):
            upstream = upstream_from_git(work)  # not bootstrapped: this repository's copy of it
        use_upstream = not args.no_upstream and upstream is not None and upstream.is_file() and args.modes
        return bench(args, c, f, trainer, upstream, use_upstream, data_src, tokenizer, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
