"""CPU speed for upstream's trainer, kept outside it.

benchmark/train_gpt_mlx.py is upstream's file plus one guarded hook near its top:

    try:
        from autogolf.run.cpu_speed import install as _autogolf_install
    except ImportError:
        _autogolf_install = None
    if _autogolf_install is not None:
        COMPUTE_DTYPE = _autogolf_install(COMPUTE_DTYPE, __name__)

Without this package (a submission, upstream's machines) the trainer runs as upstream's does.
With it, `install` first hands a rank of an mlx.launch group (NPROC / HOSTS) to
run/data_parallel.py, on every backend: upstream's file is one process, and that module makes
its ranks train one model (each rank computes on its rows of every batch, the outputs are
summed over the group, the ranks share rank 0's clock, rank 0 alone writes). It lives here,
outside the trainer, because those edits would sit in the lines records change and break their
diffs; in one process it does nothing. Then, on a CPU only (Metal and CUDA are left exactly as
upstream), `install`:
  - makes MLX use an optimized BLAS: the mlx[cpu] wheel binds its matmuls to a reference
    BLAS (~6 GFLOP/s) unless MKL/OpenBLAS is in the process first. The harness starts the
    trainer with LD_PRELOAD set (run/blas.py); started by hand it restarts itself once so;
  - returns float32 as the compute dtype (bf16 matmul on a CPU is ~35x slower than fp32
    with a fast BLAS). COMPUTE_DTYPE=bfloat16|float16|float32 overrides it;
  - replaces two primitives by faster CPU versions of the SAME mathematics, so whatever the
    agent writes around them still takes effect:
      mx.fast.scaled_dot_product_attention: with mask="causal", computed block by block
        (ATTN_BLOCK_SIZE, default 128), never computing the masked upper triangle; with an
        array mask (a sliding window, say) or none, the plain masked softmax -- the agent's
        mask is always the one applied;
      mx.fast.rope: the same rotation from cos/sin tables computed once per shape;
    every other case (sinks, traditional RoPE, custom freqs, ...) calls MLX's own function;
  - spreads batches over CPU streams (_patch_compile, RowSplit): MLX runs each stream on its own
    thread, but its elementwise kernels single-threaded, so one stream leaves cores idle. The
    ranks of a data-parallel run on this machine share its cores; the rank split wraps this one.
AUTOGOLF_CPU_SPEED=0 turns the CPU part off (the trainer then is upstream's, bf16 included);
data parallelism stays, as NPROC / HOSTS ask for it.

This module never writes files; it is imported read-only from the installed package.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

from autogolf import settings
from autogolf.run import data_parallel

_ORIGINAL: dict = {}  # name -> MLX's own function, before install() replaced it
_TABLES: dict = {}  # RoPE cos/sin tables and attention masks, per shape (graph constants)
LOG2E = 1.4426950408889634
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def _int_env(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {low} (unset: {default})")
    return value


def install(compute_dtype, module_name: str = ""):
    """The trainer's hook: data parallelism in a rank of an mlx.launch group (every backend;
    run/data_parallel.py), then the CPU set-up (the module docstring). Returns the compute
    dtype to use."""
    import mlx.core as mx

    cpu = mx.default_device().type == mx.DeviceType.cpu and settings.get("AUTOGOLF_CPU_SPEED") != "0"
    if cpu and module_name == "__main__":
        _ensure_fast_blas()  # may restart this process: before it joins a group, not after
    world = data_parallel.install(module_name)
    if cpu:
        compute_dtype = _install_cpu(module_name, data_parallel.local_ranks())
    data_parallel.patch_compile(world)  # outermost: this rank's rows, then the CPU streams' split
    return compute_dtype


def _install_cpu(module_name: str, local_ranks: int):
    import mlx.core as mx

    os.environ.setdefault("MLX_BFS_MAX_WIDTH", "1024")  # lets the streams' ops run together
    # keep freed buffers for reuse (default 32 MB): fresh pages cost a kernel page fault each
    mx.set_cache_limit(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
    name = os.environ.get("COMPUTE_DTYPE", "") or "float32"
    if name not in DTYPE_NAMES:
        raise ValueError(f"COMPUTE_DTYPE={name!r}: use one of {', '.join(DTYPE_NAMES)} (or leave it unset)")
    patch_primitives(_int_env("ATTN_BLOCK_SIZE", 128, 0))
    streams = cpu_streams(_int_env("CPU_STREAMS", 0, 0), local_ranks)
    if len(streams) > 1:
        _patch_compile(streams)
    if module_name == "__main__":
        from autogolf.run import blas
        print(f"backend:cpu device:{mx.default_device()} compute_dtype:{name} blas:{blas.loaded_blas()} "
              f"mlx:{mx.__version__} cpu_speed:autogolf.run.cpu_speed cpu_streams:{len(streams)}", flush=True)
    return getattr(mx, name)


def _ensure_fast_blas() -> None:
    from autogolf.run import blas

    if not blas.needs_fast_blas() or blas.loaded_blas() != "reference":
        return
    env = blas.preload_env()
    if env.get("LD_PRELOAD", "") == os.environ.get("LD_PRELOAD", ""):
        return  # nothing to preload, or it was tried and did not load
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def patch_primitives(block: int) -> None:
    """Route mx.fast.scaled_dot_product_attention and mx.fast.rope through the CPU versions
    below (idempotent). block: the attention block size; 0 computes causal attention whole."""
    import mlx.core as mx

    _ORIGINAL.setdefault("sdpa", mx.fast.scaled_dot_product_attention)
    _ORIGINAL.setdefault("rope", mx.fast.rope)

    def sdpa(q, k, v, *, scale, mask=None, sinks=None, stream=None, **kw):
        if sinks is not None or stream is not None or kw or q.shape[-2] != k.shape[-2]:
            return _ORIGINAL["sdpa"](q, k, v, scale=scale, mask=mask, sinks=sinks, stream=stream, **kw)
        if isinstance(mask, str):
            if mask != "causal":
                raise ValueError(f"scaled_dot_product_attention: unknown mask {mask!r}")
            return causal_attention(q, k, v, scale, block or q.shape[-2])
        return masked_attention(q, k, v, scale, mask)

    def rope(a, dims, *, traditional, base, scale, offset, freqs=None, stream=None):
        if traditional or freqs is not None or base is None or stream is not None \
                or not isinstance(offset, int) or dims % 2:
            return _ORIGINAL["rope"](a, dims, traditional=traditional, base=base, scale=scale, offset=offset,
                                     freqs=freqs, stream=stream)
        return table_rope(a, dims, base, scale, offset)

    mx.fast.scaled_dot_product_attention = sdpa
    mx.fast.rope = rope


def unpatch_primitives() -> None:
    """MLX's own functions back (tests compare both)."""
    import mlx.core as mx

    if _ORIGINAL:
        mx.fast.scaled_dot_product_attention, mx.fast.rope = _ORIGINAL["sdpa"], _ORIGINAL["rope"]


