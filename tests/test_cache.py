"""The manifest, verify_cache and resolve_dataset, on a real cache of 200 documents (real
FineWeb and the real tokenizer when ../shared/fixtures is there, else the project's stand-ins)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from autogolf.data.cache import (FINEWEB_DATASET, MANIFEST_NAME, SYNTH_DATASET, CacheError,
                            read_manifest, resolve_dataset, verify_cache, write_manifest)
from autogolf.fsutil import file_sha256
from autogolf.data.corpus import build_cache, iter_documents
from autogolf.data.shards import HEADER_BYTES, list_shards, read_tokens, write_shard
from conftest import REPO

SHARD_TOKENS = 150_000


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    """One real cache (200 documents, a 1024-piece tokenizer, several train shards) per module."""
    data_root = tmp_path_factory.mktemp("cache") / "data"
    build_cache(lambda: iter_documents(corpus.docs), name="fw", data_root=data_root, source="test",
                tokenizer=corpus.tokenizer, val_docs=20, shard_tokens=SHARD_TOKENS)
    return data_root


@pytest.fixture
def data_root(built, tmp_path):
    """A private copy of the module's cache that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(built, root)
    return root


def _dataset(data_root, name="fw"):
    return data_root / "datasets" / name


def test_manifest_records_everything(data_root, corpus):
    dataset = _dataset(data_root)
    manifest = read_manifest(dataset)
    assert manifest["dataset"] == "fw" and manifest["source"] == "test" and manifest["is_fineweb"] is False
    assert manifest["vocab_size"] == 1024 and manifest["bos_id"] == 1
    assert manifest["tokenizer_sha256"] == file_sha256(corpus.tokenizer)
    assert manifest["tokenizer_name"] == corpus.tokenizer.name
    shards = list_shards(dataset, "train") + list_shards(dataset, "val")
    assert sorted(manifest["shards"]) == sorted(p.name for p in shards)
    for p in shards:
        entry = manifest["shards"][p.name]
        assert entry == {"num_tokens": len(read_tokens(p)), "sha256": file_sha256(p), "bytes": p.stat().st_size}
    for split in ("train", "val"):
        assert manifest["splits"][split] == {
            "shards": len(list_shards(dataset, split)),
            "tokens": sum(len(read_tokens(p)) for p in list_shards(dataset, split))}
    train_tokens = manifest["splits"]["train"]["tokens"]
    assert manifest["splits"]["train"]["shards"] == -(-train_tokens // SHARD_TOKENS) >= 3
    report = verify_cache(dataset)
    assert report["fingerprint"] == manifest["fingerprint"] and report["splits"] == manifest["splits"]
    # Rewriting the manifest from the same bytes gives the same fingerprint.
    again = write_manifest(dataset, corpus.tokenizer, source="test", is_fineweb=False, extra={"note": 1})
    assert again["fingerprint"] == manifest["fingerprint"] and again["note"] == 1
    assert not list(dataset.glob(".*.partial"))
    with pytest.raises(ValueError, match="may not set the manifest's own keys"):
        write_manifest(dataset, corpus.tokenizer, source="x", is_fineweb=False, extra={"fingerprint": "0"})


def test_modified_shard_is_caught_by_deep_verify(data_root):
    dataset = _dataset(data_root)
    shard = list_shards(dataset, "train")[1]
    with open(shard, "r+b") as f:  # same size, one token changed to another valid id
        f.seek(HEADER_BYTES + 2 * 1000)
        old = int(np.frombuffer(f.read(2), dtype="<u2")[0])
        f.seek(HEADER_BYTES + 2 * 1000)
        f.write(np.array([(old + 1) % 1024], dtype="<u2").tobytes())
    verify_cache(dataset, deep=False)  # the fast path only reads headers and sizes
    with pytest.raises(CacheError, match=r"sha256 .* does not match the manifest") as err:
        verify_cache(dataset, deep=True)
    assert str(shard) in str(err.value)


def test_resized_shard_is_caught_by_fast_verify(data_root):
    dataset = _dataset(data_root)
    shard = list_shards(dataset, "train")[0]
    write_shard(shard, read_tokens(shard)[:-10])  # still a valid shard, just different
    with pytest.raises(CacheError, match="bytes but the manifest recorded") as err:
        verify_cache(dataset, deep=False)
    assert str(shard) in str(err.value)


def test_missing_and_added_shards_are_caught(data_root):
    dataset = _dataset(data_root)
    n = len(list_shards(dataset, "train"))
    extra = dataset / f"fineweb_train_{n:06d}.bin"
    write_shard(extra, read_tokens(list_shards(dataset, "train")[0]))
    with pytest.raises(CacheError, match="shard not listed in") as err:
        verify_cache(dataset, deep=False)
    assert str(extra) in str(err.value)
    extra.unlink()
    gone = list_shards(dataset, "train")[2]
    gone.unlink()
    with pytest.raises(CacheError, match="is missing") as err:
        verify_cache(dataset, deep=False)
    assert str(gone) in str(err.value)
    # write_manifest refuses a cache with a gap in the numbering.
    with pytest.raises(CacheError, match=f"train shards are not numbered 0..{n - 2}"):
        write_manifest(dataset, _tokenizer(data_root), source="test", is_fineweb=False)


def test_edited_manifest_and_missing_pieces(data_root):
    dataset = _dataset(data_root)
    path = dataset / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    name = sorted(manifest["shards"])[0]
    manifest["shards"][name]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="fingerprint does not match"):
        verify_cache(dataset, deep=False)
    with pytest.raises(CacheError, match="does not match the manifest"):
        verify_cache(dataset, deep=True)
    absent = data_root / "tokenizers" / "absent.model"
    with pytest.raises(CacheError, match=f"{absent}: tokenizer file is missing"):
        verify_cache(dataset, absent)
    path.unlink()
    with pytest.raises(CacheError, match=f"{path}: no manifest"):
        verify_cache(dataset)


