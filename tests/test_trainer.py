"""The trainer benchmark/train_gpt_mlx.py, run for real on tiny models and real data.

The dataset is 200 documents tokenized with a 1024-piece tokenizer (first 20 documents
validation, the rest train), written as real shards: the real FineWeb fixture documents and
the real sp1024 tokenizer when ../shared/fixtures is there, else the project's stand-ins. The
trainer runs as a subprocess, exactly as autoresearch runs it; a few tests also import it
(without running main) to check its parts against independent computations.
"""

from __future__ import annotations

import math
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from autogolf.data.shards import read_tokens, write_shard
from backends import backend_line_prefix, blas_without_preload, reference_blas_warning_expected
from trainer_helpers import (CONTRACT, STOPPING_EARLY, TINY, TRAINER, build_dataset, import_trainer,
                             load_docs, parse_log, run_trainer, tokenize_docs)

# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, corpus) -> Path:
    name = "fineweb200_sp1024" if corpus.real else "synth200_sp1024"
    return build_dataset(tmp_path_factory.mktemp("data"), corpus.tokenizer, corpus.docs, name)


@pytest.fixture(scope="session")
def trainer():
    return import_trainer()


@pytest.fixture(scope="session")
def sp(corpus):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(corpus.tokenizer))


def tiny_env(dataset: Path, **overrides) -> dict:
    env = dict(TINY, DATA_PATH=str(dataset), TOKENIZER_PATH=str(next(dataset.glob("*.model"))))
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Run:
    def __init__(self, env: dict, out_dir: Path):
        self.env, self.out_dir = env, out_dir
        self.proc = run_trainer(env, out_dir)
        assert self.proc.returncode == 0, f"trainer failed:\n{self.proc.stdout[-3000:]}\n{self.proc.stderr[-3000:]}"
        self.log_path = out_dir / f"{env['RUN_ID']}.txt"
        self.log = self.log_path.read_text(encoding="utf-8")
        self.lines = self.log.splitlines()
        self.parsed = parse_log(self.log)

    def train_losses(self) -> list[str]:
        return [m["loss"] for m in self.parsed["train_step"]]


# The main run: 24 steps on a 3-layer dim-128 model (its 1024x128 embedding is big enough
# to be quantized to int8), validation at step 0 and at the end, on the first 4,096
# validation tokens, 4 batches each.
MAIN_ITERATIONS = 24
VAL_CAP = 4100


@pytest.fixture(scope="module")
def main_run(dataset, tmp_path_factory) -> Run:
    env = tiny_env(dataset, RUN_ID="main", ITERATIONS=MAIN_ITERATIONS, VAL_LOSS_EVERY=MAIN_ITERATIONS,
                   TRAIN_BATCH_TOKENS=1024, GRAD_ACCUM_STEPS=2, MLX_MAX_MICROBATCH_TOKENS=256,
                   VAL_MAX_TOKENS=VAL_CAP, WARMDOWN_ITERS=8)
    return Run(env, tmp_path_factory.mktemp("main"))


# ---------------------------------------------------------------------------------------
# the log contract


def test_every_contract_line_is_present_and_parses(main_run, dataset):
    p = main_run.parsed
    for kind in ("model_params", "iterations", "train_loader", "val_loader", "serialized", "final",
                 "final_exact", "code_size", "total_size"):
        assert len(p[kind]) == 1, f"{kind}: expected one line, got {p[kind]}"
    mp = p["model_params"][0]
    assert (mp["V"], mp["L"], mp["D"], mp["H"], mp["KV"], mp["S"], mp["tie"]) == (
        "1024", "3", "128", "4", "2", "64", "True")
    # embedding + per block (q, k, v, out, fc, proj, q_gain, scales, resid_mix) + skip weights
    d, kv_dim = 128, 2 * 32
    block = d * d * 2 + 2 * d * kv_dim + 2 * (d * 2 * d) + 4 + 2 * d + 2 * d
    assert int(mp["n"]) == 1024 * d + 3 * block + 1 * d
    it = p["iterations"][0]
    assert (it["it"], it["t"], it["g"], it["m"], it["b"], it["w"], it["x"]) == (
        str(MAIN_ITERATIONS), "1024", "2", "512", "8", "1", "0.000")
    assert p["train_loader"][0]["name"] == dataset.name
    assert p["train_loader"][0]["n"] == "2"
    steps = [int(m["s"]) for m in p["train_step"]]
    assert steps == list(range(1, MAIN_ITERATIONS + 1))  # TRAIN_LOG_EVERY=1
    assert [int(m["s"]) for m in p["val_step"]] == [0, MAIN_ITERATIONS]
    assert all(int(m["tok_s"]) > 0 for m in p["train_step"])
    assert any(line.startswith(backend_line_prefix()) for line in main_run.lines), backend_line_prefix()
    # the console shows the same lines as the log file
    for kind in ("final_exact", "total_size"):
        assert any(CONTRACT[kind].match(line) for line in main_run.proc.stdout.splitlines())


