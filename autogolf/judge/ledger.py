"""The run ledger: `logs/runs.jsonl`, one JSON object per benchmark run, append-only.

Three kinds of line ("record"; a line without one is a "run" line, as older ledgers wrote):
  start   written the moment a run starts: run_id, started_at, profile, harness {pid, host,
          create_time}. So a run whose orchestrator is killed with SIGKILL, or whose machine
          loses power, is still known.
  run     its result, exactly one per run, whatever happened (ok, crash, timeout, killed,
          cap_violation, integrity_failed, over_budget, interrupted, lock_timeout, data_error, config_error, harness_error,
          or lost: written by `reconcile` for a start whose harness died without a result).
  checks  the outcome of autoresearch.checks.sh for a run: run_id, passed, problems, at.
`fold` turns the lines into one dict per run, in the order the runs started, with its
checks attached; `runs(path)` does both and is what readers use. Nothing is lost to a
`git checkout`/`git clean` (logs/ is git-ignored) or to a crash.

Appends are safe when several runs finish at once: O_APPEND, one write() of one whole
line, under an flock on the ledger file. A reader skips lines that do not parse (a
half-written line from a machine crash) and says how many it skipped.

Row fields (the orchestrator, autogolf/run/orchestrator.py, fills them):
  run_id, status, exit_reason, returncode, started_at, ended_at, wall_seconds, profile,
  settings (the resolved trainer environment), git {commit, dirty, diff_sha256, untracked},
  trainer {path, sha256, bytes, lines}, dataset {name, fingerprint, is_fineweb, dir},
  upstream_commit, machine {hostname, platform, python, cpu_count, memory_bytes}, backend,
  mlx_version, metrics {name: value}, timing {...}, log_path, console_path,
  shard_check {hashed, hashed_bytes, seconds, shards}, data_view {dir, links, train_shards,
  val_files, selection, holdout, ...} (autogolf/data/dataview.py), harness_score {val_bpb,
  val_loss, tokens, bytes, trainer_val_bpb, abs_diff, tolerance, probe, artifact_only,
  seconds, error?} and holdout {val_bpb, tokens, slice, seconds} (autogolf/measure/score.py),
  budget {kind, value, variable, source}, verdict {call, delta, noise, ...},
  restored_from_head {files, removed} (harness files the run restored from HEAD before it
  started, under the loop: autogolf/run/orchestrator.py), and for
  REPEATS=n repeat {group, index, of, seed} (the last one also repeats {...}); see
  autogolf/judge/ and autogolf/run/budget.py.

CLI: python -m autogolf.judge.ledger [--last N] [--path logs/runs.jsonl] [--repo .]  (reconciles lost
runs first; `*` marks a new best kept run: see best_markers)
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
import time
from pathlib import Path

from autogolf.judge import verdict
from autogolf.paths import REPO_ROOT

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


# --------------------------------------------------------------------------- runs from lines

def record_kind(row: dict) -> str:
    return row.get("record") or "run"


def harness_identity() -> dict:
    """Who is running this benchmark: enough to tell later whether it is still alive (a pid
    alone is not: pids are reused, so the process's start time goes with it)."""
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(),
            "create_time": round(psutil.Process().create_time(), 3)}


def harness_alive(harness: dict | None) -> bool:
    """True unless we can tell the run's orchestrator is gone. A run started on another host
    is assumed alive (this machine cannot see it)."""
    import psutil

    if not harness or harness.get("host") != socket.gethostname():
        return True
    try:
        proc = psutil.Process(int(harness["pid"]))
        return abs(proc.create_time() - float(harness.get("create_time", 0))) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def append_start(run_id: str, path: Path, **facts) -> dict:
    row = {"record": "start", "run_id": run_id, "status": "running",
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "harness": harness_identity(), **facts}
    append(row, path)
    return row


