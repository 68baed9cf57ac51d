"""Cheap verification of the cache's shards on every run (and in the checks after it).

Hashing gigabytes of train shards before every run would cost more than some runs, and
checking sizes alone misses a changed byte. So each shard's (size, mtime_ns, inode) is
recorded next to the sha256 it was last verified to have, in
`<dataset_dir>/autogolf_shard_state.json`; a shard whose stat still matches is `verified`
without being read, and any shard whose stat changed is re-hashed in full and compared
with the cache manifest. An edit in place changes mtime; a replacement by another file
changes the inode (and usually mtime). What this cannot see is a deliberate edit that
then restores the mtime with `touch -d` on the same inode: `just verify-data` re-hashes
everything and catches that too.

States: verified (stat unchanged since a full hash matched the manifest, or hashed now and
matching), changed (sha256 differs from the manifest), missing (listed, not on disk).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from autogolf.data.cache import CacheError, read_manifest
from autogolf.fsutil import atomic_write, file_sha256

STATE_NAME = "autogolf_shard_state.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_state(dataset_dir: Path) -> dict:
    try:
        state = json.loads((dataset_dir / STATE_NAME).read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # no state yet, or unreadable: everything is hashed once more


def _save_state(dataset_dir: Path, state: dict) -> str | None:
    try:
        atomic_write(dataset_dir / STATE_NAME, (json.dumps(state, indent=1) + "\n").encode("utf-8"))
        return None
    except OSError as e:  # a read-only cache still verifies; it just re-hashes next time
        return f"could not record shard state in {dataset_dir / STATE_NAME} ({e}); shards will be re-hashed"


def shard_states(dataset_dir: Path, *, splits: tuple[str, ...] = ("train", "val"),
                 rehash: bool = False) -> dict:
    """Check every shard of the given splits against the manifest. Returns
    {"shards": {name: {"state", "how"}}, "hashed": [names], "hashed_bytes", "seconds", "warning"}.
    `rehash` hashes every shard whatever its stat says (`just verify-data`)."""
    dataset_dir = Path(dataset_dir)
    start = time.monotonic()
    manifest = read_manifest(dataset_dir)
    state = _load_state(dataset_dir)
    out: dict = {"shards": {}, "hashed": [], "hashed_bytes": 0}
    for name, entry in sorted(manifest["shards"].items()):
        if not name.startswith(tuple(f"fineweb_{s}_" for s in splits)):
            continue
        path = dataset_dir / name
        if not path.is_file():
            out["shards"][name] = {"state": "missing", "how": "listed in the manifest, not on disk"}
            state.pop(name, None)
            continue
        key = _stat_key(path)
        seen = state.get(name) or {}
        if not rehash and seen.get("stat") == key and seen.get("sha256") == entry["sha256"]:
            out["shards"][name] = {"state": "verified", "how": f"unchanged since hashed at {seen.get('at')}"}
            continue
        sha = file_sha256(path)
        out["hashed"].append(name)
        out["hashed_bytes"] += key[0]
        if sha == entry["sha256"]:
            state[name] = {"stat": key, "sha256": sha, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            out["shards"][name] = {"state": "verified", "how": "sha256 hashed now, matches the manifest"}
        else:
            state.pop(name, None)
            out["shards"][name] = {"state": "changed",
                                   "how": f"sha256 {sha[:12]}... but the manifest has {entry['sha256'][:12]}..."}
    out["warning"] = _save_state(dataset_dir, state) if out["hashed"] or not (dataset_dir / STATE_NAME).is_file() else None
    out["seconds"] = round(time.monotonic() - start, 4)
    return out


def problem(dataset_dir: Path, result: dict) -> str | None:
    """One line naming the first changed or missing shard and the fix, or None."""
    bad = [(n, s) for n, s in result["shards"].items() if s["state"] != "verified"]
    if not bad:
        return None
    name, s = bad[0]
    more = f" ({len(bad)} shards in all)" if len(bad) > 1 else ""
    return (f"{Path(dataset_dir) / name}: shard {s['state']} ({s['how']}){more}; the data is not what "
            f"the cache manifest promises: delete the shard and re-run `just bootstrap` (or `just corpus "
            f"SRC`), then `just verify-data`")


def require_verified(dataset_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """shard_states, raising CacheError (one line: shard and fix) unless all are verified."""
    result = shard_states(dataset_dir, splits=splits)
    message = problem(dataset_dir, result)
    if message:
        raise CacheError(message)
    return result