def _copy_as(data_root, name):
    copy = _dataset(data_root, name)
    shutil.copytree(_dataset(data_root), copy)
    write_manifest(copy, _tokenizer(data_root), source="test", is_fineweb=False)


def _tokenizer(data_root):
    """The one tokenizer build_cache placed in data_root/tokenizers."""
    (model,) = (data_root / "tokenizers").glob("*.model")
    return model


def test_renamed_dataset_folder_is_caught(data_root):
    renamed = _dataset(data_root, "renamed")
    _dataset(data_root).rename(renamed)
    with pytest.raises(CacheError, match="manifest is for dataset 'fw' but the folder is 'renamed'"):
        verify_cache(renamed, deep=False)


def test_resolve_dataset_order(data_root, monkeypatch):
    monkeypatch.delenv("DATA_PATH", raising=False)
    monkeypatch.delenv("TOKENIZER_PATH", raising=False)
    with pytest.raises(CacheError, match=r"no finished dataset cache .*run `just bootstrap`"):
        resolve_dataset(data_root)
    _copy_as(data_root, SYNTH_DATASET)
    dataset, tokenizer, manifest = resolve_dataset(data_root)
    assert dataset == _dataset(data_root, SYNTH_DATASET)
    assert tokenizer == _tokenizer(data_root).resolve()
    assert manifest["dataset"] == SYNTH_DATASET and manifest["vocab_size"] == 1024
    # A FineWeb folder without a manifest (an unfinished download) is passed over...
    (data_root / "datasets" / FINEWEB_DATASET).mkdir()
    assert resolve_dataset(data_root)[0] == _dataset(data_root, SYNTH_DATASET)
    # ...and preferred once it has one.
    shutil.rmtree(data_root / "datasets" / FINEWEB_DATASET)
    _copy_as(data_root, FINEWEB_DATASET)
    assert resolve_dataset(data_root)[0] == _dataset(data_root, FINEWEB_DATASET)
    # The environment wins, as in upstream's trainer.
    monkeypatch.setenv("DATA_PATH", str(_dataset(data_root)))
    monkeypatch.setenv("TOKENIZER_PATH", "/elsewhere/tok.model")
    dataset, tokenizer, _ = resolve_dataset(data_root)
    assert dataset == _dataset(data_root) and str(tokenizer) == "/elsewhere/tok.model"
    monkeypatch.setenv("DATA_PATH", str(data_root / "nowhere"))
    with pytest.raises(CacheError, match="DATA_PATH points at a folder that does not exist"):
        resolve_dataset(data_root)


