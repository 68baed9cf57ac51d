#!/usr/bin/env python3
"""Where one training step of benchmark/train_gpt_mlx.py spends its time.

Times, on random tokens and the trainer's own code (imported, not run): the compiled
forward+backward of one microbatch, the forward alone, the optimizer step, and one
attention layer (forward+backward) in the blocked CPU form and in MLX's fused SDPA.
Each figure is the best of --repeat runs, as wall time and this process's CPU time
(CPU time is the robust figure when other jobs share the machine).

    .venv/bin/python scripts/profile_trainer.py                 # baseline shapes, 8,192 tokens
    .venv/bin/python scripts/profile_trainer.py --parts attn --block 64
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "benchmark" / "train_gpt_mlx.py"


def load_trainer():
    spec = importlib.util.spec_from_file_location("train_gpt_mlx", TRAINER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timed(name: str, fn, repeat: int) -> None:
    import mlx.core as mx

    mx.eval(fn())  # compile and warm up
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        mx.eval(fn())
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        best_wall = min(best_wall, t1 - t0)
        best_cpu = min(best_cpu, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    print(f"{name:36s} wall {best_wall * 1e3:9.1f} ms   cpu {best_cpu * 1e3:9.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="step,fwd,opt,attn",
                    help="comma-separated subset of step,fwd,opt,attn (default: all)")
    ap.add_argument("--seqs", type=int, default=8, help="sequences per microbatch (default 8)")
    ap.add_argument("--block", type=int, default=-1,
                    help="ATTN_BLOCK_SIZE to profile (-1: the trainer's default for this backend)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is shown (default 3)")
    args = ap.parse_args()
    os.environ.setdefault("MLX_BFS_MAX_WIDTH", "1024")  # as the trainer's main() does
    t = load_trainer()
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    # model settings come from the environment, like the trainer's (NUM_LAYERS=..., etc.)
    hp = t.hyperparameters_from_env(dict(os.environ, ATTN_BLOCK_SIZE=str(args.block)))
    backend, dtype, block, blas, streams = t.setup_backend(hp)
    print(f"backend:{backend} blas:{blas} attention block:{block} cpu_streams:{len(streams)} "
          f"layers:{hp.num_layers} dim:{hp.model_dim} seq:{hp.train_seq_len} x {args.seqs} sequences")
    mx.random.seed(0)
    model = t.GPT(hp, dtype, block)
    for b in model.blocks:  # non-zero output projections, as after a few steps of training
        b.attn.proj.weight = mx.random.normal(b.attn.proj.weight.shape) * 0.02
        b.mlp.proj.weight = mx.random.normal(b.mlp.proj.weight.shape) * 0.02
    rng = np.random.default_rng(0)
    x, y = (mx.array(rng.integers(0, hp.vocab_size, (args.seqs, hp.train_seq_len), dtype=np.int32))
            for _ in range(2))
    loss_and_grad = mx.compile(nn.value_and_grad(model, lambda x, y, w: model.loss(x, y) * w),
                               inputs=model.state, outputs=model.state)
    loss_fn = mx.compile(lambda x, y, w: model.loss(x, y) * w, inputs=model.state, outputs=model.state)
    parts = args.parts.split(",")
    if "step" in parts:
        timed("forward+backward (split over streams)", lambda: t.split_batch(loss_and_grad, x, y, 1.0, streams),
              args.repeat)
    if "fwd" in parts:
        timed("forward only", lambda: t.split_batch(loss_fn, x, y, 1.0, streams), args.repeat)
    if "opt" in parts:
        loss, grads = loss_and_grad(x, y, mx.array(1.0))
        grads = dict(tree_flatten(grads))
        opt = t.MuonAdam(model, hp, streams)

        def step():
            opt.step(model, grads, 10, 1.0)
            return model.parameters(), opt.state()
        timed("optimizer step (Muon + Adam)", step, args.repeat)
    if "attn" in parts:  # one layer, one stream
        hd, kv = hp.model_dim // hp.num_heads, hp.num_kv_heads
        shape = (args.seqs, hp.train_seq_len)
        q = mx.random.normal(shape + (hp.num_heads, hd)) * hd ** -0.5
        k, v = mx.random.normal(shape + (kv, hd)), mx.random.normal(shape + (kv, hd))
        w = mx.random.normal(shape + (hp.model_dim,))

        def blocked(q, k, v):
            return mx.sum(t.blocked_causal_attention(q, k, v, max(block, 1)) * w)

        def fused(q, k, v):
            qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            y = mx.fast.scaled_dot_product_attention(qt, kt, vt, scale=1.0, mask="causal")
            return mx.sum(y.transpose(0, 2, 1, 3).reshape(w.shape) * w)

        for name, f in ((f"blocked({max(block, 1)})", blocked), ("fused sdpa", fused)):
            g = mx.compile(mx.value_and_grad(f, argnums=(0, 1, 2)))
            timed(f"attention 1 layer fwd+bwd {name}", lambda g=g: g(q, k, v), args.repeat)


if __name__ == "__main__":
    main()
