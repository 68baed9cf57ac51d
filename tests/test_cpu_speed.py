"""autogolf/run/cpu_speed.py: the CPU versions of mx.fast.scaled_dot_product_attention and
mx.fast.rope compute what MLX's own functions compute (forward and gradients), honour any
mask they are given, and the stream split of compiled functions gives the whole batch's
result, or steps aside when a function is not a mean over the batch's rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from autogolf.run import cpu_speed  # noqa: E402


@pytest.fixture
def patched():
    """The primitives patched for the test (block 16), MLX's own ones back afterwards."""
    cpu_speed.patch_primitives(16)
    assert mx.fast.scaled_dot_product_attention is not cpu_speed._ORIGINAL["sdpa"]
    assert mx.fast.rope is not cpu_speed._ORIGINAL["rope"]
    yield cpu_speed._ORIGINAL
    cpu_speed.unpatch_primitives()


def qkv(seed: int, B: int, T: int, H: int, KV: int, hd: int = 16):
    rng = np.random.default_rng(seed)
    return [mx.array(rng.standard_normal(shape).astype(np.float32))
            for shape in ((B, H, T, hd), (B, KV, T, hd), (B, KV, T, hd))]


def both(patched, fn):
    """fn() with the CPU primitives, then with MLX's own."""
    fast = fn()
    cpu_speed.unpatch_primitives()
    try:
        own = fn()
    finally:
        cpu_speed.patch_primitives(16)
    return fast, own


@pytest.mark.parametrize("T,H,KV", [(64, 4, 2), (70, 4, 4), (33, 2, 1), (16, 8, 2)])
def test_causal_attention_equals_mlx_own(patched, T, H, KV):
    q, k, v = qkv(0, 2, T, H, KV)
    fast, own = both(patched, lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal"))
    assert fast.shape == own.shape == (2, H, T, 16)
    np.testing.assert_allclose(np.array(fast), np.array(own), rtol=1e-5, atol=1e-5)


def test_causal_attention_gradients_equal_mlx_own(patched):
    q, k, v = qkv(1, 2, 48, 4, 2)
    cot = mx.array(np.random.default_rng(2).standard_normal((2, 4, 48, 16)).astype(np.float32))

    def grads():
        f = lambda q, k, v: (mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal") * cot).sum()
        return mx.grad(f, argnums=(0, 1, 2))(q, k, v)

    fast, own = both(patched, grads)
    for a, b in zip(fast, own):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)


def sliding_window(T: int, window: int) -> np.ndarray:
    pos = np.arange(T)
    return (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < window)


@pytest.mark.parametrize("kind", ["bool_2d", "additive_2d", "bool_4d", "none"])
def test_array_masks_are_applied_as_given(patched, kind):
    """The agent's own mask (a sliding window here), in each form MLX accepts, gives MLX's
    result, and differs from causal attention: the mask is the one applied."""
    T = 40
    q, k, v = qkv(3, 2, T, 4, 2)
    keep = sliding_window(T, 8)
    mask = {"bool_2d": mx.array(keep), "additive_2d": mx.array(np.where(keep, 0.0, -np.inf).astype(np.float32)),
            "bool_4d": mx.array(np.broadcast_to(keep, (2, 4, T, T)).copy()), "none": None}[kind]
    fast, own = both(patched, lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask))
    np.testing.assert_allclose(np.array(fast), np.array(own), rtol=1e-5, atol=1e-5)
    causal = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert float(mx.max(mx.abs(fast - causal))) > 1e-2


@pytest.mark.parametrize("dims,offset,scale", [(16, 0, 1.0), (8, 0, 1.0), (16, 5, 0.5)])
def test_table_rope_equals_mlx_own(patched, dims, offset, scale):
    x = mx.array(np.random.default_rng(4).standard_normal((2, 4, 50, 16)).astype(np.float32))
    call = lambda: mx.fast.rope(x, dims, traditional=False, base=10000.0, scale=scale, offset=offset)
    fast, own = both(patched, call)
    np.testing.assert_allclose(np.array(fast), np.array(own), rtol=1e-5, atol=1e-5)
    # nn.RoPE calls mx.fast.rope: the replacement is what upstream's module runs
    np.testing.assert_allclose(np.array(nn.RoPE(16, base=500.0)(x)),
                               np.array(cpu_speed.table_rope(x, 16, 500.0, 1.0, 0)), rtol=1e-5, atol=1e-5)


