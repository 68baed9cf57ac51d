"""Give MLX an optimized BLAS on Linux CPU, and measure it.

The mlx-cpu wheel links a bundled *reference* BLAS: fp32 sgemm runs at ~6 GFLOP/s.
Loading MKL (from PyPI, into the venv's lib/) or the system OpenBLAS before libmlx
makes MLX's cblas_* calls bind to it instead (~180-390 GFLOP/s). Two ways:
  - LD_PRELOAD=<lib> for a child process (what the harness does for every trainer run);
  - ctypes.CDLL(<lib>, RTLD_GLOBAL) before `import mlx.core` (in-process; the trainer
    does this itself when it was started without LD_PRELOAD).

`python -m autogolf.run.blas` prints what is found and a measured sgemm GFLOP/s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from autogolf import settings

# Below this, MLX is running on the reference BLAS (or worse): say so loudly.
SLOW_GFLOPS = 30.0

# Debian/Ubuntu OpenBLAS locations (libopenblas0-pthread / libopenblas0 packages).
_SYSTEM_OPENBLAS = [
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
]


def needs_fast_blas() -> bool:
    """Only Linux CPU wheels ship the reference BLAS; macOS uses Accelerate and CUDA
    uses cuBLAS for the heavy work."""
    return sys.platform.startswith("linux")


def find_fast_blas(prefix: str | None = None, env: dict | None = None) -> str | None:
    """Path of an optimized BLAS to preload, or None.
    AUTOGOLF_BLAS=<path> forces one; AUTOGOLF_BLAS=none disables the preload."""
    forced = settings.get("AUTOGOLF_BLAS", env)
    if forced == "none":
        return None
    if forced:
        if not Path(forced).is_file():
            raise FileNotFoundError(f"AUTOGOLF_BLAS={forced} does not exist")
        return forced
    prefix = prefix or sys.prefix
    for pattern in ("lib/libmkl_rt.so.*", "lib/libmkl_rt.so"):
        hits = sorted(glob.glob(os.path.join(prefix, pattern)))
        if hits:
            return hits[0]
    arch = platform.machine()
    for candidate in _SYSTEM_OPENBLAS:
        path = candidate.format(arch=arch)
        if Path(path).is_file():
            return path
    return None


def preload_env(env: dict | None = None) -> dict:
    """A copy of env with the optimized BLAS in LD_PRELOAD (Linux only; no-op elsewhere)."""
    env = dict(os.environ if env is None else env)
    if not needs_fast_blas():
        return env
    lib = find_fast_blas(env=env)
    if lib is None:
        return env
    current = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if lib not in current:
        env["LD_PRELOAD"] = ":".join([lib] + current)
    return env


def loaded_blas() -> str:
    """Name the BLAS mapped into this process: mkl, openblas, accelerate or reference."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "accelerate" if sys.platform == "darwin" else "unknown"
    if "libmkl_rt" in maps:
        return "mkl"
    if "libopenblas" in maps:
        return "openblas"
    return "reference"


def sgemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul throughput of MLX in this process (best of `repeats`)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((n, n), dtype=mx.float32)
    b = mx.random.normal((n, n), dtype=mx.float32)
    mx.eval(a @ b)  # warm-up: thread pools, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def probe(n: int = 1024) -> dict:
    """Run the sgemm probe in a child process with the preload the harness would use."""
    code = ("import json, sys; from autogolf.run.blas import sgemm_gflops, loaded_blas;"
            f"g = sgemm_gflops({n}); print(json.dumps({{'gflops': g, 'blas': loaded_blas()}}))")
    env = preload_env()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["preload"] = env.get("LD_PRELOAD", "")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that MLX has an optimized BLAS and "
                                     "print a measured fp32 matmul GFLOP/s.")
    parser.add_argument("--size", type=int, default=1024,
                        help="matrix size n for the n x n x n sgemm probe (default 1024)")
    parser.add_argument("--print-preload", action="store_true",
                        help="only print the library the harness would LD_PRELOAD, and exit")
    args = parser.parse_args(argv)
    if args.print_preload:
        print(find_fast_blas() or "" if needs_fast_blas() else "")
        return 0
    result = probe(args.size)
    print(f"blas: {result['blas']} preload={result['preload'] or '-'} "
          f"sgemm_{args.size}: {result['gflops']:.1f} GFLOP/s")
    if needs_fast_blas() and (result["blas"] == "reference" or result["gflops"] < SLOW_GFLOPS):
        bar = "!" * 78
        print(f"{bar}\nWARNING: MLX is using a slow BLAS ({result['gflops']:.1f} GFLOP/s). "
              "Training will be ~30x slower.\n  Fix: re-run scripts/setup.sh (installs MKL "
              f"from PyPI on x86_64), or `apt-get install libopenblas0-pthread`.\n{bar}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
