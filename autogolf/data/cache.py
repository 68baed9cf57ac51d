"""The dataset cache: its manifest, its verification, and which dataset a run uses.

A cache is `data/datasets/<name>/fineweb_{train,val}_NNNNNN.bin` plus a tokenizer in
`data/tokenizers/`. We record what we built or downloaded in
`data/datasets/<name>/autogolf_manifest.json`: every shard's token count, byte size and
sha256, the tokenizer's sha256, split totals and a `fingerprint` that changes whenever any
of those change. The harness records the fingerprint next to every result, so two results
are only compared when they were measured on the same bytes.

`verify_cache(deep=False)` is cheap (headers and sizes) and meant for every run;
`deep=True` re-hashes every shard and checks every token id, for `just verify-data`.

The command line (`just verify-data`, `... manifest`) is autogolf/data/cache_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from autogolf.fsutil import atomic_write, file_sha256
from autogolf.data.shards import (HEADER_BYTES, TOKEN_DTYPE, ShardError, list_shards,
                             read_header, shard_split_index, validate_shard)

MANIFEST_NAME = "autogolf_manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
BOS_ID = 1  # the trainer and the bpb metric both assume documents start with id 1
FINEWEB_DATASET = "fineweb10B_sp1024"
SYNTH_DATASET = "autogolf_synth_sp1024"
DATASET_PREFERENCE = (FINEWEB_DATASET, SYNTH_DATASET)
_READ_CHUNK = 1 << 24  # bytes; even, so uint16 tokens never straddle two chunks
_PROGRESS_EVERY_S = 5.0
_CORE_KEYS = ("manifest_version", "dataset", "source", "is_fineweb", "tokenizer_path",
              "tokenizer_name", "tokenizer_sha256", "vocab_size", "bos_id", "splits",
              "shards", "fingerprint", "created_at")


class CacheError(ValueError):
    """The dataset cache is missing, incomplete or inconsistent. The message names the
    file and says what to do about it."""


# --------------------------------------------------------------------------- helpers

def load_tokenizer(tokenizer_path: Path):
    """Load a SentencePiece model, or raise CacheError saying which file and what to do."""
    import sentencepiece as spm

    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise CacheError(f"{tokenizer_path}: tokenizer file is missing; run `just bootstrap` "
                         f"(or `just corpus SRC`) to rebuild the cache, or point "
                         f"TOKENIZER_PATH at the .model file that wrote the shards")
    try:
        return spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    except (OSError, RuntimeError) as e:
        raise CacheError(f"{tokenizer_path}: not a loadable SentencePiece model ({e}); "
                         f"delete it and re-run `just bootstrap` (or `just corpus SRC`)") from e


def compute_fingerprint(tokenizer_sha256: str, shard_sha256: dict[str, str]) -> str:
    """One hash naming the exact bytes a result was measured on: tokenizer + all shards."""
    digest = hashlib.sha256()
    digest.update(f"tokenizer {tokenizer_sha256}\n".encode())
    for name in sorted(shard_sha256):
        digest.update(f"{name} {shard_sha256[name]}\n".encode())
    return digest.hexdigest()


def _first_token(path: Path) -> int | None:
    if read_header(path) == 0:
        return None
    return int(np.fromfile(path, dtype=TOKEN_DTYPE, count=1, offset=HEADER_BYTES)[0])


def _scan_shard(path: Path, vocab_size: int) -> tuple[int, str]:
    """One pass over a shard: validate header/size, hash the bytes, check every token id.
    Returns (num_tokens, sha256). One read, so a 20 GB cache is read once, not twice."""
    num_tokens = read_header(path)
    digest = hashlib.sha256()
    too_big = False
    with open(path, "rb") as f:
        first = True
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
            body = chunk[HEADER_BYTES:] if first else chunk
            first = False
            if body and not too_big:
                too_big = int(np.frombuffer(body, dtype=TOKEN_DTYPE).max()) >= vocab_size
    if too_big:
        validate_shard(path, vocab_size)  # raises the ShardError naming position and id
    return num_tokens, digest.hexdigest()


class _Progress:
    """Prints a line to stderr at most every few seconds, so long hashes show life."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.start = self.last = time.monotonic()

    def update(self, done: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY_S:
            self.last = now
            rate = nbytes / max(now - self.start, 1e-9) / 1e6
            print(f"{self.label}: {done}/{self.total} shards, {nbytes / 1e9:.2f} GB "
                  f"({rate:.0f} MB/s)", file=sys.stderr, flush=True)


def _shards_on_disk(dataset_dir: Path) -> dict[str, list[Path]]:
    return {split: list_shards(dataset_dir, split) for split in SPLITS}


def _check_contiguous(dataset_dir: Path, shards: dict[str, list[Path]]) -> None:
    for split, paths in shards.items():
        indices = [shard_split_index(p)[1] for p in paths]
        if indices != list(range(len(indices))):
            raise CacheError(f"{dataset_dir}: {split} shards are not numbered 0..{len(indices) - 1} "
                             f"(found {indices[:8]}{'...' if len(indices) > 8 else ''}); a shard "
                             f"is missing; re-run `just bootstrap` (or `just corpus SRC`)")


def _check_splits(dataset_dir: Path, on_disk: dict[str, list[Path]], splits: dict, bos_id: int) -> None:
    """Both splits hold tokens, and each starts with BOS (documents are BOS + tokens)."""
    for split in SPLITS:
        if splits[split]["tokens"] == 0:
            raise CacheError(f"{dataset_dir}: the {split} split is empty ({splits[split]['shards']} "
                             f"shards, 0 tokens); nothing to {'score' if split == 'val' else 'train'} "
                             f"on; re-run `just bootstrap` (or `just corpus SRC`)")
        first = _first_token(on_disk[split][0])
        if first != bos_id:
            raise CacheError(f"{on_disk[split][0]}: first token is {first}, not BOS ({bos_id}); "
                             f"documents must be stored as BOS + tokens; rebuild the cache")


def _each_shard(dataset_dir: Path, on_disk: dict[str, list[Path]], label: str,
                measure: Callable[[Path], tuple[int, str, int]]) -> tuple[dict[str, tuple[int, str, int]], dict]:
    """Run `measure(path) -> (num_tokens, sha256, bytes)` over every shard, split by split,
    with progress on stderr. Returns ({shard name: what measure returned}, split totals).
    One loop for writing a manifest and for checking one against it."""
    progress = _Progress(f"{label} {dataset_dir.name}", sum(len(v) for v in on_disk.values()))
    measured: dict[str, tuple[int, str, int]] = {}
    splits: dict[str, dict] = {}
    done = nbytes = 0
    for split in SPLITS:
        split_tokens = 0
        for path in on_disk[split]:
            num_tokens, sha, size = measured[path.name] = measure(path)
            split_tokens += num_tokens
            done, nbytes = done + 1, nbytes + size
            progress.update(done, nbytes)
        splits[split] = {"shards": len(on_disk[split]), "tokens": split_tokens}
    return measured, splits


def _atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- manifest

def write_manifest(dataset_dir: Path, tokenizer_path: Path, *, source: str, is_fineweb: bool,
                   extra: dict | None = None, final_dir: Path | None = None) -> dict:
    """Validate every shard, then write `<dataset_dir>/autogolf_manifest.json` atomically.

    final_dir: where dataset_dir will be moved once complete (a staged build); the
    tokenizer's path is recorded relative to it.

    `extra` keys are added at the top level of the manifest (they may not replace the keys
    this module owns). Raises ShardError for a malformed shard and CacheError for a cache
    that cannot be used (no validation or training tokens, wrong BOS)."""
    dataset_dir = Path(dataset_dir)
    tokenizer_path = Path(tokenizer_path)
    if not dataset_dir.is_dir():
        raise CacheError(f"{dataset_dir}: dataset folder does not exist")
    clash = set(extra or {}) & set(_CORE_KEYS)
    if clash:
        raise ValueError(f"write_manifest: extra may not set the manifest's own keys {sorted(clash)}")
    sp = load_tokenizer(tokenizer_path)
    vocab_size, bos_id = int(sp.vocab_size()), int(sp.bos_id())
    if bos_id != BOS_ID:
        raise CacheError(f"{tokenizer_path}: BOS id is {bos_id}, but the trainer and metric need "
                         f"{BOS_ID}; train the tokenizer with bos_id=1 (as upstream does)")
    tokenizer_sha = file_sha256(tokenizer_path)

    on_disk = _shards_on_disk(dataset_dir)
    _check_contiguous(dataset_dir, on_disk)
    measured, splits = _each_shard(dataset_dir, on_disk, "manifest",
                                   lambda path: (*_scan_shard(path, vocab_size), path.stat().st_size))
    shards = {name: {"num_tokens": n, "sha256": sha, "bytes": size} for name, (n, sha, size) in measured.items()}
    _check_splits(dataset_dir, on_disk, splits, bos_id)

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": dataset_dir.name,
        "source": source,
        "is_fineweb": bool(is_fineweb),
        "tokenizer_path": _portable_path(tokenizer_path, final_dir or dataset_dir),
        "tokenizer_name": tokenizer_path.name,
        "tokenizer_sha256": tokenizer_sha,
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "splits": splits,
        "shards": shards,
        "fingerprint": compute_fingerprint(tokenizer_sha, {n: s["sha256"] for n, s in shards.items()}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.update(extra or {})
    _atomic_write_json(dataset_dir / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CacheError(f"{path}: no manifest, so this cache was never finished (or was made "
                         f"by another tool); run `just bootstrap` (or `just corpus SRC`) to "
                         f"build it, or adopt shards you trust with `python -m autogolf.data.cache_cli "
                         f"manifest {Path(dataset_dir)} --tokenizer T.model --source TEXT`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: unreadable manifest ({e}); delete it and re-run "
                         f"`just bootstrap` (or `just corpus SRC`)") from e
    missing = [k for k in _CORE_KEYS if k not in manifest] if isinstance(manifest, dict) else _CORE_KEYS
    if missing:
        raise CacheError(f"{path}: manifest lacks {list(missing)}; delete it and re-run "
                         f"`just bootstrap` (or `just corpus SRC`)")
    return manifest


def _portable_path(path: Path, dataset_dir: Path) -> str:
    """A path as a manifest records it: relative to the dataset's folder when it lies in the
    same data root (so a moved or copied checkout reads its own files, not the original's),
    else absolute (a file outside the checkout stays where it was)."""
    path, folder = Path(path).resolve(), Path(dataset_dir).resolve()
    if path.is_relative_to(folder.parent.parent):
        return os.path.relpath(path, folder)
    return str(path)


def manifest_tokenizer_path(dataset_dir: Path, manifest: dict) -> Path:
    """The tokenizer a manifest names, resolved against the dataset's own folder. An older
    manifest holds an absolute path: it is used when it lies in this data root; when it is
    gone or points outside (into the checkout this one was copied from), the conventional
    `<data_root>/tokenizers/<name>` of this checkout is used when present."""
    folder = Path(dataset_dir).resolve()
    recorded = Path(manifest["tokenizer_path"])
    if not recorded.is_absolute():
        return Path(os.path.normpath(folder / recorded))
    conventional = folder.parent.parent / "tokenizers" / manifest["tokenizer_name"]
    inside = recorded.resolve().is_relative_to(folder.parent.parent)
    if recorded.is_file() and (inside or not conventional.is_file()):
        return recorded
    return conventional if conventional.is_file() else recorded


# --------------------------------------------------------------------------- verify

def _check_tokenizer(dataset_dir: Path, manifest: dict, tokenizer_path: Path | None) -> tuple[Path, int, int, str]:
    """The tokenizer is the one that wrote the cache: (path, vocab size, BOS id, sha256)."""
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else manifest_tokenizer_path(dataset_dir, manifest)
    sp = load_tokenizer(tokenizer_path)
    vocab_size, bos_id = int(sp.vocab_size()), int(sp.bos_id())
    if vocab_size != manifest["vocab_size"]:
        raise CacheError(f"{tokenizer_path}: tokenizer has vocab size {vocab_size} but the cache "
                         f"{dataset_dir} was written with vocab size {manifest['vocab_size']} "
                         f"(tokenizer {manifest['tokenizer_name']}); point TOKENIZER_PATH at the "
                         f"tokenizer that wrote the shards, or rebuild the cache with this one")
    if bos_id != BOS_ID or manifest["bos_id"] != BOS_ID:
        raise CacheError(f"{tokenizer_path}: BOS id is {bos_id} (manifest says {manifest['bos_id']}); "
                         f"the trainer and metric need BOS id {BOS_ID}; use a tokenizer trained "
                         f"with bos_id=1")
    tokenizer_sha = file_sha256(tokenizer_path)
    if tokenizer_sha != manifest["tokenizer_sha256"]:
        raise CacheError(f"{tokenizer_path}: this is not the tokenizer that wrote {dataset_dir} "
                         f"(sha256 {tokenizer_sha[:12]}..., manifest has "
                         f"{manifest['tokenizer_sha256'][:12]}...); point TOKENIZER_PATH at "
                         f"{manifest['tokenizer_name']} or rebuild the cache with this tokenizer")
    return tokenizer_path, vocab_size, bos_id, tokenizer_sha


def _check_listed(dataset_dir: Path, manifest: dict, on_disk: dict[str, list[Path]]) -> None:
    """The shards on disk are exactly those the manifest lists."""
    manifest_path = dataset_dir / MANIFEST_NAME
    names_on_disk = {p.name for paths in on_disk.values() for p in paths}
    names_listed = set(manifest["shards"])
    if names_listed - names_on_disk:
        missing = sorted(names_listed - names_on_disk)
        raise CacheError(f"{dataset_dir / missing[0]}: shard listed in {manifest_path} is missing "
                         f"({len(missing)} missing in all); re-run `just bootstrap` "
                         f"(or `just corpus SRC`) to restore it")
    if names_on_disk - names_listed:
        extra = sorted(names_on_disk - names_listed)
        raise CacheError(f"{dataset_dir / extra[0]}: shard not listed in {manifest_path} "
                         f"({len(extra)} unlisted in all); it was added after the manifest was "
                         f"written; remove it, or rebuild the cache so the manifest covers it")


def _verify_shard(path: Path, entry: dict, vocab_size: int, deep: bool) -> tuple[int, str, int]:
    """One shard against its manifest entry: size, then (deep) sha256 and every token id, or
    (fast) the header's count. Returns (num_tokens, sha256, bytes)."""
    try:
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheError(f"{path}: size {size} bytes but the manifest recorded "
                             f"{entry['bytes']}; the shard changed since the cache was "
                             f"built; delete it and re-run `just bootstrap` "
                             f"(or `just corpus SRC`)")
        if deep:
            num_tokens, sha = _scan_shard(path, vocab_size)
            if sha != entry["sha256"]:
                raise CacheError(f"{path}: sha256 {sha[:12]}... does not match the manifest "
                                 f"({entry['sha256'][:12]}...); the shard was modified or "
                                 f"corrupted; delete it and re-run `just bootstrap` "
                                 f"(or `just corpus SRC`)")
        else:
            num_tokens, sha = read_header(path), entry["sha256"]
    except ShardError as e:
        raise CacheError(str(e)) from e
    if num_tokens != entry["num_tokens"]:
        raise CacheError(f"{path}: holds {num_tokens} tokens but the manifest recorded "
                         f"{entry['num_tokens']}; rebuild the cache")
    return num_tokens, sha, size


def _check_totals(dataset_dir: Path, manifest: dict, splits: dict, fingerprint: str) -> None:
    """Split totals and the fingerprint agree with the manifest (else it was edited by hand)."""
    manifest_path = dataset_dir / MANIFEST_NAME
    for split in SPLITS:
        if splits[split] != manifest["splits"].get(split):
            raise CacheError(f"{manifest_path}: {split} totals {manifest['splits'].get(split)} do "
                             f"not match the shards {splits[split]}; rebuild the cache")
    if fingerprint != manifest["fingerprint"]:
        raise CacheError(f"{manifest_path}: fingerprint does not match the tokenizer and shards "
                         f"(the manifest was edited by hand); rebuild it with "
                         f"`python -m autogolf.data.cache_cli manifest` or re-run `just bootstrap`")


def verify_cache(dataset_dir: Path, tokenizer_path: Path | None = None, *, deep: bool = True) -> dict:
    """Check that a cache is complete and matches its manifest and tokenizer.

    Fast (deep=False): manifest, tokenizer, shard list, headers, sizes, BOS at the start of
    each split. Deep: also every shard's sha256 and every token id < vocab size.
    Returns a report dict; raises CacheError (naming the file, saying what to do)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise CacheError(f"{dataset_dir}: dataset folder does not exist; run `just bootstrap` "
                         f"(or `just corpus SRC`)")
    manifest = read_manifest(dataset_dir)
    if manifest["dataset"] != dataset_dir.name:
        raise CacheError(f"{dataset_dir / MANIFEST_NAME}: manifest is for dataset {manifest['dataset']!r} but the "
                         f"folder is {dataset_dir.name!r}; rename the folder back, or rewrite the "
                         f"manifest with `python -m autogolf.data.cache_cli manifest {dataset_dir} --tokenizer "
                         f"... --source ...`")
    tokenizer_path, vocab_size, bos_id, tokenizer_sha = _check_tokenizer(dataset_dir, manifest, tokenizer_path)
    on_disk = _shards_on_disk(dataset_dir)
    _check_listed(dataset_dir, manifest, on_disk)
    measured, splits = _each_shard(
        dataset_dir, on_disk, "verify",
        lambda path: _verify_shard(path, manifest["shards"][path.name], vocab_size, deep))
    _check_splits(dataset_dir, on_disk, splits, bos_id)
    fingerprint = compute_fingerprint(tokenizer_sha, {name: sha for name, (_, sha, _) in measured.items()})
    _check_totals(dataset_dir, manifest, splits, fingerprint)
    return {
        "dataset": manifest["dataset"],
        "dataset_dir": str(dataset_dir),
        "source": manifest["source"],
        "is_fineweb": bool(manifest["is_fineweb"]),
        "tokenizer_path": str(tokenizer_path),
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "fingerprint": fingerprint,
        "splits": splits,
        "deep": deep,
    }


# --------------------------------------------------------------------------- resolve

def resolve_dataset(data_root: Path | str = "data") -> tuple[Path, Path, dict]:
    """Which cache a run uses: (dataset_dir, tokenizer_path, manifest).

    DATA_PATH / TOKENIZER_PATH from the environment win (as in upstream's trainer).
    Otherwise the real FineWeb cache when it has a manifest, else the offline synthetic one."""
    data_root = Path(data_root)
    env_data, env_tok = os.environ.get("DATA_PATH"), os.environ.get("TOKENIZER_PATH")
    if env_data:
        dataset_dir = Path(env_data)
        if not dataset_dir.is_dir():
            raise CacheError(f"{dataset_dir}: DATA_PATH points at a folder that does not exist; "
                             f"unset DATA_PATH or run `just bootstrap` / `just corpus SRC`")
        manifest = read_manifest(dataset_dir)
    else:
        for name in DATASET_PREFERENCE:
            dataset_dir = data_root / "datasets" / name
            if (dataset_dir / MANIFEST_NAME).is_file():
                manifest = read_manifest(dataset_dir)
                break
        else:
            raise CacheError(f"{data_root / 'datasets'}: no finished dataset cache (looked for "
                             f"{' and '.join(DATASET_PREFERENCE)} with {MANIFEST_NAME}); run "
                             f"`just bootstrap` (FineWeb when online, else the offline synthetic "
                             f"corpus) or `just corpus SRC` and set DATA_PATH")
    tokenizer_path = Path(env_tok) if env_tok else manifest_tokenizer_path(dataset_dir, manifest)
    return dataset_dir, tokenizer_path, manifest


# --------------------------------------------------------------------------- CLI
