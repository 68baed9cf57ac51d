"""Bounded storage: which run artifacts stay in logs/, and which go.

Every run exports an int8+zlib artifact (about 10 MB for the baseline: 2 GB per 200 runs).
After each run the harness keeps the artifact of
  - each of the last KEEP_LAST runs (default 5; AUTOGOLF_KEEP_LAST),
  - every improving run: a kept run (autogolf/judge/verdict.is_kept) that set a new best
    val_bpb for its comparable set when it ran (the ledger's `*` marker), which includes the
    current best of each (a run not yet kept is among the last runs while pi decides),
and deletes the other runs' artifacts, plus raw-weight files (*.npz) of runs no longer
running (unless AUTOGOLF_KEEP_RAW_MODEL=1) and per-run data views (logs/views/<run_id>) left by runs that died. Logs,
console captures and the ledger are never deleted: every run stays fully described.
`python -m autogolf.run.storage --dry-run` lists what a prune would delete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from autogolf import settings
from autogolf.judge import ledger, verdict
from autogolf.paths import REPO_ROOT

ARTIFACT_SUFFIX = "_mlx_model.int8.ptz"
RAW_SUFFIX = "_mlx_model.npz"


def keep_last() -> int:
    raw = settings.get("AUTOGOLF_KEEP_LAST")
    try:
        return max(int(raw), 0)
    except ValueError:
        return 5


def artifacts_to_keep(runs: list[dict], last: int, in_history: set[str]) -> set[str]:
    """run_ids whose artifacts stay: the last `last` runs, every improving run, anything running."""
    keep = {r["run_id"] for r in runs[-last:]} if last else set()
    keep |= {r["run_id"] for r, best in zip(runs, ledger.best_markers(runs, in_history)) if best}
    keep |= {r["run_id"] for r in runs if r.get("status") == "running"}
    return keep


def prune(logs_dir: Path, ledger_path: Path, *, last: int | None = None, dry_run: bool = False,
          repo: Path = REPO_ROOT) -> list[Path]:
    """Delete what the rule above lets go; return the paths (deleted, or that would be).
    `repo`: the checkout whose history says which trainer versions were kept."""
    logs_dir = Path(logs_dir)
    runs = ledger.runs(ledger_path)
    keep = artifacts_to_keep(runs, keep_last() if last is None else last, verdict.kept_trainer_hashes(repo))
    running = {r["run_id"] for r in runs if r.get("status") == "running"}
    doomed = [p for p in logs_dir.glob(f"*{ARTIFACT_SUFFIX}") if p.name[:-len(ARTIFACT_SUFFIX)] not in keep]
    if settings.get("AUTOGOLF_KEEP_RAW_MODEL") != "1":  # asked to keep them (autogolf/run/orchestrator.py)
        doomed += [p for p in logs_dir.glob(f"*{RAW_SUFFIX}") if p.name[:-len(RAW_SUFFIX)] not in running]
    views = logs_dir / "views"
    if views.is_dir():
        doomed += [p for p in views.iterdir() if p.name not in running]
    if not dry_run:
        for path in doomed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return sorted(doomed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.run.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=REPO_ROOT / "logs", help="the logs folder (default: ./logs)")
    parser.add_argument("--last", type=int, default=None, help="keep the last N runs' artifacts (default: $AUTOGOLF_KEEP_LAST or 5)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    args = parser.parse_args(argv)
    paths = prune(args.logs, args.logs / ledger.LEDGER_NAME, last=args.last, dry_run=args.dry_run)
    for path in paths:
        print(f"{'would delete' if args.dry_run else 'deleted'} {path}")
    print(f"storage: {len(paths)} path(s) {'to prune' if args.dry_run else 'pruned'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
