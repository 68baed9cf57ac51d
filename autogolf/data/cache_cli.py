"""`just verify-data` and `... manifest`: the data cache's command line.

    python -m autogolf.data.cache_cli verify [--data-root data] [--dataset NAME] [--fast]
    python -m autogolf.data.cache_cli manifest DATASET_DIR --tokenizer PATH --source TEXT [--fineweb]

Apart from the library (cache.py), so that the library is never also `__main__` and the
shard states (shardstate.py, which builds on the library) are imported in one direction.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autogolf.data import cache, shardstate
from autogolf.data.cache import (FINEWEB_DATASET, MANIFEST_NAME, SPLITS, SYNTH_DATASET, CacheError,
                                 resolve_dataset, verify_cache, write_manifest)
from autogolf.data.shards import ShardError


def format_report(report: dict) -> str:
    lines = [
        f"dataset: {report['dataset']} ({report['dataset_dir']})",
        f"source: {report['source']}",
        f"is_fineweb: {str(report['is_fineweb']).lower()}",
        f"tokenizer: {report['tokenizer_path']} (vocab {report['vocab_size']}, bos {report['bos_id']})",
        f"fingerprint: {report['fingerprint']}",
    ]
    for split in SPLITS:
        s = report["splits"][split]
        lines.append(f"{split}: {s['shards']} shards, {s['tokens']:,} tokens")
    lines.append("verify: ok (" + ("deep: sha256 and every token id checked" if report["deep"]
                                   else "fast: headers and sizes only") + ")")
    return "\n".join(lines)


def shard_report(dataset_dir: Path, *, rehash: bool) -> int:
    """Print each shard's state (verified, changed, missing); return how many are not verified."""
    result = shardstate.shard_states(Path(dataset_dir), rehash=rehash)
    for name, s in result["shards"].items():
        print(f"{name:<28} {s['state']:<9} {s['how']}")
    bad = [n for n, s in result["shards"].items() if s["state"] != "verified"]
    if bad:
        print(f"error: {shardstate.problem(dataset_dir, result)}", file=sys.stderr)
    return len(bad)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.data.cache_cli", description=cache.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check a dataset cache against its manifest and tokenizer")
    v.add_argument("--data-root", default="data", help="folder holding datasets/ and tokenizers/ (default: data)")
    v.add_argument("--dataset", default=None,
                   help="dataset name under DATA_ROOT/datasets (default: DATA_PATH, else "
                        f"{FINEWEB_DATASET} if present, else {SYNTH_DATASET})")
    v.add_argument("--tokenizer", default=None,
                   help="tokenizer .model to check against (default: TOKENIZER_PATH, else the manifest's)")
    v.add_argument("--fast", action="store_true",
                   help="skip checking every token id, and hash only shards whose size, mtime or inode "
                        "changed since they were last verified (what every run does)")
    m = sub.add_parser("manifest", help="validate the shards of a dataset folder and (re)write its manifest")
    m.add_argument("dataset_dir", help="dataset folder holding fineweb_{train,val}_NNNNNN.bin")
    m.add_argument("--tokenizer", required=True, help="the SentencePiece .model that wrote the shards")
    m.add_argument("--source", required=True, help="where the data came from, recorded in the manifest")
    m.add_argument("--fineweb", action="store_true",
                   help="mark the cache as the real FineWeb challenge data (is_fineweb: true)")
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            manifest = write_manifest(Path(args.dataset_dir), Path(args.tokenizer),
                                      source=args.source, is_fineweb=args.fineweb)
            print(f"wrote {Path(args.dataset_dir) / MANIFEST_NAME} fingerprint {manifest['fingerprint']}")
            return 0
        if args.dataset:
            dataset_dir = Path(args.data_root) / "datasets" / args.dataset
            tokenizer_path = args.tokenizer or os.environ.get("TOKENIZER_PATH") or None
        else:
            dataset_dir, tokenizer_path, _ = resolve_dataset(args.data_root)
            tokenizer_path = args.tokenizer or tokenizer_path
        if shard_report(dataset_dir, rehash=not args.fast):
            return 1
        report = verify_cache(dataset_dir, tokenizer_path, deep=not args.fast)
    except (CacheError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
