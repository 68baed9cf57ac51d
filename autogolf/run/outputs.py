"""What a sandboxed trainer leaves in its out dir, moved where the harness keeps it.

The trainer writes only to logs/work/<run_id>/ (OUT_DIR). After it ends, the harness moves
the three kinds of file it asks for -- the log <run_id>.txt, the artifact
<run_id>_mlx_model.int8.ptz and the raw weights <run_id>_*.npz -- into logs/, and deletes the
folder with everything else in it: nothing the trainer wrote elsewhere under its own name
(a cache, a second copy of the weights) outlives the run. Only regular files move: a
symbolic link named like the artifact would make the harness read whatever it points at.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path


def wanted(name: str, run_id: str) -> bool:
    rid = re.escape(run_id)
    return bool(re.fullmatch(rf"{rid}\.txt|{rid}_mlx_model\.int8\.ptz|{rid}_[^/]*\.npz", name))


def collect(out_dir: Path, logs_dir: Path, run_id: str) -> dict:
    """Move the wanted regular files; the record says what moved and what was left behind."""
    moved, refused, left = [], [], []
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return {"moved": [], "refused": [], "left": []}
    for entry in entries:
        if entry.name in (".home", ".tmp"):
            left += _names_below(Path(entry.path), out_dir)
            continue
        if not wanted(entry.name, run_id):
            left.append(entry.name)
            continue
        if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            refused.append(entry.name)
            continue
        shutil.move(entry.path, logs_dir / entry.name)
        moved.append(entry.name)
    return {"moved": moved, "refused": refused, "left": left[:20] + ([f"+{len(left) - 20} more"] if len(left) > 20 else [])}


def _names_below(folder: Path, root: Path) -> list[str]:
    """Files left in the private HOME and TMPDIR, MLX's kernel cache aside (kernelcache.py)."""
    out = []
    for dirpath, _, files in os.walk(folder):
        names = [str((Path(dirpath) / f).relative_to(root)) for f in files]
        out += [n for n in names if not n.startswith(".tmp/mlx/")]
    return out
