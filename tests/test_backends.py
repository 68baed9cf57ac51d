"""Every backend's row of tests/backends.py against the trainer's own choices. This machine's
row runs for real; the Metal and CUDA rows run their branches of the trainer's logic on the
CPU (bf16 compute, fused attention, nn.RoPE), which is as far as MLX lets a CPU go: the
kernels themselves run only on a Mac or an NVIDIA GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends import EXPECTED, EXPECTED_BLAS, this_backend
from trainer_helpers import TINY, import_trainer


@pytest.fixture(scope="module")
def trainer():
    return import_trainer()


def hyperparameters(trainer, **env):
    # CPU_STREAMS=1: one stream, so setup_backend leaves this process's BLAS threads alone
    return trainer.hyperparameters_from_env({**TINY, "ATTN_BLOCK_SIZE": "-1", "CPU_STREAMS": "1", **env})


def test_this_machine_is_a_row_of_the_table(trainer):
    assert trainer.detect_backend() == this_backend()
    assert set(trainer.BACKEND_DEFAULTS) == set(EXPECTED)


@pytest.mark.parametrize("backend", list(EXPECTED))
def test_defaults_follow_the_table(trainer, backend):
    import mlx.core as mx

    name, dtype, block, cpu, _, streams = trainer.setup_backend(hyperparameters(trainer), backend)
    want = EXPECTED[backend]
    assert name == backend
    assert dtype == getattr(mx, want["compute_dtype"])
    assert block == want["attn_block_size"] and cpu == want["cpu_machinery"]
    assert (len(streams) == 1) == want["cpu_machinery"]  # CPU_STREAMS=1; none on a GPU
    # the environment overrides both defaults, on every backend
    _, dtype, block, *_ = trainer.setup_backend(
        hyperparameters(trainer, COMPUTE_DTYPE="float16", ATTN_BLOCK_SIZE="32"), backend)
    assert (dtype, block) == (mx.float16, 32)


@pytest.mark.parametrize("platform,lib,label", EXPECTED_BLAS)
def test_blas_label(trainer, platform, lib, label):
    assert trainer.blas_label(platform, lib) == label


def model_for(trainer, backend: str, dtype_name: str, seed: int = 0):
    """The model as the trainer builds it on `backend`, in dtype_name, on this CPU."""
    import mlx.core as mx

    args = hyperparameters(trainer)
    _, _, block, cpu, _, _ = trainer.setup_backend(args, backend)
    mx.random.seed(seed)
    model = trainer.GPT(args, getattr(mx, dtype_name), block, cpu_rope=cpu)
    for b in model.blocks:  # non-zero output projections, so attention reaches the loss
        b.attn.proj.weight = mx.random.normal(b.attn.proj.weight.shape) * 0.05
        b.mlp.proj.weight = mx.random.normal(b.mlp.proj.weight.shape) * 0.05
    return model


def batch(seed: int = 1, rows: int = 2, seq: int = 160):  # two attention blocks on the CPU
    import mlx.core as mx

    tokens = np.random.default_rng(seed).integers(0, 1024, size=rows * seq + 1).astype(np.int32)
    return mx.array(tokens[:-1].reshape(rows, seq)), mx.array(tokens[1:].reshape(rows, seq))


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_gpu_branch_computes_what_the_cpu_branch_computes(trainer, backend):
    """Same weights, float32: the GPU branch (fused attention over the whole causal mask,
    nn.RoPE) and the CPU branch (blocked attention, RoPE tables) give the same loss and
    gradients."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    x, y = batch()
    results = {}
    for b in ("cpu", backend):
        model = model_for(trainer, b, "float32")
        loss, grads = nn.value_and_grad(model, lambda x, y: model.loss(x, y))(x, y)
        results[b] = float(loss), dict(tree_flatten(grads))
    assert abs(results["cpu"][0] - results[backend][0]) < 1e-5
    for k, g in results["cpu"][1].items():
        np.testing.assert_allclose(np.array(results[backend][1][k]), np.array(g), rtol=1e-3, atol=1e-6,
                                   err_msg=k)


@pytest.mark.parametrize("backend", list(EXPECTED))
def test_each_backend_trains_in_its_default_dtype(trainer, backend):
    """One loss and gradient in the backend's default dtype (bf16 on a GPU): finite, and about
    ln(vocab) at a near-uniform start."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    model = model_for(trainer, backend, EXPECTED[backend]["compute_dtype"])
    x, y = batch()
    loss, grads = nn.value_and_grad(model, lambda x, y: model.loss(x, y))(x, y)
    assert abs(float(loss) - math.log(1024)) < 0.15
    assert [k for k, g in tree_flatten(grads) if not bool(mx.all(mx.isfinite(g)))] == []
