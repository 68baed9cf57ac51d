"""Importing a local corpus of 200 documents (real FineWeb and the real tokenizer when
../shared/fixtures is there, else the project's stand-ins), in every input format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from autogolf.data.cache import CacheError, read_manifest, verify_cache
from autogolf.data.corpus import build_cache, iter_documents, train_tokenizer
from autogolf.data.shards import list_shards, read_tokens
from conftest import REPO

VAL_DOCS = 20
SHARD_TOKENS = 60_000  # the 200 docs are ~600k tokens: about ten shards


@pytest.fixture(scope="module")
def docs(corpus) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.docs.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def expected(docs, corpus) -> dict[str, np.ndarray]:
    """What the shards must hold: per split, BOS + SentencePiece's ids for each document."""
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer))
    ids = [[1] + sp.encode(d.replace("\x00", " ").strip(), out_type=int) for d in docs]
    return {"val": np.concatenate(ids[:VAL_DOCS]).astype(np.uint16),
            "train": np.concatenate(ids[VAL_DOCS:]).astype(np.uint16)}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autogolf.data.corpus", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _split_tokens(dataset_dir, split):
    return np.concatenate([read_tokens(p) for p in list_shards(dataset_dir, split)])


def test_jsonl_import_matches_sentencepiece_exactly(tmp_path, expected, corpus):
    data_root = tmp_path / "data"
    done = _run_cli(str(corpus.docs), "--name", "fw200", "--data-root", str(data_root),
                    "--tokenizer", str(corpus.tokenizer), "--val-docs", str(VAL_DOCS),
                    "--shard-tokens", str(SHARD_TOKENS))
    assert done.returncode == 0, done.stderr
    dataset = data_root / "datasets" / "fw200"
    train_shards = list_shards(dataset, "train")
    assert len(train_shards) >= 5
    for split in ("val", "train"):
        np.testing.assert_array_equal(_split_tokens(dataset, split), expected[split])
    # Full shards hold exactly --shard-tokens, and documents run across shard boundaries.
    assert all(len(read_tokens(p)) == SHARD_TOKENS for p in train_shards[:-1])
    assert any(read_tokens(p)[0] != 1 for p in train_shards[1:])
    assert read_tokens(train_shards[0])[0] == 1  # the train split starts a fresh shard
    # The tokenizer was copied in, and the manifest says what this is.
    manifest = read_manifest(dataset)
    assert (data_root / "tokenizers" / corpus.tokenizer.name).read_bytes() == corpus.tokenizer.read_bytes()
    assert manifest["is_fineweb"] is False
    assert manifest["source"] == f"imported:{corpus.docs.resolve()}"
    assert manifest["val_docs"] == VAL_DOCS and manifest["train_docs"] == 200 - VAL_DOCS
    assert manifest["splits"]["val"]["tokens"] == expected["val"].size
    assert "fw200: done 200 docs" in done.stderr  # progress line
    verify_cache(dataset)

    # An existing dataset is not overwritten without --force.
    again = _run_cli(str(corpus.docs), "--name", "fw200", "--data-root", str(data_root),
                     "--tokenizer", str(corpus.tokenizer))
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr


def _import(src, data_root, name, tokenizer, **kw):
    return build_cache(lambda: iter_documents(src), name=name, data_root=data_root,
                       source=f"imported:{src}", tokenizer=tokenizer, val_docs=VAL_DOCS,
                       shard_tokens=SHARD_TOKENS, **kw)


def test_parquet_and_txt_inputs_give_the_same_cache(tmp_path, docs, corpus):
    data_root = tmp_path / "data"
    reference = _import(corpus.docs, data_root, "from_jsonl", corpus.tokenizer)

    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    # Two files with small row groups: the reader streams record batches across both.
    pq.write_table(pa.table({"id": list(range(120)), "text": docs[:120]}),
                   parquet_dir / "part-000.parquet", row_group_size=16)
    pq.write_table(pa.table({"id": list(range(120, 200)), "text": docs[120:]}),
                   parquet_dir / "part-001.parquet", row_group_size=16)
    from_parquet = _import(parquet_dir, data_root, "from_parquet", corpus.tokenizer)

    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    for i, doc in enumerate(docs):
        (txt_dir / f"doc_{i:04d}.txt").write_text(doc, encoding="utf-8", newline="")
    from_txt = _import(txt_dir, data_root, "from_txt", corpus.tokenizer)

    assert from_parquet["fingerprint"] == reference["fingerprint"]
    assert from_txt["fingerprint"] == reference["fingerprint"]
    assert from_parquet["shards"] == reference["shards"]


def test_cleaning_replaces_nul_and_skips_empty_documents(tmp_path):
    src = tmp_path / "odd.jsonl"
    records = [{"text": "  first\x00doc  "}, {"text": "   \n "}, {"text": "second"}, {"text": ""}]
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    assert list(iter_documents(src)) == ["first doc", "second"]


