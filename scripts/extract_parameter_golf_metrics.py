#!/usr/bin/env python3
"""Print pi-autoresearch `METRIC name=value` lines from a Parameter Golf training log.

Works on our trainer's logs and on upstream's (MLX logs that start with the script's
source, PyTorch console logs). Exits 1, with the reason on stderr and no val_bpb, when the
log has no post-round-trip score (crashed, killed or truncated run).

    python scripts/extract_parameter_golf_metrics.py logs/<run_id>.txt \\
        [--cache-dir data/datasets/<name>] [--code-bytes N | --trainer PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from autogolf.measure import logparse, metrics  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="the trainer's log file (OUT_DIR/<run_id>.txt or a console capture)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="dataset folder the run trained on (data/datasets/<name>); enables "
                             "train_shards_touched_est and train_shard_coverage_pct")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--code-bytes", type=int, default=None,
                      help="code size in bytes, used when the log has no `Code size:` line")
    code.add_argument("--trainer", type=Path, default=None,
                      help="the training script that wrote the log; its byte size is the code "
                           "size when the log has no `Code size:` line")
    args = parser.parse_args(argv)

    if not args.log.is_file():
        print(f"error: {args.log}: no such log file", file=sys.stderr)
        return 2
    code_bytes = args.code_bytes
    if args.trainer is not None:
        if not args.trainer.is_file():
            print(f"error: {args.trainer}: no such trainer file", file=sys.stderr)
            return 2
        code_bytes = args.trainer.stat().st_size  # UTF-8 bytes of the script, as upstream counts
    shard_tokens = None
    if args.cache_dir is not None:
        try:
            shard_tokens = metrics.train_shard_sizes(args.cache_dir)
        except ValueError as e:  # ShardError / CacheError name the file and the fix
            print(f"warning: {e}", file=sys.stderr)

    parsed = logparse.parse_file(args.log)
    result = metrics.compute(parsed, code_bytes=code_bytes, train_shard_tokens=shard_tokens)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in metrics.metric_lines(result.metrics):
        print(line)
    if not result.ok:
        print(f"error: {args.log}: {result.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