def test_log_does_not_embed_the_source(main_run):
    assert "def main" not in main_run.log
    assert not any("{" in line for line in main_run.lines), "an f-string template leaked into the log"


def test_code_and_total_submission_size(main_run):
    code = int(main_run.parsed["code_size"][0]["n"])
    assert code == len(TRAINER.read_bytes())
    ptz = main_run.out_dir / "main_mlx_model.int8.ptz"
    assert int(main_run.parsed["serialized"][0]["bytes"]) == ptz.stat().st_size
    assert int(main_run.parsed["total_size"][0]["n"]) == code + ptz.stat().st_size


def test_val_cap_and_progress(main_run, dataset):
    val_total = read_tokens(dataset / "fineweb_val_000000.bin").size
    used = VAL_CAP // 64 * 64
    full = (val_total - 1) // 64 * 64
    assert main_run.parsed["val_loader"][0]["n"] == str(used)
    assert f"val_cap: VAL_MAX_TOKENS={VAL_CAP} using {used} of {full} tokens" in main_run.lines
    # VAL_BATCH_SIZE=1024 / GRAD_ACCUM_STEPS=2 = 8 sequences of 64 per batch: 4096 / 512 = 8
    progress = [line for line in main_run.lines if line.startswith("val_progress:")]
    assert progress[:8] == [f"val_progress:{i}/8" for i in range(1, 9)]
    assert len(progress) == 3 * 8  # step 0, the last step, the round trip


def test_training_lowers_the_loss(main_run):
    first, last = (float(m["loss"]) for m in main_run.parsed["val_step"])
    assert first > 6.5  # about ln(1024) = 6.93 at init
    assert last < first - 0.25, (first, last)  # 24 tiny steps: 6.94 -> about 6.5


def test_int8_round_trip_keeps_the_score(main_run):
    pre = float(main_run.parsed["val_step"][-1]["bpb"])
    post = float(main_run.parsed["final_exact"][0]["bpb"])
    assert abs(post - pre) < 0.01, (pre, post)
    obj = pickle.loads(zlib.decompress((main_run.out_dir / "main_mlx_model.int8.ptz").read_bytes()))
    assert obj["__quant_format__"] == "int8_clean_per_row_v1"
    assert set(obj["quantized"]) == {"tok_emb.weight"}  # the only tensor above 65,536 elements
    assert obj["quantized"]["tok_emb.weight"].dtype == np.int8
    assert obj["scales"]["tok_emb.weight"].shape == (1024,)
    assert obj["passthrough"]["blocks.0.resid_mix"].dtype == np.float32  # control tensor
    assert obj["passthrough"]["blocks.0.attn.c_q.weight"].dtype == np.float16


def is_boundary(sp, token: int) -> bool:
    return sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token)


def independent_target_bytes(sp, window: np.ndarray) -> int:
    """UTF-8 bytes of the text behind window[1:], from sentencepiece's own decoder. The
    metric counts boundary tokens (BOS, <unk>) as 0 bytes and drops the space of the piece
    after one; the decoder does the same at the start of a text, so the window is cut at
    every boundary token and each run between them is decoded on its own."""
    total, run = 0, []
    for t in (int(t) for t in window[1:]):
        if is_boundary(sp, t):
            total += len(sp.decode(run).encode("utf-8"))
            run = []
        else:
            run.append(t)
    return total + len(sp.decode(run).encode("utf-8"))


