"""`just bootstrap`: upstream parameter-golf at the pinned commit, then its sp1024 data cache.

Phases:
  1. upstream  `.upstream/parameter-golf` at the commit in benchmark/UPSTREAM_COMMIT.txt: a
               depth-1 fetch of that one commit when the server allows it, else the full
               history. A checkout with local modifications is never touched.
  2. fetch     upstream's own downloader, `data/cached_challenge_fineweb.py --variant sp1024
               --train-shards N`, run with this venv's Python. It uses huggingface_hub, so
               HF_ENDPOINT, HF_HOME, HF_TOKEN and MATCHED_FINEWEB_REPO_ID work as upstream.
  3. verify    every shard, the tokenizer and upstream's manifest.json. The downloader trusts
               any file that already exists and may copy non-atomically, so a file that fails
               is deleted and the downloader runs once more; a second failure stops bootstrap.
  4. place     hard links (or atomic copies) in data/datasets/fineweb10B_sp1024/ and
               data/tokenizers/, then autogolf_manifest.json with the cache's fingerprint.

When github or the data host cannot be reached, bootstrap says so in one line and builds the
offline default dataset instead (autogolf_synth_sp1024, NOT FineWeb). A host that answers but
serves something broken is an error, never a silent fallback. A second run with a complete
cache does only cheap local checks and fetches nothing.

Environment: AUTOGOLF_UPSTREAM_URL, AUTOGOLF_UPSTREAM_COMMIT, TRAIN_SHARDS (defaults for the
flags below), AUTOGOLF_GIT_TIMEOUT (seconds, hard cap per git command, default 1800),
AUTOGOLF_SYNTH_SCALE (shrinks the offline default, for tests), and huggingface_hub's own
HF_ENDPOINT, HF_HOME, HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT, HF_HUB_OFFLINE.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from autogolf import settings
from autogolf.data import cache
from autogolf.data.shards import ShardError
from autogolf.paths import REPO_ROOT as REPO, UPSTREAM_COMMIT_FILE
from autogolf.data.bootstrap.common import (BootstrapError, DEFAULT_TRAIN_SHARDS,
                                            DEFAULT_UPSTREAM_URL, FINEWEB, FULL_SHA, SYNTH,
                                            Unreachable, exclusive_lock, rel, say)
from autogolf.data.bootstrap.fetch import Hub, ensure_upstream, probe_hub, remove_stale_downloads
from autogolf.data.bootstrap.place import place_cache
from autogolf.data.bootstrap.verify import fetch_and_verify


# --------------------------------------------------------------------------- the whole

def current_fineweb(data_root: Path, train_shards: int, *, quiet: bool = False) -> dict | None:
    """The FineWeb cache's fast-check report if it is complete for `train_shards`, else None.
    Fast: manifest, tokenizer hash, shard headers and sizes; no network, no re-hash."""
    dataset_dir = data_root / "datasets" / FINEWEB
    if not (dataset_dir / cache.MANIFEST_NAME).is_file():
        return None
    try:
        report = cache.verify_cache(dataset_dir, deep=False)
        manifest = cache.read_manifest(dataset_dir)
    except (cache.CacheError, ShardError) as e:
        if not quiet:
            say(f"the existing cache fails the fast check ({e}); fetching again")
        return None
    files_val = (manifest.get("upstream") or {}).get("files_val")
    if not report["is_fineweb"] or report["splits"]["val"]["shards"] != files_val:
        return None
    if report["splits"]["train"]["shards"] < train_shards:
        if not quiet:
            say(f"the cache has {report['splits']['train']['shards']} train shards, "
                f"{train_shards} asked for; fetching the rest")
        return None
    return report


def bootstrap_fineweb(args) -> dict:
    ensure_upstream(args.upstream_dir, args.upstream_url, args.upstream_commit)
    report = current_fineweb(args.data_root, args.train_shards)
    if report is not None:
        say(f"[2/4] {FINEWEB} is already complete and verified (fast check: manifest, "
            f"tokenizer hash, shard headers and sizes); nothing to fetch")
        return report
    hub = Hub.from_env()
    probe_hub(hub)
    remove_stale_downloads(hub)
    fetched = fetch_and_verify(args.upstream_dir, args.train_shards, hub)
    dataset_dir, tokenizer_path = place_cache(fetched, args.data_root)
    say(f"  hashing {len(fetched.shards)} shards for the manifest fingerprint")
    cache.write_manifest(dataset_dir, tokenizer_path, source=hub.source, is_fineweb=True, extra={
        "upstream": {"url": args.upstream_url, "commit": args.upstream_commit,
                     "hf_repo_id": hub.repo_id, "hf_endpoint": hub.endpoint,
                     "files_val": fetched.files_val, "files_train_published": fetched.files_train,
                     "train_shards_requested": args.train_shards}})
    return cache.verify_cache(dataset_dir, tokenizer_path, deep=False)


def build_offline_default(data_root: Path) -> dict:
    """autogolf.data.synth's cache. AUTOGOLF_SYNTH_SCALE (default 1) shrinks it for tests and
    quick trials; synth records its size, so a later full-size run rebuilds it."""
    from autogolf.data import synth

    try:
        scale = float(settings.get("AUTOGOLF_SYNTH_SCALE"))
    except ValueError:
        scale = -1.0
    if not 0 < scale <= 1:
        raise BootstrapError(f"AUTOGOLF_SYNTH_SCALE={settings.get('AUTOGOLF_SYNTH_SCALE')!r}: "
                             f"must be a number in (0, 1]; unset it for the full-size corpus")
    sizes = {}
    if scale != 1:
        sizes = {"val_docs": max(8, round(synth.DEFAULT_VAL_DOCS * scale)),
                 "train_docs": max(50, round(synth.DEFAULT_TRAIN_DOCS * scale)),
                 "tokenizer_train_docs": max(50, round(synth.TOKENIZER_TRAIN_DOCS * scale))}
        say(f"AUTOGOLF_SYNTH_SCALE={scale}: a reduced synthetic corpus ({sizes})")
    _manifest, built = synth.build_synth(data_root, **sizes)
    if not built:
        say(f"{SYNTH} is already built and verified (fast check); nothing to do")
    return cache.verify_cache(data_root / "datasets" / SYNTH, deep=False)


def print_summary(report: dict, elapsed: float) -> None:
    fineweb = ("yes" if report["is_fineweb"] else
               "NO: offline synthetic stand-in; its val_bpb is not comparable with FineWeb results")
    say("summary")
    rows = [("dataset", f"{report['dataset']} ({rel(report['dataset_dir'])})"),
            ("FineWeb", fineweb),
            ("source", report["source"]),
            ("tokenizer", f"{rel(report['tokenizer_path'])} (vocab {report['vocab_size']})")]
    for split in ("train", "val"):
        s = report["splits"][split]
        rows.append((split, f"{s['shards']} shards, {s['tokens']:,} tokens"))
    rows += [("fingerprint", report["fingerprint"]), ("elapsed", f"{elapsed:.1f} s")]
    for key, value in rows:
        print(f"  {key:<12} {value}", flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pinned_commit() -> str:
    try:
        return UPSTREAM_COMMIT_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="just bootstrap",
        description="Fetch upstream parameter-golf at the pinned commit and its sp1024 data "
                    "cache (FineWeb) into data/; without network, build the offline default "
                    f"dataset {SYNTH} instead (not FineWeb).")
    parser.add_argument("--train-shards", type=positive_int,
                        default=os.environ.get("TRAIN_SHARDS", str(DEFAULT_TRAIN_SHARDS)),
                        help="FineWeb training shards to fetch, 100M tokens (200 MB) each; the "
                             "validation split is always fetched whole (env TRAIN_SHARDS; "
                             f"default {DEFAULT_TRAIN_SHARDS})")
    parser.add_argument("--upstream-url",
                        default=settings.get("AUTOGOLF_UPSTREAM_URL"),
                        help="git URL of parameter-golf (env AUTOGOLF_UPSTREAM_URL; default "
                             f"{DEFAULT_UPSTREAM_URL})")
    parser.add_argument("--upstream-commit",
                        default=settings.get("AUTOGOLF_UPSTREAM_COMMIT") or pinned_commit(),
                        help="full 40-hex commit to check out (env AUTOGOLF_UPSTREAM_COMMIT; "
                             "default: benchmark/UPSTREAM_COMMIT.txt)")
    parser.add_argument("--upstream-dir", type=Path, default=REPO / ".upstream" / "parameter-golf",
                        help="where the upstream checkout lives (default: .upstream/parameter-golf)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data",
                        help="folder receiving datasets/ and tokenizers/ (default: data)")
    parser.add_argument("--offline", action="store_true",
                        help=f"touch no network: build the offline default dataset {SYNTH} "
                             f"(synthetic, not FineWeb)")
    args = parser.parse_args(argv)
    args.upstream_commit = args.upstream_commit.strip().lower()
    if not args.offline and not FULL_SHA.match(args.upstream_commit):
        parser.error(f"--upstream-commit must be a full 40-hex commit id, got "
                     f"{args.upstream_commit!r} (check benchmark/UPSTREAM_COMMIT.txt)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        with ExitStack() as locks:
            locks.enter_context(exclusive_lock(args.data_root / ".bootstrap.lock"))
            if args.offline:
                say(f"--offline: building the offline default dataset {SYNTH} (not FineWeb)")
                report = build_offline_default(args.data_root)
            else:
                upstream_lock = args.upstream_dir.parent / ".bootstrap.lock"
                if upstream_lock.resolve() != (args.data_root / ".bootstrap.lock").resolve():
                    locks.enter_context(exclusive_lock(upstream_lock))
                try:
                    report = bootstrap_fineweb(args)
                except Unreachable as e:
                    report = current_fineweb(args.data_root, args.train_shards, quiet=True)
                    if report is not None:  # a verified FineWeb cache needs no network
                        say(f"upstream unreachable ({e}); keeping the verified {FINEWEB} cache")
                    else:
                        say(f"upstream unreachable ({e}); building the offline default "
                            f"dataset {SYNTH} (not FineWeb)")
                        report = build_offline_default(args.data_root)
    except (BootstrapError, cache.CacheError, ShardError) as e:
        print(f"bootstrap: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("bootstrap: interrupted; re-run `just bootstrap` to resume (finished files are "
              "kept, nothing partial is ever used)", file=sys.stderr, flush=True)
        return 130
    print_summary(report, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