def test_bad_inputs_give_clear_errors(tmp_path, corpus):
    missing = _run_cli(str(corpus.docs), "--name", "x", "--data-root", str(tmp_path),
                       "--tokenizer", str(tmp_path / "nope.model"))
    assert missing.returncode == 1
    assert f"{tmp_path / 'nope.model'}: tokenizer file does not exist" in missing.stderr

    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"body": "hello"}\n{"body": "again"}\n', encoding="utf-8")
    bad = _run_cli(str(no_text), "--name", "x", "--data-root", str(tmp_path), "--tokenizer", str(corpus.tokenizer))
    assert bad.returncode == 1 and f'{no_text}:1: no string "text" field' in bad.stderr

    no_column = tmp_path / "no_column.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), no_column)
    with pytest.raises(CacheError, match=r'no "text" column \(columns: \[\'body\'\]\)'):
        list(iter_documents(no_column))

    csv = tmp_path / "x.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(CacheError, match=f"{csv}: unsupported file type '.csv'"):
        list(iter_documents(csv))


def test_tokenizer_vocab_mismatch_is_caught(tmp_path, docs, corpus):
    data_root = tmp_path / "data"
    manifest = _import(corpus.docs, data_root, "fw", corpus.tokenizer)
    dataset = data_root / "datasets" / "fw"
    small = train_tokenizer([d.strip() for d in docs], tmp_path / "small_512_bpe.model", vocab_size=512)
    assert spm.SentencePieceProcessor(model_file=str(small)).vocab_size() == 512
    with pytest.raises(CacheError, match=r"tokenizer has vocab size 512 but the cache .* was written "
                                         r"with vocab size 1024") as err:
        verify_cache(dataset, small)
    assert str(small) in str(err.value) and "TOKENIZER_PATH" in str(err.value)
    # Same vocab size but a different tokenizer is caught too (by its sha256).
    # (trained on half the documents: on all of them it could be the cache's own tokenizer)
    other = train_tokenizer([d.strip() for d in docs[::2]], tmp_path / "other_1024_bpe.model")
    with pytest.raises(CacheError, match="not the tokenizer that wrote"):
        verify_cache(dataset, other)
    assert verify_cache(dataset)["fingerprint"] == manifest["fingerprint"]


def test_training_a_tokenizer_from_the_docs(tmp_path, docs, corpus):
    data_root = tmp_path / "data"
    done = _run_cli(str(corpus.docs), "--name", "fwtrained_sp1024", "--data-root", str(data_root),
                    "--shard-tokens", str(SHARD_TOKENS))
    assert done.returncode == 0, done.stderr
    assert "using the first 20 documents for validation" in done.stderr  # small-corpus cap
    model = data_root / "tokenizers" / "fwtrained_1024_bpe.model"
    assert model.is_file() and model.with_suffix(".vocab").is_file()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert (sp.vocab_size(), sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1024, 0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256  # byte_fallback=True
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split_digits=True
    dataset = data_root / "datasets" / "fwtrained_sp1024"
    report = verify_cache(dataset)
    assert report["tokenizer_path"] == str(model.resolve())
    ids = [[1] + sp.encode(d.strip(), out_type=int) for d in docs]
    np.testing.assert_array_equal(_split_tokens(dataset, "val"), np.concatenate(ids[:20]))
    np.testing.assert_array_equal(_split_tokens(dataset, "train"), np.concatenate(ids[20:]))

    # Rebuilding with --force retrains the tokenizer and gets the very same model.
    again = _run_cli(str(corpus.docs), "--name", "fwtrained_sp1024", "--data-root", str(data_root), "--force")
    assert again.returncode == 0, again.stderr
    assert model.read_bytes() == sp.serialized_model_proto()  # training is deterministic


_MEASURE_PEAK = """
import resource, sys
from autogolf.data.corpus import iter_documents
import pyarrow.parquet  # imported before the baseline is taken
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
chars = sum(len(doc) for doc in iter_documents(sys.argv[1]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(chars, (peak - before) * 1024)
"""


def test_parquet_is_streamed_in_bounded_memory(tmp_path, docs):
    """~150 MB of text in one parquet file, read by a real process whose peak RSS grows by
    less than that (the growth is allocator warm-up plus one batch, not the file)."""
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for _ in range(100):
            writer.write_table(pa.table({"text": docs}))  # one 1.5 MB row group each
    text_bytes = 100 * sum(len(d.encode("utf-8")) for d in docs)
    done = subprocess.run([sys.executable, "-c", _MEASURE_PEAK, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    chars, growth = map(int, done.stdout.split())
    assert chars == 100 * sum(len(d.strip()) for d in docs)
    assert text_bytes > 140e6
    # Reading the whole table instead grows memory by ~600 MB here.
    assert growth < 110e6, f"reader grew by {growth / 1e6:.0f} MB for {text_bytes / 1e6:.0f} MB of text"
