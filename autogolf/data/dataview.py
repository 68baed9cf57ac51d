"""The trainer's per-run view of the data: a folder the harness builds for each run and
points DATA_PATH at, holding the train shards (hard links, or symbolic links across file
systems) and, of the validation split, only the slice the profile selects on.

Validation token stream = the val shards concatenated. For a profile with VAL_MAX_TOKENS=N
the trainer scores windows from tokens [0, N+1) (N rounded down to whole sequences by the
trainer), so the view's single val shard holds exactly those N+1 tokens and nothing else:
the hidden holdout -- the last `holdout_tokens` + 1 tokens of the split -- and everything
between are not in the view, under any name. VAL_MAX_TOKENS=0 (PROFILE=full) links the
whole split and has no holdout (every validation token is already scored).

Hard links rather than symbolic ones, where the platform allows: a symbolic link names the
real cache folder, and from there every validation token.

Layout: logs/views/<run_id>/datasets/<dataset name>/ (the dataset's own name, which the
trainer logs), plus upstream's data/manifest.json linked at logs/views/<run_id>/manifest.json
when the cache has one. The harness removes the view when the run ends.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autogolf.data.cache import CacheError
from autogolf.data.shards import list_shards, read_header, read_tokens, write_shard


@dataclass
class Slices:
    """Validation slices in stream coordinates: [start, stop) token indices."""
    total: int  # tokens in the whole validation split
    selection: tuple[int, int]  # what the trainer sees and scores
    holdout: tuple[int, int] | None  # what only the harness scores
    holdout_note: str  # why there is no holdout, or how it was chosen


def plan_slices(total: int, val_max_tokens: int, holdout_tokens: int) -> Slices:
    """The selection is the first VAL_MAX_TOKENS (+1 target) tokens, or all of them; the
    holdout is the last `holdout_tokens` (+1) tokens, disjoint from the selection."""
    if val_max_tokens <= 0 or val_max_tokens + 1 >= total:
        return Slices(total, (0, total), None,
                      "none: the selection slice is the whole validation split")
    selection = (0, val_max_tokens + 1)
    if holdout_tokens <= 0:
        return Slices(total, selection, None, "none: the profile sets holdout_tokens = 0")
    start = max(total - holdout_tokens - 1, selection[1])
    if total - start < 2:
        return Slices(total, selection, None, "none: the validation split has no tokens left after the selection")
    note = f"the last {total - start - 1:,} validation tokens"
    if total - start - 1 < holdout_tokens:
        note += f" (asked {holdout_tokens:,}; the split is too small to hold both slices in full)"
    return Slices(total, selection, (start, total), note)


def val_stream(dataset_dir: Path) -> tuple[list[Path], list[int]]:
    files = list_shards(dataset_dir, "val")
    if not files:
        raise CacheError(f"{dataset_dir}: no validation shards; re-run `just bootstrap` (or `just corpus SRC`)")
    return files, [read_header(f) for f in files]


def read_val_range(dataset_dir: Path, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of the concatenated validation split, read from the real cache."""
    files, counts = val_stream(dataset_dir)
    parts, offset = [], 0
    for path, n in zip(files, counts):
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            parts.append(np.array(read_tokens(path, mmap=True)[lo:hi]))
        offset += n
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _link(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hard"
    except OSError:  # another file system, or links not allowed: a symbolic link instead
        os.symlink(src.resolve(), dst)
        return "symbolic"


def build_view(dataset_dir: Path, view_root: Path, val_max_tokens: int, holdout_tokens: int) -> tuple[Path, dict]:
    """Build the view; return (the folder to use as DATA_PATH, the ledger's record of it)."""
    try:
        return _build_view(Path(dataset_dir), Path(view_root), val_max_tokens, holdout_tokens)
    except OSError as e:  # a full disk or a read-only logs/: say so; the run is recorded
        raise CacheError(f"{view_root}: could not build the run's data view ({e}); free disk space "
                         f"or make logs/ writable, then run again") from e


def _build_view(dataset_dir: Path, view_root: Path, val_max_tokens: int, holdout_tokens: int) -> tuple[Path, dict]:
    files, counts = val_stream(dataset_dir)
    slices = plan_slices(sum(counts), val_max_tokens, holdout_tokens)
    shutil.rmtree(view_root, ignore_errors=True)
    view = Path(view_root) / "datasets" / dataset_dir.name
    view.mkdir(parents=True)
    links = set()
    train = list_shards(dataset_dir, "train")
    for path in train:
        links.add(_link(path, view / path.name))
    if slices.selection == (0, slices.total):
        val_files = []
        for path in files:
            links.add(_link(path, view / path.name))
            val_files.append(path.name)
    else:
        write_shard(view / "fineweb_val_000000.bin", read_val_range(dataset_dir, *slices.selection))
        val_files = ["fineweb_val_000000.bin (written: the selection slice only)"]
    upstream_manifest = dataset_dir.resolve().parents[1] / "manifest.json"
    if upstream_manifest.is_file():
        _link(upstream_manifest, Path(view_root) / "manifest.json")
    record = {
        "dir": str(view), "links": sorted(links) or ["none"],
        "train_shards": [p.name for p in train], "val_files": val_files,
        "val_total_tokens": slices.total,
        "selection": {"start": slices.selection[0], "stop": slices.selection[1],
                      "tokens": slices.selection[1] - slices.selection[0] - 1},
        "holdout": None if slices.holdout is None else
        {"start": slices.holdout[0], "stop": slices.holdout[1], "tokens": slices.holdout[1] - slices.holdout[0] - 1},
        "holdout_note": slices.holdout_note,
    }
    return view, record


def link_targets(view_root: Path) -> list[Path]:
    """The real files the view's symbolic links name (a sandbox must let the trainer read
    them, and nothing else of the cache); none where the view is all hard links."""
    out = []
    for dirpath, _, files in os.walk(view_root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                out.append(path.resolve())
    return out


def remove_view(view_root: Path) -> None:
    shutil.rmtree(view_root, ignore_errors=True)
