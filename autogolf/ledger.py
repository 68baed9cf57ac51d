"""The run ledger: `logs/runs.jsonl`, one JSON object per benchmark run, append-only.

Every run the harness starts gets exactly one row, whatever happened to it (ok, crash,
timeout, killed, cap_violation, interrupted, lock_timeout, data_error, config_error,
harness_error), so no result is ever lost to a `git checkout`/`git clean` (logs/ is
git-ignored) or to a crash. The one exception is an orchestrator killed with SIGKILL, which
can write nothing (its trainer dies with it).

Appends are safe when several runs finish at once: O_APPEND, one write() of one whole
line, under an flock on the ledger file. A reader skips lines that do not parse (a
half-written line from a machine crash) and says how many it skipped.

Row fields (the orchestrator, autogolf/run.py, fills them):
  run_id, status, exit_reason, returncode, started_at, ended_at, wall_seconds, profile,
  settings (the resolved trainer environment), git {commit, dirty, diff_sha256, untracked},
  trainer {path, sha256, bytes, lines}, dataset {name, fingerprint, is_fineweb, dir},
  upstream_commit, machine {hostname, platform, python, cpu_count, memory_bytes}, backend,
  mlx_version, metrics {name: value}, timing {...}, log_path, console_path.

CLI: python -m autogolf.ledger [--last N] [--path logs/runs.jsonl]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LEDGER_NAME = "runs.jsonl"


def default_path(root: Path = REPO_ROOT) -> Path:
    return Path(root) / "logs" / LEDGER_NAME


# --------------------------------------------------------------------------- write / read

def append(row: dict, path: Path) -> None:
    """Append one row as one line, atomically with respect to other appenders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=str, allow_nan=False, separators=(",", ":")) + "\n"
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            data = b"\n" + data  # a torn line before us must not swallow our row
        written = os.write(fd, data)
        while written < len(data):  # regular files write it all; be safe anyway
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def read(path: Path) -> tuple[list[dict], int]:
    """(rows, number of lines skipped because they were corrupt or partial)."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows, skipped = [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    return rows, skipped


def last_row(path: Path) -> dict | None:
    rows, _ = read(path)
    return rows[-1] if rows else None


# --------------------------------------------------------------------------- facts for a row

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)


def git_info(root: Path = REPO_ROOT) -> dict:
    """Commit, dirty flag, and a sha256 of `git diff HEAD --binary` (binary-safe), so a
    result can be tied to the exact code even when it was never committed."""
    head = _git(root, "rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None, "untracked": None,
                "error": head.stderr.decode(errors="replace").strip()[:200]}
    diff = _git(root, "diff", "HEAD", "--binary").stdout
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").stdout
    untracked_names = [n for n in untracked.decode(errors="replace").split("\0") if n]
    return {
        "commit": head.stdout.decode().strip(),
        "dirty": bool(diff) or bool(untracked_names),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "untracked": untracked_names[:50],
    }


def machine_info() -> dict:
    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
    except ImportError:
        memory = None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
    }


# --------------------------------------------------------------------------- table

def _val_bpb(row: dict) -> float | None:
    value = (row.get("metrics") or {}).get("val_bpb")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_markers(rows: list[dict]) -> list[bool]:
    """True where a row set a new best val_bpb among earlier ok rows of the same profile
    and dataset (results from different profiles or data are not comparable)."""
    best: dict[tuple, float] = {}
    marks = []
    for row in rows:
        value = _val_bpb(row)
        key = (row.get("profile"), (row.get("dataset") or {}).get("fingerprint"))
        if row.get("status") == "ok" and value is not None and value < best.get(key, math.inf):
            best[key] = value
            marks.append(True)
        else:
            marks.append(False)
    return marks


def format_table(rows: list[dict], last: int | None = None) -> str:
    marks = best_markers(rows)  # over the whole history, then cut
    pairs = list(zip(rows, marks))
    if last:
        pairs = pairs[-last:]
    header = f"{'run':<34} {'status':<13} {'profile':<8} {'dataset':<22} {'val_bpb':>10}  {'total_bytes':>11}  wall_s"
    lines = [header, "-" * len(header)]
    for row, best in pairs:
        value = _val_bpb(row)
        total = (row.get("metrics") or {}).get("total_bytes")
        dataset = (row.get("dataset") or {}).get("name") or "-"
        wall = row.get("wall_seconds")
        lines.append(
            f"{str(row.get('run_id', '?'))[:34]:<34} {str(row.get('status', '?')):<13} "
            f"{str(row.get('profile', '-')):<8} {dataset[:22]:<22} "
            f"{(f'{value:.6f}' if value is not None else '-'):>10}{'*' if best else ' '} "
            f"{(f'{total:,}' if isinstance(total, int) else '-'):>11}  "
            f"{(f'{wall:.0f}' if isinstance(wall, (int, float)) else '-')}")
    lines.append("* = new best val_bpb for its profile and dataset")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.ledger",
                                     description="Show the benchmark run ledger as a table.")
    parser.add_argument("--path", type=Path, default=None,
                        help=f"ledger file (default: {default_path()})")
    parser.add_argument("--last", type=int, default=20,
                        help="show only the last N runs (default 20; 0 = all)")
    parser.add_argument("--json", action="store_true", help="print the selected rows as JSON lines instead")
    args = parser.parse_args(argv)
    path = args.path or default_path()
    rows, skipped = read(path)
    if not rows:
        print(f"{path}: no runs recorded yet" + (f" ({skipped} corrupt lines skipped)" if skipped else ""))
        return 0
    if args.json:
        for row in rows[-args.last:] if args.last else rows:
            print(json.dumps(row))
    else:
        print(format_table(rows, args.last or None))
    if skipped:
        print(f"warning: skipped {skipped} corrupt or partial line(s) in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
