"""Upstream's train_gpt_mlx.py at the pinned commit (benchmark/UPSTREAM_COMMIT.txt): the
snapshot our trainer is a diff of (`just upstream-diff`, scripts/upstream_fidelity.py).

Where its text comes from, first found wins:
  1. the bootstrapped checkout, .upstream/parameter-golf (`just bootstrap`, online), read
     at the pinned commit with git;
  2. this repository's own git objects: the project committed upstream's file verbatim
     once, so its blob (UPSTREAM_TRAINER_BLOB, git's content hash) is in the history of
     every clone -- this works offline, with no network and no bootstrap.
Either way the text is checked against UPSTREAM_TRAINER_BLOB, so a stale or edited copy is
never taken for the snapshot.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import subprocess
import sys

from autogolf.paths import REPO_ROOT, TRAINER, TRAINER_RELPATH, UPSTREAM_COMMIT_FILE, UPSTREAM_DIR

# git hash-object of train_gpt_mlx.py at upstream commit 4908dc46f (the pinned commit).
# Re-pinning upstream means updating this id along with benchmark/UPSTREAM_COMMIT.txt.
UPSTREAM_TRAINER_BLOB = "7b9e935aa64451dcb67c7542e87ab277721f5c81"
UPSTREAM_TRAINER_BYTES = 50_195  # its size: the code bytes an unchanged upstream submission counts
UPSTREAM_TRAINER_NAME = "train_gpt_mlx.py"


class UpstreamMissing(Exception):
    """Upstream's trainer cannot be found; the message says how to get it."""


def blob_id(data: bytes) -> str:
    """git's object id of a file with these bytes (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git(args: list[str], cwd) -> bytes | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def pinned_commit() -> str:
    return UPSTREAM_COMMIT_FILE.read_text(encoding="utf-8").split()[0]


def upstream_bytes() -> tuple[bytes, str]:
    """(upstream's trainer at the pinned commit, where it was read from)."""
    commit = pinned_commit()
    if (UPSTREAM_DIR / ".git").exists():
        data = _git(["show", f"{commit}:{UPSTREAM_TRAINER_NAME}"], UPSTREAM_DIR)
        if data is not None and blob_id(data) == UPSTREAM_TRAINER_BLOB:
            return data, f"{UPSTREAM_DIR} at {commit[:9]}"
    data = _git(["cat-file", "blob", UPSTREAM_TRAINER_BLOB], REPO_ROOT)
    if data is not None and blob_id(data) == UPSTREAM_TRAINER_BLOB:
        return data, f"git object {UPSTREAM_TRAINER_BLOB[:9]} of this repository"
    raise UpstreamMissing(
        f"upstream's {UPSTREAM_TRAINER_NAME} at {commit[:9]} is neither in {UPSTREAM_DIR} nor in this "
        f"repository's git objects (blob {UPSTREAM_TRAINER_BLOB[:9]}; a shallow or squashed clone lacks it); "
        f"run `just bootstrap` online, or `git fetch --unshallow`")


def upstream_source() -> str:
    return upstream_bytes()[0].decode("utf-8")


def trainer_diff(trainer_text: str, upstream_text: str, context: int = 3) -> str:
    """`diff -u` of upstream's file (a/) against ours (b/), in the form `git apply`/`patch -p1`
    read from the repository root."""
    lines = difflib.unified_diff(upstream_text.splitlines(keepends=True), trainer_text.splitlines(keepends=True),
                                 f"a/{TRAINER_RELPATH}", f"b/{TRAINER_RELPATH}", n=context)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autogolf.measure.upstream",
                                description="The trainer's diff against upstream's train_gpt_mlx.py at the "
                                            "pinned commit (`just upstream-diff`).")
    p.add_argument("--upstream", action="store_true", help="print upstream's file itself instead of the diff")
    p.add_argument("-U", "--context", type=int, default=3, help="lines of context (default 3)")
    args = p.parse_args(argv)
    try:
        data, where = upstream_bytes()
    except UpstreamMissing as e:
        print(f"upstream-diff: {e}", file=sys.stderr)
        return 2
    if args.upstream:
        sys.stdout.write(data.decode("utf-8"))
        return 0
    ours = TRAINER.read_text(encoding="utf-8")
    diff = trainer_diff(ours, data.decode("utf-8"), args.context)
    sys.stdout.write(diff)
    changed = sum(1 for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---")))
    print(f"upstream-diff: against upstream {pinned_commit()[:9]}: {changed} lines changed; ours {len(ours.encode('utf-8')):,} bytes, upstream "
          f"{len(data):,} (read from {where})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
