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


# --------------------------------------------------------------------------- one "kept" everywhere

def judged_ledger(repo: Path, path: Path, shas: dict[str, str]) -> dict[str, str]:
    """A ledger written the way the orchestrator and the checks write it: each run's VERDICT
    computed by verdict.for_run from the runs before it, then its checks line. Returns the
    VERDICT call per run."""
    plan = [  # (run, trainer version, val_bpb, seed, checks pass)
        ("base1", "base", 3.00, 1, True),     # the first honest run: baseline, keep
        ("base2", "base", 3.01, 2, True),     # a rerun: discard; it measures the noise
        ("side", "side", 2.70, 1, True),      # keep (-0.30, beyond the noise)
        ("merged", "merged", 2.40, 1, True),  # keep: the version only the merge commit holds
        ("later", "later", 2.35, 1, True),    # committed, but within the noise: inconclusive
        ("failed", "main", 2.00, 1, False),   # VERDICT keep, committed, then its checks failed
        ("reverted", "discarded", 1.90, 1, True),  # VERDICT keep, never committed (reverted)
        ("branch", "unmerged", 1.80, 1, True),  # VERDICT keep, on a branch never merged
    ]
    calls = {}
    for run_id, version, value, seed, passed in plan:
        row = {"record": "run", "run_id": run_id, "status": "ok", "profile": "smoke", "overrides": {},
               "dataset": {"name": "tiny", "fingerprint": "fp"}, "settings": {"SEED": str(seed)},
               "trainer": {"sha256": shas[version]}, "metrics": {"val_bpb": value, "harness_tok_s": 1000.0}}
        row["verdict"] = V.for_run(row, ledger.runs(path), repo)
        calls[run_id] = row["verdict"]["call"]
        ledger.append(row, path)
        ledger.append_checks(run_id, passed, [] if passed else ["protected file README.md was modified"], path)
    return calls


def test_verdict_status_report_and_ledger_agree_on_what_was_kept(tmp_path, capsys):
    import sys

    from autogolf.lab import report

    repo, shas = history_with_merges(tmp_path)
    path = tmp_path / "logs" / "runs.jsonl"
    calls = judged_ledger(repo, path, shas)
    assert calls == {"base1": "keep", "base2": "discard", "side": "keep", "merged": "keep",
                     "later": "inconclusive", "failed": "keep", "reverted": "keep", "branch": "keep"}, calls
    runs = ledger.runs(path)
    hashes = V.kept_trainer_hashes(repo)
    kept = [e.run_id for e in V.kept_experiments(runs, hashes)]
    # "later" and "base2" have their trainer in history but no VERDICT keep; "failed" failed its
    # checks; "reverted" and "branch" never reached HEAD's history
    assert kept == ["base1", "side", "merged"]
    # the VERDICT: the next run is compared with the best kept run, the merged version's
    nxt = {"run_id": "next", "status": "ok", "profile": "smoke", "overrides": {},
           "dataset": {"name": "tiny", "fingerprint": "fp"}, "settings": {"SEED": "1"},
           "trainer": {"sha256": shas["later"]}, "metrics": {"val_bpb": 2.39, "harness_tok_s": 1000.0}}
    assert V.for_run(nxt, runs, repo)["compared_with"] == "merged"
    # just status: the best line names it
    best = next(line for line in status.ledger_lines(8, path, repo) if line.startswith("best"))
    assert "2.4000 (merged)" in best and "later" not in best, best
    # just report: 8 experiments, 3 kept, 5 discarded, the best kept is the merged one
    assert report.main(["--path", str(path), "--repo", str(repo), "--out", str(tmp_path / "out")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("smoke "))
    assert line.split()[2:9] == ["8", "3", "5", "0", "2.400000", "-", "merged"], line
    # the ledger's best marker, and `just ledger` prints it there and nowhere after
    marks = dict(zip((r["run_id"] for r in runs), ledger.best_markers(runs, hashes)))
    assert [r for r, m in marks.items() if m] == ["base1", "side", "merged"]
    out = subprocess.run([sys.executable, "-m", "autogolf.judge.ledger", "--path", str(path), "--repo", str(repo)],
                         capture_output=True, text=True, check=True).stdout
    starred = [l.split()[0] for l in out.splitlines() if "*" in l and not l.startswith("*")]
    assert starred == ["base1", "side", "merged"], out
