"""The offline synthetic corpus: deterministic, marked as not FineWeb, and learnable.

The default build (~1M val tokens, ~30M train tokens) takes 30-40 s on the 2-core dev
machine; these tests build a small one with the same code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from autogolf.data.cache import SYNTH_DATASET, read_manifest, verify_cache
from autogolf.data.shards import list_shards, read_tokens
from autogolf.data.synth import SOURCE, TOKENIZER_NAME, build_synth, generate_documents
from conftest import REPO

SMALL = dict(val_docs=120, train_docs=1200, shard_tokens=300_000, tokenizer_train_docs=400)


def _cli(data_root: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "autogolf.data.synth", "--data-root", str(data_root),
            "--val-docs", str(SMALL["val_docs"]), "--train-docs", str(SMALL["train_docs"]),
            "--shard-tokens", str(SMALL["shard_tokens"]),
            "--tokenizer-train-docs", str(SMALL["tokenizer_train_docs"])]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    data_root = tmp_path_factory.mktemp("synth") / "data"
    done = _cli(data_root)
    assert done.returncode == 0, done.stderr
    assert "training the 1024-token BPE tokenizer" in done.stderr and "done 1,320 docs" in done.stderr
    return data_root


def test_build_is_deterministic_and_idempotent(small_build, tmp_path):
    first = read_manifest(small_build / "datasets" / SYNTH_DATASET)
    second, built = build_synth(tmp_path / "data", **SMALL)
    assert built
    assert second["fingerprint"] == first["fingerprint"]
    assert second["shards"] == first["shards"]
    assert ((tmp_path / "data" / "tokenizers" / TOKENIZER_NAME).read_bytes()
            == (small_build / "tokenizers" / TOKENIZER_NAME).read_bytes())
    # A second run with the same parameters keeps the cache and says so.
    again = _cli(small_build)
    assert again.returncode == 0, again.stderr
    assert "already built and verified" in again.stdout
    assert f"fingerprint: {first['fingerprint']}" in again.stdout
    assert read_manifest(small_build / "datasets" / SYNTH_DATASET)["created_at"] == first["created_at"]


def test_manifest_marks_it_synthetic(small_build):
    dataset = small_build / "datasets" / SYNTH_DATASET
    manifest = read_manifest(dataset)
    assert manifest["is_fineweb"] is False
    assert manifest["source"] == SOURCE == "offline-synthetic:v1"
    assert manifest["tokenizer_name"] == TOKENIZER_NAME
    assert manifest["val_docs"] == SMALL["val_docs"] and manifest["train_docs"] == SMALL["train_docs"]
    assert manifest["splits"]["train"]["shards"] >= 2  # several train shards
    report = verify_cache(dataset)
    assert report["vocab_size"] == 1024 and report["bos_id"] == 1
    sp = spm.SentencePieceProcessor(model_file=report["tokenizer_path"])
    # Shards hold exactly BOS + the tokenizer's encoding of each generated document.
    docs = list(generate_documents(0, SMALL["val_docs"]))
    expected = np.concatenate([[1] + ids for ids in sp.encode(docs, out_type=int)])
    np.testing.assert_array_equal(read_tokens(list_shards(dataset, "val")[0]), expected)


def test_documents_have_structure_and_stand_alone():
    docs = list(generate_documents(0, 60))
    assert list(generate_documents(40, 45)) == docs[40:45]  # each document has its own stream
    text = "\n".join(docs)
    assert re.search(r"\b1[89]\d\d\b", text)                 # years
    assert re.search(r"\d,\d{3} ", text)                     # quantities
    assert re.search(r"\d%", text)                            # percentages
    assert '"' in text and "?" in text and ", " in text      # quotes, questions, clauses
    assert all("\n" in d for d in docs)                       # paragraphs
    # Named entities recur within a document: in every document of 4 KB or more, some
    # capitalized name (not sentence-initial) appears at least 3 times.
    long_docs = [d for d in generate_documents(0, 200) if len(d) >= 4000]
    assert len(long_docs) >= 20
    for doc in long_docs:
        names = re.findall(r"(?<=[a-z,] )[A-Z][a-z]+", doc)
        assert max(names.count(n) for n in set(names)) >= 3


def _lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    i = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[i] == queries, counts[i], 0)


def ngram_bits_per_token(train: np.ndarray, val: np.ndarray, vocab: int, alpha: float = 2.0) -> list[float]:
    """Bits per val token of unigram, bigram and trigram models fit on train tokens. Each
    order is smoothed toward the one below it (a Dirichlet prior of strength alpha):
    p_n(w | h) = (count(h, w) + alpha * p_{n-1}(w | shorter h)) / (count(h) + alpha)."""
    train, val = train.astype(np.int64), val.astype(np.int64)
    target = val[2:]
    p1 = (np.bincount(train, minlength=vocab)[target] + 1) / (train.size + vocab)
    probs = [p1]
    for order in (2, 3):
        # The context of a token is the 1 (bigram) or 2 (trigram) tokens before it.
        ctx_train = train[:-1] if order == 2 else train[:-2] * vocab + train[1:-1]
        ctx_val = val[1:-1] if order == 2 else val[:-2] * vocab + val[1:-1]
        next_train = train[1:] if order == 2 else train[2:]
        gram_keys, gram_counts = np.unique(ctx_train * vocab + next_train, return_counts=True)
        ctx_keys, ctx_counts = np.unique(ctx_train, return_counts=True)
        c_gram = _lookup(gram_keys, gram_counts, ctx_val * vocab + target)
        c_ctx = _lookup(ctx_keys, ctx_counts, ctx_val)
        probs.append((c_gram + alpha * probs[-1]) / (c_ctx + alpha))
    return [float(-np.log2(p).mean()) for p in probs]


def test_more_context_predicts_better(small_build):
    """The corpus is learnable: a model that sees more context scores lower on val, so a
    better model gets a lower val_bpb."""
    dataset = small_build / "datasets" / SYNTH_DATASET
    train = np.concatenate([read_tokens(p) for p in list_shards(dataset, "train")])
    val = np.concatenate([read_tokens(p) for p in list_shards(dataset, "val")])
    unigram, bigram, trigram = ngram_bits_per_token(train, val, 1024)
    assert unigram < 10.0  # better than uniform over 1,024 tokens
    assert bigram < unigram - 1.0
    assert trigram < bigram - 0.5
