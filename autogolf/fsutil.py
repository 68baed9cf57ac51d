"""Small file-system helpers shared by the data and harness modules."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write(path: Path, *chunks: bytes) -> None:
    """Write chunks to path so that a reader (or a crash) sees the old file or the whole
    new one, never a part: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 16 MiB chunks (shards are gigabytes; the chunk is even,
    as the data modules expect)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