def test_val_bpb_matches_an_independent_computation(main_run, trainer, sp, dataset):
    """Reload the int8 artifact without the trainer's code, run the model forward (with the
    fused-SDPA attention path, not the trainer's blocked one), and compute the loss in float64
    numpy and the bytes with sentencepiece's decoder."""
    obj = pickle.loads(zlib.decompress((main_run.out_dir / "main_mlx_model.int8.ptz").read_bytes()))
    weights = {}
    for name, q in obj["quantized"].items():
        weights[name] = q.astype(np.float32) * obj["scales"][name].astype(np.float32)[:, None]
    for name, arr in obj["passthrough"].items():
        weights[name] = arr.astype(np.float32)

    import mlx.core as mx
    from mlx.utils import tree_unflatten

    hp = trainer.hyperparameters_from_env(dict(main_run.env, ATTN_BLOCK_SIZE="0"))
    model = trainer.GPT(hp, mx.float32, attn_block=0)
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in weights.items()]))

    seq = hp.train_seq_len
    tokens = read_tokens(dataset / "fineweb_val_000000.bin").astype(np.int64)
    used = min(VAL_CAP, tokens.size - 1) // seq * seq
    x, y = tokens[:used].reshape(-1, seq), tokens[1:used + 1].reshape(-1, seq)
    h = np.array(model(mx.array(x.astype(np.int32))), dtype=np.float64).reshape(-1, hp.model_dim)
    z = h @ weights["tok_emb.weight"].astype(np.float64).T
    logits = hp.logit_softcap * np.tanh(z / hp.logit_softcap)
    top = logits.max(axis=1, keepdims=True)
    logsumexp = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    nll = logsumexp - logits[np.arange(y.size), y.reshape(-1)]
    val_loss = float(nll.mean())
    n_bytes = independent_target_bytes(sp, tokens[:used + 1])
    val_bpb = val_loss / math.log(2) * y.size / n_bytes

    logged = main_run.parsed["final_exact"][0]
    assert abs(val_loss - float(logged["loss"])) < 1e-5, (val_loss, logged)
    assert abs(val_bpb - float(logged["bpb"])) < 1e-5, (val_bpb, logged)


# ---------------------------------------------------------------------------------------
# the metric's byte count, and the trainer's parts


def test_lut_byte_count_equals_decoded_utf8_length(trainer, sp, corpus):
    luts = trainer.build_sentencepiece_luts(sp, 1024)
    docs = tokenize_docs(sp, load_docs(corpus.docs))
    plain = [d for d in docs if not any(sp.is_unknown(int(t)) for t in d)]
    assert len(plain) >= 20
    for doc in plain:  # BOS + text: the bytes are exactly the decoded text's
        counted = int(trainer.target_bytes(doc[:-1], doc[1:], luts).sum())
        assert counted == len(sp.decode([int(t) for t in doc[1:]]).encode("utf-8"))
    # <unk> (the decoder shows " ⁇ ") counts 0 bytes and, like BOS, drops the next space.
    # The real tokenizer emits some on the real documents; a byte-fallback tokenizer trained
    # on its own corpus emits none, so every 97th token is made one as well.
    stream = np.concatenate(docs)
    stream[97::97] = sp.unk_id()
    assert len(plain) < len(docs) or not corpus.real
    counted = int(trainer.target_bytes(stream[:-1], stream[1:], luts).sum())
    assert counted == independent_target_bytes(sp, stream)


def reference_attention(q, k, v, scale, keep=None, transform=None):
    """float64 numpy: q (B, H, T, hd), k, v (B, KV, T, hd); GQA by repetition; keep (T, T)
    bool (default causal); transform applied to the scaled scores. Returns (B, T, H * hd)."""
    B, H, T, hd = q.shape
    group = H // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("bhtd,bhsd->bhts", q, k) * scale
    s = transform(s) if transform else s
    s = np.where(np.tri(T, dtype=bool) if keep is None else keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsd->bthd", p, v).reshape(B, T, H * hd)


def random_qkv(seed: int, B: int, T: int, H: int, KV: int, hd: int = 16):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=s).astype(np.float32) for s in [(B, H, T, hd), (B, KV, T, hd), (B, KV, T, hd)])


