"""Protected files: the harness and evaluation data hashed into a manifest,
`logs/protected.json`, so any change to them is seen (the checks' part 5, autogolf/judge/checks.py).

The orchestrator records the manifest on first use and puts its digest, and a digest of the
harness files, in every ledger row; the checks compare the files with it after each run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

from autogolf.fsutil import atomic_write, file_sha256
from autogolf.judge import ledger
from autogolf.paths import REPO_ROOT

MANIFEST_RELPATH = Path("logs") / "protected.json"

# Protected paths, relative to the repository root. "dir/" = every file below it.
HARNESS_PATTERNS = ("autoresearch.sh", "autoresearch.checks.sh", "README.md", "Justfile",
                    ".gitignore", "scripts/", "autogolf/", "benchmark/UPSTREAM_COMMIT.txt",
                    "pyproject.toml", "uv.lock",
                    # the shims that make pi-autoresearch run our benchmark and checks, and the
                    # agent's pins (autoresearch.md and autoresearch.ideas.md are the agent's)
                    ".auto/measure.sh", ".auto/checks.sh", "agent/package.json",
                    "agent/package-lock.json", "agent/tools.json",
                    # the guard pi loads: an edit of it would take effect at pi's next start
                    "agent/guard/")
DATA_PATTERNS = ("data/datasets/*/fineweb_val_*.bin", "data/datasets/*/autogolf_manifest.json",
                 "data/tokenizers/*.model", "data/tokenizers/*.vocab", ".upstream/")
# Never protected: VCS and tool caches (huggingface_hub keeps lock and metadata files under
# .cache/ that change on every download), partial downloads, and training shards -- upstream's
# downloader leaves gigabytes of them in .upstream/parameter-golf/data; they are not
# evaluation data, and hashing them on every check would cost seconds.
_SKIP_PARTS = {".git", "__pycache__", ".pytest_cache", ".cache"}
_SKIP_SUFFIXES = (".pyc", ".partial", ".incomplete", ".lock")
_SKIP_NAME = re.compile(r"^fineweb_train_\d+\.bin$")


# --------------------------------------------------------------------------- protected files

def _is_skipped(path: Path) -> bool:
    # by name only: folders are pruned during the walk, so a repository that itself lives
    # under, say, ~/.cache/ is still protected
    return path.name.endswith(_SKIP_SUFFIXES) or bool(_SKIP_NAME.match(path.name))


def expand(patterns: list[str], root: Path) -> list[Path]:
    """Files matched by the patterns (relative to root, or absolute), sorted, deduplicated."""
    found: set[Path] = set()
    for pattern in patterns:
        base = Path(pattern) if Path(pattern).is_absolute() else root / pattern
        if pattern.endswith("/"):
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS]
                found.update(Path(dirpath) / f for f in filenames)
        elif any(c in pattern for c in "*?["):
            found.update(Path(p) for p in glob.glob(str(base)) if Path(p).is_file())
        elif base.is_file():
            found.add(base)
    return sorted(p for p in found if not _is_skipped(p) and p.is_file())


def _key(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)  # outside the repository (a DATA_PATH elsewhere): absolute


def hash_files(paths: list[Path], root: Path) -> dict[str, str]:
    return {_key(p, root): file_sha256(p) for p in paths}


def harness_digest(root: Path = REPO_ROOT) -> str:
    """One sha256 over the harness files as they are now (recorded in every ledger row)."""
    digest = hashlib.sha256()
    for name, sha in hash_files(expand(list(HARNESS_PATTERNS), root), root).items():
        digest.update(f"{name} {sha}\n".encode())
    return digest.hexdigest()


def data_patterns_for(dataset_dir: Path | None, tokenizer_path: Path | None, root: Path) -> list[str]:
    """The repository's data patterns, plus the run's own dataset when it lives elsewhere."""
    patterns = list(DATA_PATTERNS)
    if dataset_dir is not None:
        d = Path(dataset_dir).resolve()
        if _key(d, root.resolve()) == str(d):  # outside the repository
            patterns += [str(d / "fineweb_val_*.bin"), str(d / "autogolf_manifest.json")]
    if tokenizer_path is not None:
        t = Path(tokenizer_path).resolve()
        if _key(t, root.resolve()) == str(t):
            patterns.append(str(t))
    return patterns


# --------------------------------------------------------------------------- drift from HEAD

def is_harness_path(rel: str) -> bool:
    """Whether a repository-relative path is a harness file (HARNESS_PATTERNS)."""
    rel = rel.strip().rstrip("/") + ("/" if rel.strip().endswith("/") else "")
    return any(rel == p or (p.endswith("/") and (rel.startswith(p) or rel + "/" == p))
               for p in HARNESS_PATTERNS)


def _git_lines(root: Path, *args: str) -> list[str] | None:
    """NUL-separated output of a git command (None when it fails: not a git checkout).
    Literal pathspecs, so a file named with * or ? is only itself."""
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                         env=dict(os.environ, GIT_LITERAL_PATHSPECS="1"), timeout=60)
    if out.returncode != 0:
        return None
    return [part for part in out.stdout.decode("utf-8", errors="surrogateescape").split("\0") if part]


def head_drift(root: Path = REPO_ROOT) -> tuple[list[str], list[str]]:
    """(changed, added): harness files whose content (index or working tree) differs from
    HEAD's -- modified, deleted or retyped -- and files in harness locations that HEAD does
    not have (untracked, or staged as new). Both empty outside a git checkout or without a
    HEAD. Data files are not in git: the manifest and the checks watch those."""
    pathspecs = [p.rstrip("/") for p in HARNESS_PATTERNS]
    status = _git_lines(root, "diff", "HEAD", "--name-status", "-z", "--no-renames", "--", *pathspecs)
    untracked = _git_lines(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *pathspecs)
    if status is None or untracked is None:
        return [], []
    changed, added = [], list(untracked)
    for code, name in zip(status[0::2], status[1::2]):  # "-z --name-status": code NUL name NUL
        (added if code.startswith("A") else changed).append(name)
    return sorted(set(changed)), sorted(set(added))


def restore_command(changed: list[str], added: list[str]) -> str:
    """The one shell command that puts the harness back to HEAD: the changed files checked
    out from HEAD (index and working tree), the added ones removed (from the index too)."""
    import shlex

    parts = []
    if changed:
        parts.append("git checkout HEAD -- " + " ".join(shlex.quote(n) for n in changed))
    if added:
        parts.append("git rm -q -r -f --cached --ignore-unmatch -- " + " ".join(shlex.quote(n) for n in added)
                     + " && rm -f -- " + " ".join(shlex.quote(n) for n in added))
    return " && ".join(parts)


def restore_from_head(root: Path, changed: list[str], added: list[str]) -> str | None:
    """Do what restore_command says, with git. None when done, else git's complaint."""
    steps = []
    if changed:
        steps.append(["checkout", "HEAD", "--", *changed])
    if added:
        steps.append(["rm", "-q", "-r", "-f", "--cached", "--ignore-unmatch", "--", *added])
    for args in steps:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             env=dict(os.environ, GIT_LITERAL_PATHSPECS="1"), timeout=120)
        if out.returncode != 0:
            return f"git {' '.join(args[:2])} failed: {out.stderr.strip()[:300]}"
    for name in added:
        path = Path(root) / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    return None


