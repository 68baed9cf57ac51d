"""Helpers for the trainer tests: a real dataset built from 200 documents, trainer runs as
real subprocesses, and parsers for the log contract."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from autogolf.data.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
TRAINER = REPO / "benchmark" / "train_gpt_mlx.py"
PYTHON = REPO / ".venv" / "bin" / "python"
BOS_ID = 1
NUM_VAL_DOCS = 20

# The log contract (spec "Log contract"): the lines upstream's trainer prints, one regex each.
CONTRACT = {
    "model_params": re.compile(
        r"^model_params:(?P<n>\d+) vocab_size:(?P<V>\d+) layers:(?P<L>\d+) dim:(?P<D>\d+) heads:(?P<H>\d+) "
        r"kv_heads:(?P<KV>\d+) seq_len:(?P<S>\d+) tie_embeddings:(?P<tie>True|False)$"),
    "iterations": re.compile(
        r"^iterations:(?P<it>\d+) train_batch_tokens:(?P<t>\d+) grad_accum_steps:(?P<g>\d+) "
        r"microbatch_tokens:(?P<m>\d+) microbatch_batch_size:(?P<b>\d+) val_batch_size:(?P<v>\d+) "
        r"warmup_steps:(?P<w>\d+) max_wallclock_seconds:(?P<x>\d+\.\d{3})$"),
    "train_loader": re.compile(r"^train_loader:dataset:(?P<name>\S+) train_shards:(?P<n>\d+)(?:/(?P<expected>\d+))?$"),
    "val_loader": re.compile(r"^val_loader:shards pattern=(?P<glob>\S+) tokens:(?P<n>\d+)$"),
    "train_step": re.compile(
        r"^step:(?P<s>\d+)/(?P<it>\d+) train_loss:(?P<loss>\d+\.\d{4}) train_time:(?P<ms>\d+)ms "
        r"step_avg:(?P<avg>\d+\.\d\d)ms tok_s:(?P<tok_s>\d+)$"),
    "val_step": re.compile(
        r"^step:(?P<s>\d+)/(?P<it>\d+) val_loss:(?P<loss>\d+\.\d{4}) val_bpb:(?P<bpb>\d+\.\d{4}) "
        r"train_time:(?P<ms>\d+)ms step_avg:(?P<avg>\d+\.\d\d)ms$"),
    "serialized": re.compile(
        r"^serialized_model_int8_zlib:(?P<bytes>\d+) bytes \(payload:(?P<p>\d+) raw_pickle:(?P<r>\d+) "
        r"payload_ratio:(?P<ratio>\d+\.\d\d)x\)$"),
    "final": re.compile(
        r"^final_int8_zlib_roundtrip val_loss:(?P<loss>\d+\.\d{4}) val_bpb:(?P<bpb>\d+\.\d{4}) "
        r"eval_time:(?P<ms>\d+)ms$"),
    "final_exact": re.compile(
        r"^final_int8_zlib_roundtrip_exact val_loss:(?P<loss>\d+\.\d{8}) val_bpb:(?P<bpb>\d+\.\d{8})$"),
}
STOPPING_EARLY = re.compile(r"^stopping_early: wallclock_cap train_time:(?P<ms>\d+)ms step:(?P<s>\d+)/(?P<it>\d+)$")


def load_docs(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def tokenize_docs(sp, docs: list[str]) -> list[np.ndarray]:
    """Each document as BOS + its tokens, the way the challenge's shards store them."""
    return [np.array([BOS_ID] + sp.encode(d), dtype=np.uint16) for d in docs]


def build_dataset(root: Path, tokenizer: Path, docs_path: Path, name: str, val_tokens: int = 0) -> Path:
    """data/datasets/<name>/ with one val shard (the first NUM_VAL_DOCS documents; cut to its
    first val_tokens tokens when > 0) and two train shards (the rest, split in half), like the
    real cache layout, and a copy of the tokenizer that wrote them (the trainer reads only the
    shards' names)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    docs = tokenize_docs(sp, load_docs(docs_path))
    dataset = root / "datasets" / name
    val = np.concatenate(docs[:NUM_VAL_DOCS])
    write_shard(dataset / "fineweb_val_000000.bin", val[:val_tokens] if val_tokens > 0 else val)
    train = np.concatenate(docs[NUM_VAL_DOCS:])
    half = train.size // 2
    write_shard(dataset / "fineweb_train_000000.bin", train[:half])
    write_shard(dataset / "fineweb_train_000001.bin", train[half:])
    (dataset / tokenizer.name).write_bytes(tokenizer.read_bytes())
    return dataset


# A tiny model that still exercises every part: GQA (4 heads, 2 KV heads), an odd layer
# count (a decoder block without a skip), several attention blocks per sequence.
TINY = {
    "VOCAB_SIZE": "1024", "NUM_LAYERS": "3", "MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
    "MLP_MULT": "2", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512", "GRAD_ACCUM_STEPS": "1",
    "MLX_MAX_MICROBATCH_TOKENS": "512", "VAL_BATCH_SIZE": "1024", "ITERATIONS": "8", "WARMUP_STEPS": "1",
    "WARMDOWN_ITERS": "0", "MAX_WALLCLOCK_SECONDS": "0", "TRAIN_LOG_EVERY": "1", "ATTN_BLOCK_SIZE": "16",
}


def run_trainer(env_overrides: dict, out_dir: Path, timeout: float = 300,
                trainer: Path = TRAINER) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TINY}
    env.update({"OUT_DIR": str(out_dir), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in env_overrides.items()})
    return subprocess.run([str(PYTHON if PYTHON.exists() else sys.executable), str(trainer)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def parse_log(text: str) -> dict[str, list[dict]]:
    """Every contract line found, by kind, with its named fields."""
    found: dict[str, list[dict]] = {k: [] for k in CONTRACT}
    for line in text.splitlines():
        for kind, rx in CONTRACT.items():
            m = rx.match(line)
            if m:
                found[kind].append(m.groupdict())
    return found


def import_trainer(path: Path = TRAINER, name: str = "train_gpt_mlx_under_test", env: dict | None = None):
    """The trainer as a module, without running main(). Upstream's Hyperparameters read the
    environment when the module loads: `env` is set for that moment only. CPU_STREAMS=1 so
    the hook leaves this process's BLAS threads alone."""
    saved = dict(os.environ)
    os.environ.update({"CPU_STREAMS": "1", **(env or {})})
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


def upstream_copy(dest_dir: Path, fp32: bool) -> Path:
    """Upstream's trainer at the pinned commit (autogolf/measure/upstream.py), as-is or with
    its compute dtype patched to float32 (what a user comparing in float32 would do)."""
    from autogolf.measure.upstream import upstream_source

    source = upstream_source()
    if fp32:
        assert source.count("COMPUTE_DTYPE = mx.bfloat16\n") == 1
        source = source.replace("COMPUTE_DTYPE = mx.bfloat16\n", "COMPUTE_DTYPE = mx.float32\n")
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"upstream_{'fp32' if fp32 else 'as_is'}.py"
    path.write_text(source, encoding="utf-8")
    return path