@contextlib.contextmanager
def own_primitives():
    """Within it, MLX's own mx.fast functions (what Metal and CUDA run); afterwards, whatever
    was installed before (tests compare the two on the CPU)."""
    import mlx.core as mx

    before = mx.fast.scaled_dot_product_attention, mx.fast.rope
    unpatch_primitives()
    try:
        yield
    finally:
        mx.fast.scaled_dot_product_attention, mx.fast.rope = before


def table_rope(a, dims: int, base: float, scale: float, offset: int):
    """mx.fast.rope's non-traditional rotation (channel i turns with channel i + dims/2, by
    angle (offset + t) * scale * base^(-i / (dims/2))) from cos/sin tables made once per shape
    in float32: elementwise work the CPU does fast, where the fused kernel is slow there."""
    import mlx.core as mx

    T, half = a.shape[-2], dims // 2
    key = ("rope", T, dims, float(base), float(scale), offset, a.dtype)
    if key not in _TABLES:
        inv_freq = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * (math.log(base) / half))
        theta = ((mx.arange(T, dtype=mx.float32) + offset) * scale)[:, None] * inv_freq
        _TABLES[key] = (mx.cos(theta).astype(a.dtype), mx.sin(theta).astype(a.dtype))
        mx.eval(*_TABLES[key])
    cos, sin = _TABLES[key]
    x1, x2 = a[..., :half], a[..., half:dims]
    parts = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]
    if dims < a.shape[-1]:
        parts.append(a[..., dims:])
    return mx.concatenate(parts, axis=-1)