@pytest.mark.parametrize("T,block,H,KV", [(64, 16, 4, 2), (70, 16, 4, 4), (64, 64, 8, 2), (33, 8, 2, 1)])
def test_blocked_attention_equals_full_causal_attention(trainer, T, block, H, KV):
    import mlx.core as mx

    q, k, v = random_qkv(T + block, 2, T, H, KV)
    for b in (block, 0):  # the CPU's blocked loop, and the fused kernel
        got = np.array(trainer.causal_attention(mx.array(q), mx.array(k), mx.array(v), 0.25, b))
        want = reference_attention(*(a.astype(np.float64) for a in (q, k, v)), 0.25)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"block={b}")


def attention_difference(trainer, dtype, seed=0, B=2, T=256, H=8, KV=4, hd=64) -> float:
    """Largest |blocked - fused| over one (B, T, H, hd) attention, inputs in dtype."""
    import mlx.core as mx

    q, k, v = (mx.array(a).astype(dtype) for a in random_qkv(seed, B, T, H, KV, hd))
    scale = hd ** -0.5
    blocked = trainer.blocked_attention(q, k, v, scale, 128)
    fused = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    fused = fused.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    return float(mx.max(mx.abs(blocked.astype(mx.float32) - fused.astype(mx.float32))))


@pytest.mark.parametrize("dtype_name,tolerance", [("float32", 1e-5), ("bfloat16", 0.04)])
def test_blocked_attention_agrees_with_the_fused_kernel(trainer, dtype_name, tolerance):
    """The CPU's blocked loop against mx.fast.scaled_dot_product_attention on the same inputs
    (the baseline's head dim 64, GQA 8/4, two key blocks); bf16 carries ~3 significant digits."""
    import mlx.core as mx

    diff = attention_difference(trainer, getattr(mx, dtype_name))
    print(f"blocked vs fused attention, {dtype_name}: max |difference| {diff:.3g}")
    assert diff <= tolerance


def test_blocked_attention_gradients_equal_fused_sdpa(trainer):
    import mlx.core as mx

    q, k, v = (mx.array(a) for a in random_qkv(0, 2, 48, 4, 2))
    w = mx.array(np.random.default_rng(1).normal(size=(2, 48, 64)).astype(np.float32))

    def loss(block):
        return lambda q, k, v: mx.sum(trainer.causal_attention(q, k, v, 0.3, block) * w)

    got = mx.grad(loss(16), argnums=(0, 1, 2))(q, k, v)
    want = mx.grad(loss(0), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(np.array(g), np.array(r), rtol=1e-4, atol=1e-5)


@pytest.fixture
def edited_attention(trainer, monkeypatch):
    """Edits to the attention hooks, as an agent would make them in the file: a sliding
    window of 20 keys and a softcap of 2 on the scores (both undone after the test)."""
    import mlx.core as mx

    def window(q_pos, k_pos):
        return (k_pos <= q_pos) & (q_pos - k_pos < 20)

    def apply(mask: bool, softcap: bool):
        monkeypatch.setattr(trainer, "attention_keep", window if mask else trainer.attention_keep)
        monkeypatch.setattr(trainer, "ATTENTION_SCORE_TRANSFORM", (lambda s: 2.0 * mx.tanh(s / 2.0)) if softcap
                            else None)
        monkeypatch.setattr(trainer, "_KEEP_MATRICES", {})
        monkeypatch.setattr(trainer, "_BLOCK_MASKS", {})
    return apply


@pytest.mark.parametrize("mask,softcap", [(True, False), (False, True), (True, True)],
                         ids=["window", "softcap", "window+softcap"])
def test_attention_edits_apply_on_every_path(trainer, edited_attention, mask, softcap):
    """An edit to the hooks changes the blocked loop (the CPU) and the fused path (a GPU)
    alike, and both equal the edited mathematics computed independently."""
    import mlx.core as mx

    edited_attention(mask, softcap)
    T = 70
    q, k, v = random_qkv(5, 2, T, 4, 2)
    pos = np.arange(T)
    keep = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < 20) if mask else None
    want = reference_attention(*(a.astype(np.float64) for a in (q, k, v)), 0.7, keep,
                               (lambda s: 2.0 * np.tanh(s / 2.0)) if softcap else None)
    plain = reference_attention(*(a.astype(np.float64) for a in (q, k, v)), 0.7)
    assert np.abs(want - plain).max() > 0.05  # the edit really changes the result
    for block in (16, 0):
        got = np.array(trainer.causal_attention(mx.array(q), mx.array(k), mx.array(v), 0.7, block))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"block={block}")


