"""Every backend's row of tests/backends.py against what the trainer really does. This
machine's row runs for real; the Metal and CUDA rows run their branch on the CPU: the trainer
exactly as upstream's (bf16 compute, MLX's own fused attention and RoPE), which is what the
harness's hook leaves on a GPU. The kernels themselves run only on a Mac or an NVIDIA GPU."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from autogolf.run import cpu_speed
from backends import EXPECTED, this_backend
from trainer_helpers import import_trainer


@pytest.fixture(scope="module")
def trainer():
    return import_trainer()


def test_this_machine_is_a_row_of_the_table(trainer):
    import mlx.core as mx

    assert this_backend() in EXPECTED
    want = EXPECTED[this_backend()]
    # the hook chose this row's compute dtype when the trainer loaded
    assert trainer.COMPUTE_DTYPE == getattr(mx, want["compute_dtype"])
    patched = bool(cpu_speed._ORIGINAL) and mx.fast.scaled_dot_product_attention is not cpu_speed._ORIGINAL["sdpa"]
    assert patched == want["cpu_machinery"]


@pytest.mark.skipif(this_backend() != "cpu", reason="the CPU's choices; a GPU keeps upstream's")
@pytest.mark.parametrize("env,dtype", [({}, "float32"), ({"COMPUTE_DTYPE": "float16"}, "float16"),
                                       ({"AUTOGOLF_CPU_SPEED": "0"}, "bfloat16")])
def test_compute_dtype_on_the_cpu(env, dtype):
    """float32 by default on the CPU, COMPUTE_DTYPE overrides it, and with the hook off the
    trainer keeps upstream's bfloat16 (what Metal and CUDA run)."""
    import mlx.core as mx

    module = import_trainer(name=f"train_gpt_mlx_dtype_{dtype}", env=env)
    assert module.COMPUTE_DTYPE == getattr(mx, dtype)


def model_for(trainer, dtype_name: str, seed: int = 0):
    """The trainer's model in dtype_name, with non-zero output projections (so attention
    reaches the loss)."""
    import mlx.core as mx

    trainer.COMPUTE_DTYPE = getattr(mx, dtype_name)
    mx.random.seed(seed)
    model = trainer.GPT(vocab_size=1024, num_layers=3, dim=128, num_heads=4, num_kv_heads=2, mlp_mult=2,
                        logit_chunk_tokens=0, logit_softcap=30.0, rope_base=10000.0, tied_embed_init_std=0.005,
                        qk_gain_init=1.5)
    for b in model.blocks:
        b.attn.proj.weight = mx.random.normal(b.attn.proj.weight.shape) * 0.05
        b.mlp.proj.weight = mx.random.normal(b.mlp.proj.weight.shape) * 0.05
    return model


def batch(seed: int = 1, rows: int = 2, seq: int = 160):  # several attention blocks on the CPU
    import mlx.core as mx

    tokens = np.random.default_rng(seed).integers(0, 1024, size=rows * seq + 1).astype(np.int32)
    return mx.array(tokens[:-1].reshape(rows, seq)), mx.array(tokens[1:].reshape(rows, seq))


def loss_and_grads(trainer, dtype_name: str, gpu_branch: bool):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    model = model_for(trainer, dtype_name)
    x, y = batch()
    with cpu_speed.own_primitives() if gpu_branch else contextlib.nullcontext():
        loss, grads = nn.value_and_grad(model, model.loss)(x, y)
        return float(loss), {k: np.array(g.astype(model.skip_weights.dtype)) for k, g in tree_flatten(grads)}


def test_gpu_branch_computes_what_the_cpu_path_computes(trainer):
    """Same weights, float32: upstream's branch (MLX's fused attention and RoPE) and the CPU
    path (blocked attention, RoPE tables) give the same loss and gradients."""
    cpu = loss_and_grads(trainer, "float32", gpu_branch=False)
    gpu = loss_and_grads(trainer, "float32", gpu_branch=True)
    assert abs(cpu[0] - gpu[0]) < 1e-5
    for k, g in cpu[1].items():
        np.testing.assert_allclose(gpu[1][k], g, rtol=1e-3, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("backend", list(EXPECTED))
def test_each_backend_trains_in_its_default_dtype(trainer, backend):
    """One loss and gradient in the backend's default dtype (bf16 on a GPU) on its branch:
    finite, and about ln(vocab) at a near-uniform start."""
    want = EXPECTED[backend]
    loss, grads = loss_and_grads(trainer, want["compute_dtype"], gpu_branch=not want["cpu_machinery"])
    assert abs(loss - math.log(1024)) < 0.15
    assert [k for k, g in grads.items() if not np.isfinite(g.astype(np.float32)).all()] == []