def masked_attention(q, k, v, scale: float, mask):
    """softmax(scale q k^T [+ or where] mask) v, the whole score matrix: what the agent's own
    mask (additive, or boolean with True = attend) asks for, on (B, H, T, hd) q and
    (B, KV, S, hd) k, v (GQA: KV heads shared by H/KV query heads)."""
    import mlx.core as mx

    B, H, T, hd = q.shape
    kv = k.shape[1]
    g = H // kv
    s = (q * scale).reshape(B, kv, g, T, hd) @ k[:, :, None].swapaxes(-1, -2)  # (B, KV, g, T, S)
    if mask is not None:
        m = mask if mask.ndim <= 2 else mx.broadcast_to(mask, (B, H, T, k.shape[2])).reshape(s.shape)
        s = mx.where(m, s, mx.array(-math.inf, s.dtype)) if m.dtype == mx.bool_ else s + m.astype(s.dtype)
    p = mx.softmax(s, axis=-1, precise=True)
    return (p @ v[:, :, None]).reshape(B, H, T, hd)


def _diag_mask(rows: int, group: int, dtype):
    """Additive (0 / -inf) causal mask of a diagonal block: rows are (token, head-in-group)
    pairs, as causal_attention lays them out."""
    import mlx.core as mx
    import numpy as np

    key = ("diag", rows, group, dtype)
    if key not in _TABLES:
        keep = np.repeat(np.tri(rows, dtype=bool), group, axis=0)
        _TABLES[key] = mx.array(np.where(keep, 0.0, -np.inf), dtype=dtype)
        mx.eval(_TABLES[key])
    return _TABLES[key]


def causal_attention(q, k, v, scale: float, block: int):
    """Causal softmax(scale q k^T) v block by block, without the key blocks the mask hides.

    Query block i attends to all earlier keys and to its own diagonal block (masked). Each
    row's softmax still runs over exactly the kept scores with one shared row max, so the
    result equals the fused kernel's up to float rounding, while the upper triangle (about
    half of a T x T score matrix) is never computed. GQA: the H/KV query heads sharing a KV
    head become extra rows of one matrix product. Returns (B, H, T, hd) as a transposed view
    of (B, T, H, hd), so upstream's transpose back to (B, T, H * hd) costs no copy."""
    import mlx.core as mx

    B, H, T, hd = q.shape
    kv = k.shape[1]
    group = H // kv
    # Scores in base 2: softmax(s) = 2^(s log2(e) - m) / sum, the same numbers, and MLX's CPU
    # power kernel is ~2.5x faster than its exp, the single biggest cost of CPU attention.
    q = (q * (scale * LOG2E)).reshape(B, kv, group, T, hd).transpose(0, 1, 3, 2, 4).reshape(B, kv, T * group, hd)
    k, v = mx.contiguous(k), mx.contiguous(v)
    outs = []
    for start in range(0, T, block):
        stop = min(start + block, T)
        qi = q[:, :, start * group:stop * group]  # rows (token, head-in-group) of one token block
        s_diag = qi @ k[:, :, start:stop].swapaxes(-1, -2) + _diag_mask(stop - start, group, q.dtype)
        row_max = s_diag.max(axis=-1, keepdims=True)
        if start:
            s_past = qi @ k[:, :, :start].swapaxes(-1, -2)
            row_max = mx.maximum(row_max, s_past.max(axis=-1, keepdims=True))
        row_max = mx.stop_gradient(row_max)  # any per-row shift gives the same softmax
        p = mx.power(2.0, s_diag - row_max)
        num, den = p @ v[:, :, start:stop], p.sum(axis=-1, keepdims=True)
        if start:
            p = mx.power(2.0, s_past - row_max)
            num, den = num + p @ v[:, :, :start], den + p.sum(axis=-1, keepdims=True)
        outs.append(num / den)  # normalize the (rows x hd) output, not the (rows x keys) weights
    y = mx.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]
    return y.reshape(B, kv, T, group, hd).transpose(0, 2, 1, 3, 4).reshape(B, T, H, hd).transpose(0, 2, 1, 3)


