"""The harness's integrity during one run: the harness files, the trainer file, and the
Python environment's start-up hooks, hashed before the trainer starts and again before the
artifact is scored. Any change -- a file edited and restored with its old mtime, a `.pth`
or `*customize.py` dropped into site-packages -- fails the run as integrity_failed, naming
the file. Content hashes, never mtimes: a restored mtime proves nothing.

Start-up hooks are what every Python process of this environment runs before its own code:
`*.pth` files in the site-packages folders (a line starting with `import` is executed) and
`sitecustomize.py` / `usercustomize.py` anywhere on the import path.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

from autogolf.fsutil import file_sha256
from autogolf.judge import protected


def startup_hooks() -> list[Path]:
    """Every `.pth` and `*customize.py` this interpreter's site machinery would run."""
    dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
    dirs |= {p for p in sys.path if p and Path(p).is_dir()}
    found: set[Path] = set()
    for d in sorted(dirs):
        base = Path(d)
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        found.update(p for p in entries if p.is_file() and (
            p.suffix == ".pth" or p.name in ("sitecustomize.py", "usercustomize.py")))
    return sorted(found)


def snapshot(repo_root: Path, trainer: Path) -> dict[str, str]:
    """{name: sha256} of the harness files, the trainer file and the start-up hooks."""
    files = protected.expand(list(protected.HARNESS_PATTERNS), repo_root) + startup_hooks() + [Path(trainer)]
    out = {}
    for path in files:
        try:
            out[_name(path, repo_root)] = file_sha256(path)
        except OSError:
            out[_name(path, repo_root)] = "unreadable"
    return out


def _name(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """`changed NAME` / `added NAME` / `removed NAME`, sorted."""
    out = [f"changed {n}" for n in sorted(before) if n in after and after[n] != before[n]]
    out += [f"added {n}" for n in sorted(set(after) - set(before))]
    out += [f"removed {n}" for n in sorted(set(before) - set(after))]
    return out


def failure(before: dict[str, str], repo_root: Path, trainer: Path) -> str:
    """The integrity_failed reason, or "" when nothing changed since `before`."""
    found = changes(before, snapshot(repo_root, trainer))
    if not found:
        return ""
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"harness integrity: {shown} while the run was going (harness files, the trainer and "
            f"the Python start-up hooks are hashed before the trainer and again before scoring)")