def test_tokenizer_found_after_the_repo_moves(data_root):
    """The manifest records an absolute tokenizer path; if the data folder moves, the
    conventional data/tokenizers/<name> is used."""
    dataset = _dataset(data_root)
    tokenizers = data_root / "tokenizers"
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    name = _tokenizer(data_root).name
    manifest["tokenizer_path"] = f"/moved/away/{name}"
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_cache(dataset)["tokenizer_path"] == str(tokenizers.resolve() / name)


def test_a_copied_checkout_reads_its_own_tokenizer(built, tmp_path):
    """The manifest stores the tokenizer relative to the dataset's folder: a copy of the data
    root resolves to the copy's tokenizer, never the original's."""
    original = _dataset(built)
    recorded = json.loads((original / MANIFEST_NAME).read_text())["tokenizer_path"]
    assert not recorded.startswith("/") and recorded.endswith(_tokenizer(built).name), recorded
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(built, copy)
    info = verify_cache(_dataset(copy), deep=False)
    assert info["tokenizer_path"] == str((copy / "tokenizers" / _tokenizer(built).name).resolve())


def test_an_old_absolute_manifest_in_a_copy_reads_the_copy(data_root, tmp_path):
    """An older manifest's absolute path into another checkout (still there) is not followed:
    the copy's own data/tokenizers/<name> is; a path inside this data root is kept."""
    dataset = _dataset(data_root)
    name = _tokenizer(data_root).name
    other = tmp_path / "original" / "tokenizers"
    other.mkdir(parents=True)
    shutil.copy(data_root / "tokenizers" / name, other / name)
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    manifest["tokenizer_path"] = str(other / name)
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    own = str((data_root / "tokenizers" / name).resolve())
    assert verify_cache(dataset, deep=False)["tokenizer_path"] == own
    manifest["tokenizer_path"] = own  # absolute but inside: as it was written
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_cache(dataset, deep=False)["tokenizer_path"] == own


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "autogolf.data.cache_cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_shows_counts_per_split(data_root):
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_PATH", "TOKENIZER_PATH")}
    _copy_as(data_root, SYNTH_DATASET)
    manifest = read_manifest(_dataset(data_root, SYNTH_DATASET))
    done = _cli("verify", "--data-root", str(data_root), env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"dataset: {SYNTH_DATASET} ({_dataset(data_root, SYNTH_DATASET)})" in lines
    assert "is_fineweb: false" in lines
    assert f"fingerprint: {manifest['fingerprint']}" in lines
    for split in ("train", "val"):
        s = manifest["splits"][split]
        assert f"{split}: {s['shards']} shards, {s['tokens']:,} tokens" in lines
    assert "verify: ok (deep: sha256 and every token id checked)" in lines

    fast = _cli("verify", "--data-root", str(data_root), "--dataset", "fw", "--fast", env=env)
    assert fast.returncode == 0 and "dataset: fw " in fast.stdout and "fast: headers" in fast.stdout

    list_shards(_dataset(data_root), "val")[0].unlink()
    broken = _cli("verify", "--data-root", str(data_root), "--dataset", "fw", env=env)
    assert broken.returncode == 1
    assert broken.stderr.startswith("error: ") and "fineweb_val_000000.bin" in broken.stderr
    empty = _cli("verify", "--data-root", str(data_root / "none"), env=env)
    assert empty.returncode == 1 and "just bootstrap" in empty.stderr


def test_cli_adopts_existing_shards_with_a_manifest(data_root):
    """`manifest` blesses shards made elsewhere (e.g. upstream's downloader)."""
    dataset = _dataset(data_root)
    fingerprint = read_manifest(dataset)["fingerprint"]
    (dataset / MANIFEST_NAME).unlink()
    tokenizer = _tokenizer(data_root)
    done = _cli("manifest", str(dataset), "--tokenizer", str(tokenizer), "--source", "hf:test", "--fineweb")
    assert done.returncode == 0, done.stderr
    assert f"fingerprint {fingerprint}" in done.stdout
    manifest = read_manifest(dataset)
    assert manifest["is_fineweb"] is True and manifest["source"] == "hf:test"
    assert verify_cache(dataset)["fingerprint"] == fingerprint