def cpu_streams(requested: int, local_ranks: int = 1) -> list:
    """One MLX stream per core (CPU_STREAMS, default min(cores, 8); 1: off), one BLAS thread
    each when there are several (the streams already fill the cores). The ranks of a
    data-parallel run on this machine share its cores: each gets cores / local_ranks."""
    import mlx.core as mx

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(cores // max(local_ranks, 1), 1)
    n = requested or min(cores, 8)
    if n > 1:
        _set_blas_threads(1)
    elif local_ranks > 1:
        _set_blas_threads(cores)  # one stream: BLAS threads over this rank's share, not every core
    return [mx.default_stream(mx.cpu)] + [mx.new_stream(mx.cpu) for _ in range(n - 1)]


def _set_blas_threads(n: int) -> None:
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "/" in line})
    except OSError:
        return
    for path in paths:
        if os.path.basename(path).startswith(("libmkl_rt", "libopenblas")):
            lib = ctypes.CDLL(path)
            for name in ("MKL_Set_Num_Threads", "openblas_set_num_threads"):
                if hasattr(lib, name):
                    getattr(lib, name)(ctypes.c_int(n))
                    return


def _patch_compile(streams: list) -> None:
    """mx.compile, but a model-bound function (compiled with `inputs=`, as upstream compiles
    its loss and its loss-and-gradient) called on a batch of token ids (x, y) runs on slices
    of the batch's rows, one per CPU stream, and returns the row-weighted sum of the slices'
    outputs: the whole batch's mean loss and its gradients, up to rounding. That holds for a
    loss that is a mean over the batch's rows; RowSplit checks it on the first call and
    falls back to the whole batch, saying so, when the two disagree."""
    import mlx.core as mx

    _ORIGINAL.setdefault("compile", mx.compile)

    def compile(fun, inputs=None, outputs=None, shapeless=False):
        compiled = _ORIGINAL["compile"](fun, inputs=inputs, outputs=outputs, shapeless=shapeless)
        return compiled if inputs is None else RowSplit(compiled, streams)

    mx.compile = compile


class RowSplit:
    """A compiled function of (x, y) token ids run on row slices over CPU streams (above)."""

    def __init__(self, fn, streams: list):
        self.fn, self.streams = fn, streams
        self.checked = None  # None: not yet compared with the whole batch; then True/False

    def _splittable(self, args, kwargs) -> bool:
        return self.checked is not False and data_parallel.token_batch(args, kwargs) and args[0].shape[0] >= 2

    def __call__(self, *args, **kwargs):
        import mlx.core as mx
        from mlx.utils import tree_map

        if not self._splittable(args, kwargs):
            return self.fn(*args, **kwargs)
        x, y = args
        n = x.shape[0]
        parts = min(len(self.streams), n)
        bounds = [n * i // parts for i in range(parts + 1)]
        total = None
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            with mx.stream(self.streams[i]):
                w = (b - a) / n
                out = tree_map(lambda t, w=w: t * w, self.fn(x[a:b], y[a:b]))
                total = out if total is None else tree_map(lambda s, t: s + t, total, out)
        if self.checked is None and not self._first_call_check(x[:2], y[:2]):
            return self.fn(x, y)
        return total

    def _first_call_check(self, x, y) -> bool:
        """Once: the two rows' mean of f on each row alone against f on both (a quarter of an
        8-row step, not a second step); keep splitting only if they agree."""
        self.checked = data_parallel.is_row_mean(self.fn, x, y)
        if not self.checked:
            print("WARNING: cpu_speed: this compiled function is not a mean over the batch's rows, so it "
                  "runs on whole batches (no CPU stream split); slower, same result", flush=True)
        return self.checked
