"""What the per-run shard check costs (autogolf/data/shardstate.py), measured.

Builds a throw-away cache of real FineWeb size in a temporary folder (default 10 train
shards of 100,000,000 tokens, 200 MB each, as upstream's sp1024 shards are, plus one val
shard), with the tokenizer of the local cache, then times the check three ways:
  first    no recorded state: every shard is hashed (a fresh cache, or after `git clean`)
  warm     the state is recorded: only size, mtime and inode are read (every later run)
  one      one shard touched since: that shard alone is re-hashed
and prints seconds and the share of a breadth run (--breadth-seconds).

    .venv/bin/python scripts/bench_shardcheck.py [--shards 10] [--shard-tokens 100000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autogolf.data.cache import resolve_dataset, write_manifest  # noqa: E402
from autogolf.data.shards import write_shard  # noqa: E402
from autogolf.data import shardstate  # noqa: E402


def build(root: Path, tokenizer: Path, shards: int, tokens: int) -> Path:
    dataset = root / "datasets" / "bench_sp1024"
    rng = np.random.default_rng(0)
    for i, split in [(i, "train") for i in range(shards)] + [(0, "val")]:
        data = rng.integers(2, 1024, size=tokens, dtype=np.uint16)
        data[0] = 1  # documents start with BOS
        write_shard(dataset / f"fineweb_{split}_{i:06d}.bin", data)
    write_manifest(dataset, tokenizer, source="bench_shardcheck (random tokens)", is_fineweb=False)
    return dataset


def timed(dataset: Path) -> tuple[float, int]:
    start = time.perf_counter()
    result = shardstate.require_verified(dataset)
    return time.perf_counter() - start, len(result["hashed"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=10, help="train shards to build (default 10)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 100,000,000)")
    parser.add_argument("--breadth-seconds", type=float, default=330.0,
                        help="wall time of one breadth run to compare with (default 330)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary cache (default: the system's)")
    args = parser.parse_args()
    _, tokenizer, _ = resolve_dataset(Path(__file__).resolve().parents[1] / "data")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        dataset = build(Path(tmp), tokenizer, args.shards, args.shard_tokens)
        size = sum(p.stat().st_size for p in dataset.glob("fineweb_*.bin"))
        print(f"cache: {args.shards} train + 1 val shards, {size / 1e9:.2f} GB, built in {time.perf_counter() - t:.1f} s")
        rows = [("first", *timed(dataset)), ("warm", *timed(dataset))]
        os.utime(dataset / "fineweb_train_000003.bin")
        rows.append(("one", *timed(dataset)))
        for name, seconds, hashed in rows:
            print(f"{name:<6} {seconds:9.4f} s  hashed {hashed:2d} shards  "
                  f"{100 * seconds / args.breadth_seconds:6.2f}% of a {args.breadth_seconds:g} s breadth run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
