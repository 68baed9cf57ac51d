"""Benchmark corpus import throughput (MB of document text per second).

Replicates a small real jsonl corpus to --mb megabytes in a temp folder, writes it as
.jsonl and as .parquet, and imports each twice with autogolf.data.corpus: once with an existing
tokenizer, once training a tokenizer on the corpus first. Not a test: it only prints.

    .venv/bin/python scripts/bench_corpus.py [--mb 30] [--docs D.jsonl] [--tokenizer T.model]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf import settings  # noqa: E402
from autogolf.data.corpus import build_cache, iter_documents  # noqa: E402

FIXTURES = Path(settings.get("AUTOGOLF_FIXTURES") or REPO.parent / "shared" / "fixtures")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=30.0, help="corpus size to replicate to, in MB of text (default 30)")
    parser.add_argument("--docs", default=str(FIXTURES / "fineweb_docs_200.jsonl"),
                        help="jsonl corpus to replicate (default: the 200 real FineWeb docs fixture)")
    parser.add_argument("--tokenizer", default=str(FIXTURES / "tokenizer" / "fineweb_1024_bpe.model"),
                        help="existing tokenizer for the 'given tokenizer' runs (default: the real sp1024)")
    args = parser.parse_args()
    docs = [json.loads(line)["text"] for line in Path(args.docs).read_text(encoding="utf-8").splitlines()]
    doc_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    copies = max(1, round(args.mb / doc_mb))

    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        tmp = Path(tmp)
        jsonl = tmp / "docs.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for _ in range(copies):
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
        parquet = tmp / "docs.parquet"
        writer = pq.ParquetWriter(parquet, pa.schema([("text", pa.string())]))
        for _ in range(copies):
            writer.write_table(pa.table({"text": docs}))
        writer.close()
        total_docs = copies * len(docs)
        text_mb = copies * doc_mb
        print(f"corpus: {total_docs:,} docs, {text_mb:.1f} MB of text "
              f"(jsonl {jsonl.stat().st_size / 1e6:.1f} MB on disk, parquet {parquet.stat().st_size / 1e6:.1f} MB); "
              f"{os.cpu_count()} CPUs")

        t0 = time.monotonic()
        n = sum(1 for _ in iter_documents(jsonl))
        print(f"read only, jsonl:   {text_mb / (time.monotonic() - t0):7.1f} MB/s ({n:,} docs)")
        t0 = time.monotonic()
        n = sum(1 for _ in iter_documents(parquet))
        print(f"read only, parquet: {text_mb / (time.monotonic() - t0):7.1f} MB/s ({n:,} docs)")

        for src in (jsonl, parquet):
            for tokenizer in (Path(args.tokenizer), None):
                data_root = tmp / f"data_{src.suffix[1:]}_{'given' if tokenizer else 'trained'}"
                t0 = time.monotonic()
                manifest = build_cache(lambda: iter_documents(src), name="bench", data_root=data_root,
                                       source=f"imported:{src}", tokenizer=tokenizer,
                                       val_docs=len(docs), shard_tokens=10**8)
                seconds = time.monotonic() - t0
                tokens = manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
                label = "given tokenizer" if tokenizer else "training tokenizer"
                print(f"import {src.suffix[1:]:7s} {label:18s}: {text_mb / seconds:6.1f} MB/s "
                      f"({seconds:.1f} s, {tokens:,} tokens, {tokens / seconds / 1e6:.2f} M tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
