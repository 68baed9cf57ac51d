"""What the trainer must choose on each backend, as data, and which row this machine is.

The suite runs on Linux CPU here and in CI, and must pass on a Mac (Metal) and on CUDA,
which we cannot run. So every backend-dependent expectation lives in these tables: a test on
this machine checks its own row against what the trainer really does, and tests/test_backends.py
runs the other rows' branches of the trainer's logic on the CPU, as far as MLX allows.
"""

from __future__ import annotations

import sys

# backend -> the trainer's defaults there (COMPUTE_DTYPE / ATTN_BLOCK_SIZE override them)
EXPECTED = {
    "cpu": {"compute_dtype": "float32", "attn_block_size": 128, "cpu_machinery": True},
    "metal": {"compute_dtype": "bfloat16", "attn_block_size": 0, "cpu_machinery": False},
    "cuda": {"compute_dtype": "bfloat16", "attn_block_size": 0, "cpu_machinery": False},
}

# (platform, preloaded MKL/OpenBLAS or None) -> the `blas:` label of the trainer's backend line
EXPECTED_BLAS = [
    ("linux", "/venv/lib/libmkl_rt.so.2", "mkl(/venv/lib/libmkl_rt.so.2)"),
    ("linux", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
     "openblas(/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)"),
    ("linux", None, "reference"),
    ("darwin", None, "accelerate"),
]


def this_backend() -> str:
    """The row of EXPECTED this machine runs, from MLX's own availability checks."""
    import mlx.core as mx

    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return "cpu"


def blas_without_preload() -> str:
    """The BLAS label a run with the preload turned off must show on this platform."""
    return next(label for platform, lib, label in EXPECTED_BLAS if lib is None and sys.platform.startswith(platform))


def backend_line_prefix() -> str:
    """How this machine's `backend:` line must start."""
    backend = this_backend()
    device = "Device(cpu, 0)" if backend == "cpu" else "Device(gpu, 0)"
    return f"backend:{backend} device:{device} compute_dtype:{EXPECTED[backend]['compute_dtype']} blas:"


def reference_blas_warning_expected() -> bool:
    """The trainer warns about the slow reference BLAS only where one is in use: Linux CPU."""
    return this_backend() == "cpu" and sys.platform.startswith("linux")