def test_attention_mask_that_sees_the_future_is_refused(trainer, monkeypatch):
    import mlx.core as mx

    monkeypatch.setattr(trainer, "attention_keep", lambda q_pos, k_pos: np.abs(q_pos - k_pos) < 4)
    monkeypatch.setattr(trainer, "_KEEP_MATRICES", {})
    q, k, v = (mx.array(a) for a in random_qkv(0, 1, 8, 2, 1))
    with pytest.raises(ValueError, match="later token"):
        trainer.causal_attention(q, k, v, 1.0, 0)


def test_cpu_rope_matches_mlx_fast_rope(trainer):
    """The CPU's table RoPE against nn.RoPE (mx.fast.rope), which a GPU runs, as upstream."""
    import mlx.core as mx
    import mlx.nn as nn

    x = mx.array(np.random.default_rng(1).normal(size=(2, 3, 40, 16)).astype(np.float32))
    got = trainer.CpuRoPE(16, traditional=False, base=10000.0)(x)
    want = nn.RoPE(16, traditional=False, base=10000.0)(x)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)


def test_int8_quantization_per_row(trainer):
    import mlx.core as mx

    rng = np.random.default_rng(2)
    w = rng.normal(size=(300, 256)).astype(np.float32) * rng.uniform(0.01, 1, size=(300, 1)).astype(np.float32)
    flat = {"big": mx.array(w), "blocks.0.attn_scale": mx.ones((8,)), "small": mx.array(w[:2])}
    obj, stats = trainer.quantize_state_dict_int8(flat, ("attn_scale",))
    back = trainer.dequantize_state_dict_int8(pickle.loads(pickle.dumps(obj)))
    scale = obj["scales"]["big"].astype(np.float32)[:, None]
    assert np.all(np.abs(np.array(back["big"]) - w) <= scale * 0.5 + np.abs(w) * 1e-3 + 1e-6)
    assert back["blocks.0.attn_scale"].dtype == mx.float32 and back["small"].dtype == mx.float32
    assert stats["int8_payload_bytes"] == 300 * 256 + 300 * 2 + 8 * 4 + 2 * 256 * 2


