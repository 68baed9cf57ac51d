"""Bounded storage (autogolf/run/storage.py): the last few runs, every improving run and the best
keep their artifacts; the rest are deleted; the ledger keeps every run."""

from __future__ import annotations

from autogolf.fsutil import file_sha256
from autogolf.judge import ledger
from autogolf.run import storage
from test_verdict import _git, trainer_repo


def committed_trainer(tmp_path) -> tuple:
    """(a git repository whose HEAD holds a trainer, that trainer's sha256): runs of it are
    kept when their VERDICT was keep and their checks passed."""
    repo, trainer = trainer_repo(tmp_path)
    trainer.write_text("kept\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "kept")
    return repo, file_sha256(trainer)


def _run(path, run_id, status, bpb, profile="breadth", fingerprint="f1", sha="kept"):
    ledger.append_start(run_id, path, profile=profile)
    ledger.append({"record": "run", "run_id": run_id, "status": status, "profile": profile,
                   "dataset": {"fingerprint": fingerprint}, "metrics": {"val_bpb": bpb} if bpb else {},
                   "trainer": {"sha256": sha}, "verdict": {"call": "keep"}}, path)
    ledger.append_checks(run_id, True, [], path)


def test_prune_keeps_last_improving_and_best(tmp_path):
    repo, sha = committed_trainer(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "runs.jsonl"
    # (run, status, val_bpb): r1, r3 and r6 each set a new best of breadth; r8 is the first smoke run
    history = [("r1", "ok", 3.0), ("r2", "ok", 3.1), ("r3", "ok", 2.9), ("r4", "crash", None),
               ("r5", "ok", 2.95), ("r6", "ok", 2.8), ("r7", "integrity_failed", 1.0), ("r8", "ok", 5.0),
               ("r9", "ok", 2.85), ("r10", "ok", 2.9)]
    for run_id, status, bpb in history:
        _run(path, run_id, status, bpb, profile="smoke" if run_id == "r8" else "breadth", sha=sha)
        (logs / f"{run_id}{storage.ARTIFACT_SUFFIX}").write_bytes(b"artifact")
    (logs / f"r2{storage.RAW_SUFFIX}").write_bytes(b"raw")
    (logs / "views" / "r4" / "datasets").mkdir(parents=True)  # left by a run that died
    lines_before = path.read_bytes()

    assert storage.prune(logs, path, last=2, dry_run=True, repo=repo)
    assert len(list(logs.glob(f"*{storage.ARTIFACT_SUFFIX}"))) == 10  # a dry run deletes nothing
    deleted = storage.prune(logs, path, last=2, repo=repo)
    kept = sorted(p.name[:-len(storage.ARTIFACT_SUFFIX)] for p in logs.glob(f"*{storage.ARTIFACT_SUFFIX}"))
    assert kept == sorted(["r1", "r3", "r6", "r8", "r9", "r10"])  # improving (incl. best) + last 2
    assert not (logs / f"r2{storage.RAW_SUFFIX}").exists() and not (logs / "views" / "r4").exists()
    assert len(deleted) == 6  # r2 r4 r5 r7 artifacts, r2's raw weights, r4's view
    assert path.read_bytes() == lines_before  # the ledger is never touched
    assert [r["run_id"] for r in ledger.runs(path)] == [h[0] for h in history]


def test_a_running_run_keeps_everything(tmp_path):
    repo, sha = committed_trainer(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "runs.jsonl"
    _run(path, "old", "ok", 3.0, sha=sha)
    _run(path, "older", "ok", 3.5, sha=sha)
    ledger.append_start("now", path, profile="breadth")  # this process: alive, so running
    for name in ("old", "older", "now"):
        (logs / f"{name}{storage.ARTIFACT_SUFFIX}").write_bytes(b"a")
    (logs / f"now{storage.RAW_SUFFIX}").write_bytes(b"raw")
    (logs / "views" / "now").mkdir(parents=True)
    storage.prune(logs, path, last=0, repo=repo)
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        ["runs.jsonl", f"old{storage.ARTIFACT_SUFFIX}", f"now{storage.ARTIFACT_SUFFIX}", f"now{storage.RAW_SUFFIX}", "views"])
    assert (logs / "views" / "now").is_dir()
