""""Kept" on a real git history with merges (issue 16): a trainer version that a merge brought
in counts as kept, also once it is no longer HEAD's own file; and `just status` never shows a
failed run's number."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autogolf.agent import status
from autogolf.fsutil import file_sha256
from autogolf.judge import ledger
from autogolf.judge import verdict as V


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def commit(repo: Path, trainer: Path, text: str, message: str) -> str:
    trainer.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return file_sha256(trainer)


def history_with_merges(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """main: base -> main change -> merge of side (a conflict resolved into a version in
    neither parent) -> a later change; side: base -> side change. Returns (repo, sha256 by name)."""
    repo = tmp_path / "repo"
    (repo / "benchmark").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    trainer = repo / "benchmark" / "train_gpt_mlx.py"
    shas = {"base": commit(repo, trainer, "lr = 1\n", "base")}
    git(repo, "checkout", "-qb", "side")
    shas["side"] = commit(repo, trainer, "lr = 2\n", "side")
    git(repo, "checkout", "-q", "main")
    shas["main"] = commit(repo, trainer, "lr = 3\n", "main")
    subprocess.run(["git", "-C", str(repo), "merge", "-q", "side"], capture_output=True)  # conflicts
    trainer.write_text("lr = 23\n")  # the resolution: only the merge commit holds it
    shas["merged"] = file_sha256(trainer)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "merge side")
    shas["later"] = commit(repo, trainer, "lr = 24\n", "after the merge")
    trainer.write_text("lr = 99\n")  # a change that was run and reverted
    shas["discarded"] = file_sha256(trainer)
    git(repo, "checkout", "-q", "--", ".")
    git(repo, "checkout", "-qb", "unmerged")
    shas["unmerged"] = commit(repo, trainer, "lr = 5\n", "a branch never merged")
    git(repo, "checkout", "-q", "main")
    return repo, shas


def test_a_version_a_merge_introduced_is_kept_after_head_moved_on(tmp_path):
    repo, shas = history_with_merges(tmp_path)
    kept = V.kept_trainer_hashes(repo)
    assert {shas[n] for n in ("base", "side", "main", "merged", "later")} <= kept
    assert shas["discarded"] not in kept and shas["unmerged"] not in kept


def test_the_verdict_compares_a_run_of_a_merged_version_with_its_kept_run(tmp_path):
    repo, shas = history_with_merges(tmp_path)
    earlier = {"run_id": "a", "status": "ok", "profile": "smoke", "metrics": {"val_bpb": 2.5},
               "trainer": {"sha256": shas["merged"]}, "checks": {"passed": True}, "verdict": {"call": "keep"}}
    rerun = {"run_id": "b", "status": "ok", "profile": "smoke", "metrics": {"val_bpb": 2.49},
             "trainer": {"sha256": shas["merged"]}}
    verdict = V.for_run(rerun, [earlier], repo)
    assert verdict["compared_with"] == "a", verdict  # not "baseline: no kept run ..."
    assert not verdict["reason"].startswith("baseline")


def test_status_shows_a_failed_run_without_its_number(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger.append({"record": "run", "run_id": "good", "status": "ok", "profile": "smoke",
                   "metrics": {"val_bpb": 2.7501}}, path)
    ledger.append({"record": "run", "run_id": "tampered", "status": "integrity_failed", "profile": "smoke",
                   "metrics": {"val_bpb": 2.7353}}, path)
    lines = status.ledger_lines(8, path)
    tampered = next(line for line in lines if "tampered" in line)
    assert "integrity_failed" in tampered and "2.7353" not in tampered and tampered.split()[-2] == "-"
    assert "2.7501" in next(line for line in lines if "good" in line)
    assert "2.7353" not in "\n".join(lines)