def append_checks(run_id: str, passed: bool, problems: list[str], path: Path) -> None:
    append({"record": "checks", "run_id": run_id, "passed": bool(passed), "problems": list(problems),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, path)


def fold(rows: list[dict], alive=harness_alive) -> list[dict]:
    """One dict per run, in the order the runs started: its result line (or, while there is
    none, its start line with status "running", or "lost" when its harness is gone), with
    "checks" set to the last checks line for it (None when the checks never ran)."""
    runs: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    for row in rows:
        run_id = row.get("run_id")
        if not isinstance(run_id, str):
            continue
        kind = record_kind(row)
        if kind == "checks":
            checks[run_id] = {k: row.get(k) for k in ("passed", "problems", "at")}
        elif kind == "start":
            runs.setdefault(run_id, dict(row))
        elif kind == "run":
            start = runs.get(run_id)
            merged = dict(start) if start and record_kind(start) == "start" else {}
            merged.update(row)
            runs[run_id] = merged
    out = []
    for run_id, run in runs.items():
        run = dict(run)
        if record_kind(run) == "start" and not alive(run.get("harness")):
            run["status"] = "lost"
            run["exit_reason"] = LOST_REASON
        run["checks"] = checks.get(run_id)
        out.append(run)
    return out


LOST_REASON = ("the harness died before it wrote a result (kill -9, a closed session or power "
               "loss); the trainer died with it")


def reconcile(path: Path) -> list[dict]:
    """Write a "lost" result line for every started run whose harness is gone, so the ledger
    says so for good (`fold` would only infer it). Returns the lines written."""
    rows, _ = read(path)
    written = []
    for run in fold(rows):
        if run.get("status") == "lost" and record_kind(run) == "start":
            row = {k: v for k, v in run.items() if k not in ("record", "checks")}
            row.update(record="run", status="lost", exit_reason=LOST_REASON,
                       reconciled_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            log = row.get("console_path")
            if log and (REPO_ROOT / log).is_file():
                tail = (REPO_ROOT / log).read_text(encoding="utf-8", errors="replace").splitlines()[-3:]
                row["last_output"] = tail
            append(row, path)
            written.append(row)
    return written


def runs(path: Path) -> list[dict]:
    """The runs in a ledger file, folded (see `fold`)."""
    rows, _ = read(path)
    return fold(rows)


# --------------------------------------------------------------------------- facts for a row

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


def best_markers(rows: list[dict], in_history: set[str]) -> list[bool]:
    """True on the row that closes a kept experiment (verdict.is_kept: honest, VERDICT keep,
    trainer in HEAD's history; `in_history` is verdict.kept_trainer_hashes) whose val_bpb
    beat every earlier kept experiment of its comparable set (verdict.comparison_key): so
    the marker, the VERDICT's comparison, `just status` and `just report` agree on the best."""
    best: dict[str, float] = {}
    marked: set[str] = set()
    for exp in verdict.experiments(rows):
        if verdict.is_kept(exp, in_history) and exp.val_bpb < best.get(exp.key, math.inf):
            best[exp.key] = exp.val_bpb
            marked.add(exp.run_id)
    return [str(row.get("run_id")) in marked for row in rows]


def format_table(rows: list[dict], in_history: set[str], last: int | None = None) -> str:
    marks = best_markers(rows, in_history)  # over the whole history, then cut
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
        status = row.get("status", "?")
        if status == "ok" and (row.get("checks") or {}).get("passed") is False:
            status = "checks_failed"
        lines.append(
            f"{str(row.get('run_id', '?'))[:34]:<34} {str(status):<13} "
            f"{str(row.get('profile', '-')):<8} {dataset[:22]:<22} "
            f"{(f'{value:.6f}' if value is not None else '-'):>10}{'*' if best else ' '} "
            f"{(f'{total:,}' if isinstance(total, int) else '-'):>11}  "
            f"{(f'{wall:.0f}' if isinstance(wall, (int, float)) else '-')}")
    lines.append("* = a new best among kept runs (VERDICT keep, checks passed, trainer committed in "
                 "HEAD's history) of its comparable set (profile, dataset, budget, machine, settings)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.judge.ledger",
                                     description="Show the benchmark run ledger as a table.")
    parser.add_argument("--path", type=Path, default=None,
                        help=f"ledger file (default: {default_path()})")
    parser.add_argument("--last", type=int, default=20,
                        help="show only the last N runs (default 20; 0 = all)")
    parser.add_argument("--json", action="store_true", help="print the selected rows as JSON lines instead")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT,
                        help="git checkout whose history says which trainer versions were kept")
    args = parser.parse_args(argv)
    path = args.path or default_path()
    for row in reconcile(path):
        print(f"ledger: run {row['run_id']} recorded as lost: {LOST_REASON}", file=sys.stderr)
    lines, skipped = read(path)
    rows = fold(lines)
    if not rows:
        print(f"{path}: no runs recorded yet" + (f" ({skipped} corrupt lines skipped)" if skipped else ""))
        return 0
    if args.json:
        for row in rows[-args.last:] if args.last else rows:
            print(json.dumps(row))
    else:
        print(format_table(rows, verdict.kept_trainer_hashes(args.repo), args.last or None))
    if skipped:
        print(f"warning: skipped {skipped} corrupt or partial line(s) in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
