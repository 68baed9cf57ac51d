"""The shard format: round trip, every kind of corruption, and a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autogolf.data.cache import MANIFEST_NAME, CacheError, compute_fingerprint, verify_cache, write_manifest
from autogolf.data.shards import (HEADER_BYTES, MAGIC, ShardError, list_shards, read_header, read_tokens,
                             remove_partials, validate_shard, write_shard)
from conftest import REPO


def _tokens(n: int, vocab: int = 1024, seed: int = 0) -> np.ndarray:
    tokens = np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint16)
    tokens[0] = 1  # a document starts with BOS
    return tokens


def test_round_trip(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    tokens = _tokens(10_000)
    write_shard(path, tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    header = np.fromfile(path, dtype="<i4", count=3)
    assert header.tolist() == [MAGIC, 1, tokens.size]
    assert read_header(path) == tokens.size
    np.testing.assert_array_equal(read_tokens(path), tokens)
    np.testing.assert_array_equal(read_tokens(path, mmap=True), tokens)
    info = validate_shard(path, vocab_size=1024)
    assert (info.split, info.index, info.num_tokens) == ("train", 0, tokens.size)
    assert list_shards(tmp_path, "train") == [path]


def _corrupt(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "magic":
        data[0:4] = np.array([12345], dtype="<i4").tobytes()
    elif kind == "version":
        data[4:8] = np.array([2], dtype="<i4").tobytes()
    elif kind == "truncated":
        data = data[:-2]
    elif kind == "trailing":
        data += b"\x00\x00"
    elif kind == "no_header":
        data = data[:100]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind, message", [
    ("magic", "bad magic 12345"),
    ("version", "unsupported shard version 2"),
    ("truncated", "does not match the header"),
    ("trailing", "does not match the header"),
    ("no_header", "truncated shard"),
])
def test_corrupt_shard_is_named(tmp_path, kind, message):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, _tokens(1000))
    _corrupt(path, kind)
    with pytest.raises(ShardError, match=message) as err:
        validate_shard(path, vocab_size=1024)
    assert str(path) in str(err.value)
    assert "re-run" in str(err.value)  # says what to do


def test_token_id_beyond_vocab(tmp_path):
    path = tmp_path / "fineweb_train_000003.bin"
    tokens = _tokens(5000, vocab=1000)
    tokens[4321] = 1024
    write_shard(path, tokens)
    validate_shard(path, vocab_size=1025)  # fine for a bigger vocab
    with pytest.raises(ShardError, match=r"token id 1024 at position 4321 is >= the tokenizer's vocab size 1024") as err:
        validate_shard(path, vocab_size=1024)
    assert str(path) in str(err.value)


def test_empty_validation_split_is_caught(tmp_path, corpus):
    dataset = tmp_path / "datasets" / "tiny"
    write_shard(dataset / "fineweb_val_000000.bin", _tokens(2000))
    write_shard(dataset / "fineweb_train_000000.bin", _tokens(8000, seed=1))
    manifest = write_manifest(dataset, corpus.tokenizer, source="test", is_fineweb=False)
    verify_cache(dataset)

    # A validation shard with no tokens: write_manifest refuses to bless such a cache...
    write_shard(dataset / "fineweb_val_000000.bin", np.zeros(0, dtype=np.uint16))
    with pytest.raises(CacheError, match=r"the val split is empty .*nothing to score"):
        write_manifest(dataset, corpus.tokenizer, source="test", is_fineweb=False)

    # ...and verify_cache rejects one whose (self-consistent) manifest describes no val split.
    (dataset / "fineweb_val_000000.bin").unlink()
    del manifest["shards"]["fineweb_val_000000.bin"]
    manifest["splits"]["val"] = {"shards": 0, "tokens": 0}
    manifest["fingerprint"] = compute_fingerprint(
        manifest["tokenizer_sha256"], {n: s["sha256"] for n, s in manifest["shards"].items()})
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"the val split is empty .*nothing to score") as err:
        verify_cache(dataset)
    assert str(dataset) in str(err.value)


_SLOW_WRITER = """
import sys
import numpy as np
from autogolf.data.shards import write_shard
tokens = np.ones(int(sys.argv[2]), dtype=np.uint16)
print("writing", flush=True)
write_shard(sys.argv[1], tokens)
print("done", flush=True)
"""


def test_killed_writer_leaves_no_valid_looking_file(tmp_path):
    """SIGKILL a real writer mid-write: the final name keeps its old valid content, and the
    leftover temp file is never mistaken for a shard; a re-run cleans up and succeeds."""
    path = tmp_path / "fineweb_train_000000.bin"
    old = _tokens(1000)
    write_shard(path, old)
    # 300M tokens = 600 MB: copying and writing it takes far longer than our polling delay.
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path), str(300_000_000)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".*.partial")):
            assert proc.poll() is None, "writer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".*.partial"))
    assert leftovers, "the killed writer's temp file should still be there"
    # The final name still holds the old, valid shard; the leftover is not listed as a shard.
    np.testing.assert_array_equal(read_tokens(path), old)
    validate_shard(path, vocab_size=1024)
    assert list_shards(tmp_path, "train") == [path]

    # Re-run: clean the leftovers and write again.
    assert sorted(remove_partials(tmp_path)) == sorted(leftovers)
    new = _tokens(3000, seed=7)
    write_shard(path, new)
    np.testing.assert_array_equal(read_tokens(path), new)
    assert not list(tmp_path.glob(".*.partial"))


def test_killed_corpus_import_leaves_no_cache_and_rerun_cleans_up(tmp_path, corpus):
    """SIGKILL `python -m autogolf.data.corpus` after it has written shards: no dataset appears
    under its final name (nothing that verifies), and a re-run succeeds and removes the
    dead build folder."""
    lines = corpus.docs.read_text(encoding="utf-8").splitlines()
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(lines * 6) + "\n", encoding="utf-8")  # ~9 MB, a few seconds to import
    data_root = tmp_path / "data"
    cmd = [sys.executable, "-m", "autogolf.data.corpus", str(src), "--name", "killed", "--data-root",
           str(data_root), "--tokenizer", str(corpus.tokenizer), "--shard-tokens", "20000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(data_root.glob("datasets/.autogolf-build-*/killed/fineweb_train_000002.bin")):
            assert proc.poll() is None, "import finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    final = data_root / "datasets" / "killed"
    assert not final.exists()
    stale = list((data_root / "datasets").glob(".autogolf-build-*"))
    assert len(stale) == 1
    with pytest.raises(CacheError):
        verify_cache(stale[0] / "killed")  # the half-built folder has no manifest

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not stale[0].exists()
    report = verify_cache(final)
    assert report["splits"]["train"]["shards"] > 2