def test_traditional_rope_is_left_to_mlx(patched):
    x = mx.array(np.random.default_rng(5).standard_normal((1, 2, 20, 8)).astype(np.float32))
    fast, own = both(patched, lambda: nn.RoPE(8, traditional=True)(x))
    assert np.array_equal(np.array(fast), np.array(own))
    assert float(mx.max(mx.abs(fast - nn.RoPE(8)(x)))) > 1e-2  # and it is another rotation


def tiny_model_loss(reduction: str):
    mx.random.seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))

    def loss(x, y):
        return nn.losses.cross_entropy(model(x), y, reduction=reduction)

    return model, loss


@pytest.mark.parametrize("reduction,splits", [("mean", True), ("sum", False)])
def test_row_split_gives_the_whole_batch_result_or_steps_aside(capsys, reduction, splits):
    streams = [mx.default_stream(mx.cpu), mx.new_stream(mx.cpu)]
    model, loss = tiny_model_loss(reduction)
    fn = mx.compile(nn.value_and_grad(model, loss), inputs=model.state, outputs=model.state)
    wrapped = cpu_speed.RowSplit(fn, streams)
    rng = np.random.default_rng(6)
    x, y = (mx.array(rng.integers(0, 50, (8, 12)).astype(np.int32)) for _ in range(2))
    for _ in range(2):  # the first call decides, the second runs as decided
        (value, grads), (whole_value, whole_grads) = wrapped(x, y), fn(x, y)
        assert abs(float(value) - float(whole_value)) <= 1e-5 * abs(float(whole_value))
        np.testing.assert_allclose(np.array(grads["layers"][1]["weight"]),
                                   np.array(whole_grads["layers"][1]["weight"]), rtol=1e-4, atol=1e-6)
    assert wrapped.checked is splits
    assert ("not a mean over the batch's rows" in capsys.readouterr().out) is not splits


def test_row_split_leaves_other_calls_alone():
    streams = [mx.default_stream(mx.cpu), mx.new_stream(mx.cpu)]
    calls = []
    wrapped = cpu_speed.RowSplit(lambda *a: calls.append([t.shape for t in a]) or a[0], streams)
    floats = mx.ones((4, 3))
    wrapped(floats, floats)  # not token ids
    wrapped(mx.zeros((4, 3), dtype=mx.int32))  # one argument
    wrapped(mx.zeros((1, 3), dtype=mx.int32), mx.zeros((1, 3), dtype=mx.int32))  # one row
    assert calls == [[(4, 3), (4, 3)], [(4, 3)], [(1, 3), (1, 3)]]


def test_install_returns_the_cpu_dtype_and_refuses_bad_settings(monkeypatch):
    try:
        monkeypatch.setenv("CPU_STREAMS", "1")
        assert cpu_speed.install(mx.bfloat16) == mx.float32
        monkeypatch.setenv("COMPUTE_DTYPE", "bfloat16")
        assert cpu_speed.install(mx.bfloat16) == mx.bfloat16
        monkeypatch.setenv("COMPUTE_DTYPE", "fp8")
        with pytest.raises(ValueError, match="COMPUTE_DTYPE='fp8'"):
            cpu_speed.install(mx.bfloat16)
        monkeypatch.setenv("COMPUTE_DTYPE", "")
        monkeypatch.setenv("ATTN_BLOCK_SIZE", "-3")
        with pytest.raises(ValueError, match="ATTN_BLOCK_SIZE='-3'"):
            cpu_speed.install(mx.bfloat16)
        monkeypatch.setenv("AUTOGOLF_CPU_SPEED", "0")  # off: upstream's dtype, untouched
        assert cpu_speed.install(mx.bfloat16) == mx.bfloat16
    finally:
        cpu_speed.unpatch_primitives()
    assert math.isfinite(float(mx.fast.scaled_dot_product_attention(*qkv(7, 1, 8, 2, 1), scale=1.0).sum()))