def test_import_has_no_side_effects(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    module = import_trainer()
    assert hasattr(module, "main")
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------
# determinism and the wall-clock cap


@pytest.fixture(scope="module")
def seeded_runs(dataset, tmp_path_factory) -> list[Run]:
    out = tmp_path_factory.mktemp("seeded")
    base = dict(ITERATIONS=6, VAL_MAX_TOKENS=1024, TRAIN_BATCH_TOKENS=1024)
    runs = [Run(tiny_env(dataset, RUN_ID=f"seed{i}", SEED=seed, **base), out) for i, seed in enumerate((7, 7, 8))]
    return runs + [Run(tiny_env(dataset, RUN_ID="warm3", SEED=7, WARMUP_STEPS=3, **base), out)]


def test_same_seed_gives_identical_losses(seeded_runs):
    a, b, c, _ = seeded_runs
    assert len(a.train_losses()) == 6
    assert a.train_losses() == b.train_losses()
    assert a.parsed["final_exact"] == b.parsed["final_exact"]
    assert a.train_losses() != c.train_losses()


def test_warmup_steps_do_not_train(seeded_runs):
    """Warm-up only primes compilation: no update, and the data stream starts over."""
    a, _, _, warm3 = seeded_runs
    assert [line for line in warm3.lines if line.startswith("warmup_step:")] == [
        f"warmup_step:{i}/3" for i in (1, 2, 3)]
    assert warm3.train_losses() == a.train_losses()
    assert warm3.parsed["final_exact"] == a.parsed["final_exact"]


def test_wallclock_cap_stops_early_and_reference_blas_warns(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = tiny_env(dataset, RUN_ID="cap", ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=1, TRAIN_LOG_EVERY=1000,
                   VAL_MAX_TOKENS=512, BLAS_PRELOAD=0)
    run = Run(env, tmp_path)
    stops = [STOPPING_EARLY.match(line) for line in run.lines if line.startswith("stopping_early")]
    assert len(stops) == 1 and stops[0]
    assert int(stops[0]["ms"]) >= 1000 and 0 < int(stops[0]["s"]) < 100000
    assert int(run.parsed["train_step"][-1]["s"]) == int(stops[0]["s"])  # the last step is logged
    assert any(f"blas:{blas_without_preload()} " in line for line in run.lines)
    warned = any(line.startswith("WARNING: MLX is using its slow reference BLAS") for line in run.lines)
    assert warned == reference_blas_warning_expected()


# ---------------------------------------------------------------------------------------
# bad inputs: exit 2 with one line that names the problem and the fix, no traceback


def bad_dataset(tmp_path: Path, dataset: Path, mutate) -> Path:
    bad = tmp_path / "bad_sp1024"
    bad.mkdir()
    for f in dataset.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    mutate(bad)
    return bad


def corrupt_header(index: int, value: int):
    def mutate(d: Path):
        f = d / "fineweb_train_000000.bin"
        raw = bytearray(f.read_bytes())
        raw[4 * index:4 * index + 4] = np.array([value], "<i4").tobytes()
        f.write_bytes(bytes(raw))
    mutate.__name__ = f"header_int{index}_{value}"
    return mutate


def truncate(d: Path):
    f = d / "fineweb_train_000001.bin"
    f.write_bytes(f.read_bytes()[:-10])


def foreign_token(d: Path):
    tokens = read_tokens(d / "fineweb_train_000000.bin").astype(np.int64)
    tokens[100] = 2000
    write_shard(d / "fineweb_train_000000.bin", tokens)


def no_train_shards(d: Path):
    for f in d.glob("fineweb_train_*.bin"):
        f.unlink()


BAD_SETTINGS = [
    ({"DATA_PATH": "/nonexistent/fineweb10B_sp1024"}, ["DATA_PATH=/nonexistent/fineweb10B_sp1024", "download"]),
    ({"TOKENIZER_PATH": "/nonexistent/tok.model"}, ["TOKENIZER_PATH=/nonexistent/tok.model"]),
    ({"VOCAB_SIZE": "512"}, ["1024 pieces", "VOCAB_SIZE=512"]),
    ({"MODEL_DIM": "130"}, ["MODEL_DIM=130", "NUM_HEADS=4"]),
    ({"NUM_KV_HEADS": "3"}, ["NUM_HEADS=4", "NUM_KV_HEADS=3"]),
    ({"MODEL_DIM": "36"}, ["head dim", "=9", "RoPE"]),
    ({"TRAIN_BATCH_TOKENS": "50"}, ["TRAIN_BATCH_TOKENS=50", "TRAIN_SEQ_LEN=64"]),
    ({"GRAD_ACCUM_STEPS": "16"}, ["GRAD_ACCUM_STEPS=16", "TRAIN_SEQ_LEN=64"]),
    ({"MLX_MAX_MICROBATCH_TOKENS": "32"}, ["MLX_MAX_MICROBATCH_TOKENS=32", "TRAIN_SEQ_LEN=64"]),
    ({"SEED": "abc"}, ["SEED='abc'", "int"]),
    ({"VAL_MAX_TOKENS": "10"}, ["VAL_MAX_TOKENS=10", "TRAIN_SEQ_LEN=64"]),
]

BAD_DATA = [
    (corrupt_header(0, 12345), ["fineweb_train_000000.bin", "bad magic 12345"]),
    (corrupt_header(1, 2), ["fineweb_train_000000.bin", "version 2"]),
    (truncate, ["fineweb_train_000001.bin", "truncated or corrupt"]),
    (foreign_token, ["fineweb_train_000000.bin", "token id 2000", "VOCAB_SIZE=1024"]),
    (no_train_shards, ["no train shards", "fineweb_train_*.bin"]),
]


def assert_clean_error(proc, needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("overrides,needles", BAD_SETTINGS,
                         ids=[next(iter(o)) + "-" + n[-1] for o, n in BAD_SETTINGS])
def test_bad_setting_gives_clear_error(dataset, tmp_path, overrides, needles):
    assert_clean_error(run_trainer(tiny_env(dataset, RUN_ID="bad", **overrides), tmp_path), needles)


@pytest.mark.parametrize("mutate,needles", BAD_DATA, ids=[m.__name__ for m, _ in BAD_DATA])
def test_bad_data_gives_clear_error(dataset, tmp_path, mutate, needles):
    bad = bad_dataset(tmp_path, dataset, mutate)
    assert_clean_error(run_trainer(tiny_env(bad, RUN_ID="bad"), tmp_path), needles)


def test_split_batch_over_streams_gives_the_same_loss_and_gradients(trainer, dataset):
    """Data parallelism over CPU streams is the same mathematics as one big batch."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    hp = trainer.hyperparameters_from_env(tiny_env(dataset))
    mx.random.seed(3)
    model = trainer.GPT(hp, mx.float32, attn_block=16)
    for block in model.blocks:  # non-zero output projections, so every weight gets a gradient
        block.attn.proj.weight = mx.random.normal(block.attn.proj.weight.shape) * 0.05
        block.mlp.proj.weight = mx.random.normal(block.mlp.proj.weight.shape) * 0.05
    loss_and_grad = nn.value_and_grad(model, lambda x, y, w: model.loss(x, y) * w)
    tokens = read_tokens(dataset / "fineweb_train_000000.bin")[:6 * 64 + 1].astype(np.int32)
    x, y = mx.array(tokens[:-1].reshape(6, 64)), mx.array(tokens[1:].reshape(6, 64))
    streams = [mx.default_stream(mx.cpu), mx.new_stream(mx.cpu), mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)]
    results = {}
    for n in (1, 4):  # 4 streams: uneven slices of 1 or 2 sequences
        parts = trainer.split_batch(loss_and_grad, x, y, 0.5, streams[:n])
        assert len(parts) == n
        loss = sum(p[0] for p in parts)
        grads = [dict(tree_flatten(p[1])) for p in parts]
        results[n] = (float(loss), {k: np.array(sum(g[k] for g in grads)) for k in grads[0]})
    assert abs(results[1][0] - results[4][0]) < 1e-6
    for k, g in results[1][1].items():
        np.testing.assert_allclose(results[4][1][k], g, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_precision_compute_gives_finite_loss_and_gradients(trainer, dataset, dtype_name):
    """COMPUTE_DTYPE=bfloat16 (the GPU default) and float16 train without overflow."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    hp = trainer.hyperparameters_from_env(tiny_env(dataset))
    mx.random.seed(0)
    model = trainer.GPT(hp, getattr(mx, dtype_name), attn_block=16)
    tokens = read_tokens(dataset / "fineweb_train_000000.bin")[:4 * 64 + 1].astype(np.int32)
    x, y = mx.array(tokens[:-1].reshape(4, 64)), mx.array(tokens[1:].reshape(4, 64))
    loss, grads = nn.value_and_grad(model, lambda x, y: model.loss(x, y))(x, y)
    assert abs(float(loss) - math.log(1024)) < 0.1
    bad = [k for k, g in tree_flatten(grads) if not bool(mx.all(mx.isfinite(g)))]
    assert bad == []