def manifest_path(root: Path = REPO_ROOT) -> Path:
    return Path(root) / MANIFEST_RELPATH


def manifest_digest(root: Path = REPO_ROOT) -> str | None:
    path = manifest_path(root)
    return file_sha256(path) if path.is_file() else None


def _git_head(root: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def record_manifest(root: Path = REPO_ROOT, dataset_dir: Path | None = None,
                    tokenizer_path: Path | None = None) -> dict:
    """Hash every protected file now and write logs/protected.json (atomically)."""
    root = Path(root)
    patterns = list(HARNESS_PATTERNS) + data_patterns_for(dataset_dir, tokenizer_path, root)
    manifest = {
        "version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_commit": _git_head(root),
        "patterns": patterns,
        "files": hash_files(expand(patterns, root), root),
    }
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return manifest


def ensure_manifest(root: Path = REPO_ROOT, dataset_dir: Path | None = None,
                    tokenizer_path: Path | None = None) -> tuple[dict | None, str]:
    """(manifest, message). Records it on first use; refuses to re-record one that a
    previous run already relied on (its digest is in the ledger) -- that is a deletion."""
    path = manifest_path(root)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), ""
        except ValueError:
            return None, f"{path}: unreadable protected-file manifest; re-baseline with `just protect`"
    rows, _ = ledger.read(ledger.default_path(root))
    if any(row.get("protected_digest") for row in rows):
        return None, (f"{path} is missing, but earlier runs in {ledger.default_path(root)} recorded "
                      f"one: it was deleted. Restore the protected files (`git checkout -- .`), "
                      f"then re-baseline deliberately with `just protect`")
    manifest = record_manifest(root, dataset_dir, tokenizer_path)
    return manifest, (f"recorded {len(manifest['files'])} protected files in {path} "
                      f"(first use; `just protect` re-records)")


def check_protected(root: Path = REPO_ROOT) -> list[str]:
    root = Path(root)
    manifest, message = ensure_manifest(root)
    if manifest is None:
        return [message]
    if message:
        print(f"checks: {message}")
    recorded: dict[str, str] = manifest.get("files", {})
    current_paths = expand(manifest.get("patterns", []), root)
    current = {_key(p, root): p for p in current_paths}
    problems = []
    for name, sha in sorted(recorded.items()):
        path = current.get(name)
        if path is None:
            problems.append(f"protected file {name} is missing; restore it (`git checkout -- {name}` "
                            f"for harness files, `just bootstrap` / `just verify-data` for data)")
        elif file_sha256(path) != sha:
            problems.append(f"protected file {name} was modified; the evaluation, data and harness "
                            f"are off limits: restore it (`git checkout -- {name}` for harness "
                            f"files) and change only benchmark/train_gpt_mlx.py")
    for name in sorted(set(current) - set(recorded)):
        problems.append(f"new file {name} inside a protected location; remove it (only "
                        f"benchmark/train_gpt_mlx.py may change)")
    return problems
