"""What the trainer must choose on each backend, as data, and which row this machine is.

The suite runs on Linux CPU here and in CI, and must pass on a Mac (Metal) and on CUDA,
which we cannot run. So every backend-dependent expectation lives in these tables: a test on
this machine checks its own row against what the trainer really does, and tests/test_backends.py
runs the other rows' branches of the trainer's logic on the CPU, as far as MLX allows.
"""

from __future__ import annotations

# backend -> the trainer's defaults there (COMPUTE_DTYPE / ATTN_BLOCK_SIZE override them)
EXPECTED = {
    "cpu": {"compute_dtype": "float32", "attn_block_size": 128, "cpu_machinery": True},
    "metal": {"compute_dtype": "bfloat16", "attn_block_size": 0, "cpu_machinery": False},
    "cuda": {"compute_dtype": "bfloat16", "attn_block_size": 0, "cpu_machinery": False},
}


def this_backend() -> str:
    """The row of EXPECTED this machine runs, from MLX's own availability checks."""
    import mlx.core as mx

    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return "cpu"


def backend_line_prefix() -> str | None:
    """How this machine's `backend:` line (printed by the CPU hook, autogolf/run/cpu_speed.py)
    must start; None on a GPU, where the hook does nothing and prints nothing."""
    if this_backend() != "cpu":
        return None
    return f"backend:cpu device:Device(cpu, 0) compute_dtype:{EXPECTED['cpu']['compute_dtype']} blas:"
