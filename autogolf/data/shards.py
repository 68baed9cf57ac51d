"""The upstream shard format: read, write and validate `fineweb_{train,val}_NNNNNN.bin`.

A shard is a 1,024-byte header of 256 little-endian int32 -- [0] magic 20240520,
[1] version 1, [2] num_tokens, the rest zero -- followed by num_tokens little-endian
uint16 token ids. Documents are BOS followed by their tokens and run across shard
boundaries.

Writes are atomic (temp file + fsync + rename), so a killed writer never leaves a
file that looks like a valid shard: either the old file, nothing, or the whole new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autogolf.fsutil import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
SHARD_NAME = re.compile(r"^fineweb_(train|val)_(\d{6})\.bin$")


class ShardError(ValueError):
    """A shard file is missing, malformed or inconsistent. The message names the file
    and says what to do about it."""


def _fix_hint(path: Path) -> str:
    return (f"delete {path} and re-run `just bootstrap` (or `just corpus SRC` for an "
            f"imported cache) to rebuild it")


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    split: str  # "train" or "val"
    index: int
    num_tokens: int


def shard_split_index(path: Path) -> tuple[str, int]:
    m = SHARD_NAME.match(Path(path).name)
    if not m:
        raise ShardError(f"{path}: not a shard name; expected fineweb_train_NNNNNN.bin "
                         f"or fineweb_val_NNNNNN.bin")
    return m.group(1), int(m.group(2))


def read_header(path: Path) -> int:
    """Validate magic, version and file size; return num_tokens. Cheap: reads 1 KB."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file is missing; re-run `just bootstrap` "
                         f"(or `just corpus SRC`) to fetch or rebuild the cache")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: truncated shard ({size} bytes, smaller than the "
                         f"{HEADER_BYTES}-byte header); {_fix_hint(path)}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}); "
                         f"this is not a Parameter Golf shard; {_fix_hint(path)}")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} "
                         f"(expected {VERSION}); {_fix_hint(path)}")
    num_tokens = int(header[2])
    if num_tokens < 0:
        raise ShardError(f"{path}: negative token count {num_tokens}; {_fix_hint(path)}")
    expected = HEADER_BYTES + TOKEN_DTYPE.itemsize * num_tokens
    if size != expected:
        raise ShardError(f"{path}: size {size} bytes does not match the header "
                         f"(1024 + 2*{num_tokens} = {expected}); the file is truncated "
                         f"or has trailing bytes; {_fix_hint(path)}")
    return num_tokens


def read_tokens(path: Path, *, mmap: bool = False) -> np.ndarray:
    """Return the shard's token ids as uint16 (header validated first)."""
    num_tokens = read_header(path)
    if mmap:
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES,
                         shape=(num_tokens,))
    return np.fromfile(path, dtype=TOKEN_DTYPE, count=num_tokens, offset=HEADER_BYTES)


def validate_shard(path: Path, vocab_size: int | None = None) -> ShardInfo:
    """Full check: header, size, and (with vocab_size) every token id < vocab_size."""
    path = Path(path)
    split, index = shard_split_index(path)
    num_tokens = read_header(path)
    if vocab_size is not None and num_tokens:
        tokens = read_tokens(path, mmap=True)
        # Chunked so a 100M-token shard never needs a second full-size temporary.
        step = 1 << 24
        for start in range(0, num_tokens, step):
            top = int(tokens[start:start + step].max())
            if top >= vocab_size:
                bad = start + int(np.argmax(tokens[start:start + step] >= vocab_size))
                raise ShardError(
                    f"{path}: token id {int(tokens[bad])} at position {bad} is >= the "
                    f"tokenizer's vocab size {vocab_size}; the shard was written with a "
                    f"different tokenizer; rebuild the cache with the matching tokenizer "
                    f"or point TOKENIZER_PATH at the one that wrote it")
    return ShardInfo(path=path, split=split, index=index, num_tokens=num_tokens)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write a shard atomically: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
        raise ValueError(f"{path}: token ids must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    atomic_write(path, header.tobytes(), tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def list_shards(dataset_dir: Path, split: str) -> list[Path]:
    """Shard files of one split, sorted by index. Ignores temp/partial files."""
    dataset_dir = Path(dataset_dir)
    return sorted(p for p in dataset_dir.glob(f"fineweb_{split}_*.bin")
                  if SHARD_NAME.match(p.name))


def remove_partials(dataset_dir: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (ours and huggingface_hub's)."""
    removed = []
    for p in Path(dataset_dir).glob(".*.partial"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
