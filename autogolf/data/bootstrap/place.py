"""`just bootstrap` phase 4: the verified files linked (or atomically copied) into data/,
and the cache's manifest; and what a complete cache already in place looks like."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autogolf.data import cache
from autogolf.data.shards import list_shards, remove_partials
from autogolf.data.bootstrap.common import FINEWEB, rel, say
from autogolf.data.bootstrap.verify import Fetched


# --------------------------------------------------------------------------- phase 4: place

def link_or_copy(src: Path, dst: Path) -> str:
    """Put src at dst atomically: a hard link when possible (no extra disk), else a copy."""
    if dst.exists() and os.path.samefile(src, dst):
        return "kept"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError:  # another filesystem, or links not supported
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 24)
                fout.flush()
                os.fsync(fout.fileno())
            how = "copied"
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return how


def place_cache(fetched: Fetched, data_root: Path) -> tuple[Path, Path]:
    dataset_dir = data_root / "datasets" / FINEWEB
    tokenizer_dir = data_root / "tokenizers"
    say(f"[4/4] placing {len(fetched.shards)} shards in {rel(dataset_dir)} and the tokenizer "
        f"in {rel(tokenizer_dir)}")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    # A half-placed folder must never look finished: the manifest goes first, returns last.
    (dataset_dir / cache.MANIFEST_NAME).unlink(missing_ok=True)
    remove_partials(dataset_dir)
    wanted = {p.name for p in fetched.shards}
    for split in ("train", "val"):
        for old in list_shards(dataset_dir, split):
            if old.name not in wanted:
                old.unlink()
                say(f"  removed {old.name}: not part of the verified set")
    counts: dict[str, int] = {}
    for src in fetched.shards + fetched.tokenizer:
        dst = (tokenizer_dir if src in fetched.tokenizer else dataset_dir) / src.name
        how = link_or_copy(src, dst)
        counts[how] = counts.get(how, 0) + 1
    say("  " + ", ".join(f"{n} {how}" for how, n in sorted(counts.items())))
    return dataset_dir, tokenizer_dir / fetched.tokenizer[0].name
