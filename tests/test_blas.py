"""The optimized-BLAS wiring: found, preloaded into child processes, and measured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autogolf.run import blas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the BLAS preload is a Linux CPU concern")

CHILD = ("from autogolf.run.blas import loaded_blas, sgemm_gflops; "
         "print(loaded_blas(), round(sgemm_gflops(256, 2), 1))")


def run_child(env: dict) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, check=True)
    name, gflops = out.stdout.split()
    return name, float(gflops)


def test_an_optimized_blas_is_installed_by_the_project():
    # scripts/setup.sh installs MKL from PyPI (x86_64) or Debian's OpenBLAS.
    lib = blas.find_fast_blas()
    assert lib is not None and os.path.isfile(lib), "no optimized BLAS: re-run scripts/setup.sh"


def test_preload_env_makes_mlx_use_it_in_a_child_process():
    env = blas.preload_env({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert blas.find_fast_blas() in env["LD_PRELOAD"].split(":")
    name, gflops = run_child(env)
    assert name in ("mkl", "openblas")
    assert gflops > 0
    print(f"sgemm 256 with {name}: {gflops} GFLOP/s")


def test_preload_is_idempotent_and_keeps_existing_entries():
    first = blas.preload_env({"LD_PRELOAD": "/lib/other.so"})
    second = blas.preload_env(first)
    assert first["LD_PRELOAD"] == second["LD_PRELOAD"]
    assert first["LD_PRELOAD"].endswith(":/lib/other.so")


def test_disabled_preload_runs_the_reference_blas_and_the_check_warns():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["AUTOGOLF_BLAS"] = "none"
    assert "LD_PRELOAD" not in blas.preload_env(env)
    name, _ = run_child(env)
    assert name == "reference"
    check = subprocess.run([sys.executable, "-m", "autogolf.run.blas", "--size", "256"], env=env,
                           capture_output=True, text=True)
    assert check.returncode == 1
    assert "WARNING: MLX is using a slow BLAS" in check.stderr
    assert "scripts/setup.sh" in check.stderr


def test_forced_library_that_does_not_exist_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AUTOGOLF_BLAS", "/nonexistent/libblas.so")
    with pytest.raises(FileNotFoundError, match="AUTOGOLF_BLAS=/nonexistent"):
        blas.find_fast_blas()
