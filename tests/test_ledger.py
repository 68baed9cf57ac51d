"""The run ledger: concurrent appends from real processes, corrupt lines, the table, git facts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

from autogolf.judge import ledger
from conftest import REPO

WRITER = textwrap.dedent("""
    import sys
    from autogolf.judge import ledger
    path, who = sys.argv[1], sys.argv[2]
    for i in range(40):
        # ~100 KB rows: far larger than a pipe buffer, so torn writes would show
        ledger.append({"run_id": f"{who}-{i}", "payload": who * 100_000}, path)
""")


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "logs" / "runs.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}"], cwd=REPO)
               for n in range(6)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 6
    rows, skipped = ledger.read(path)
    assert skipped == 0
    assert len(rows) == 6 * 40
    assert {r["run_id"] for r in rows} == {f"w{n}-{i}" for n in range(6) for i in range(40)}
    assert all(r["payload"] == r["run_id"].split("-")[0] * 100_000 for r in rows)


def test_reader_skips_corrupt_and_partial_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger.append({"run_id": "a", "status": "ok"}, path)
    with open(path, "ab") as f:
        f.write(b"this is not json\n")
        f.write(b"\xff\xfe binary junk\n")
        f.write(b'["a list, not a row"]\n')
        f.write(b'{"run_id": "torn", "sta')  # a machine crash mid-write: no newline
    ledger.append({"run_id": "b", "status": "crash"}, path)
    rows, skipped = ledger.read(path)
    assert [r["run_id"] for r in rows] == ["a", "b"]  # b was not glued onto the torn line
    assert skipped == 4
    out = subprocess.run([sys.executable, "-m", "autogolf.judge.ledger", "--path", str(path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "skipped 4 corrupt" in out.stderr


def test_table_marks_new_bests_among_kept_runs(tmp_path):
    path = tmp_path / "runs.jsonl"
    data = {"name": "synth", "fingerprint": "f1"}
    for run_id, status, profile, bpb, sha, call in [
        ("r1", "ok", "breadth", 2.0, "k", "keep"),
        ("r2", "ok", "breadth", 2.1, "k", "discard"),     # worse
        ("r3", "crash", "breadth", None, "k", "discard"),
        ("r4", "ok", "smoke", 5.0, "k", "keep"),          # other profile: its own first best
        ("r5", "ok", "breadth", 1.9, "k", "keep"),        # new best
        ("r6", "cap_violation", "breadth", 1.0, "k", "discard"),  # not a valid result
        ("r7", "ok", "breadth", 1.8, "never-committed", "keep"),  # reverted: not kept
        ("r8", "ok", "breadth", 1.7, "k", "discard"),     # committed code, VERDICT discard: not kept
    ]:
        metrics = {"val_bpb": bpb, "total_bytes": 1234} if bpb is not None else {}
        ledger.append({"run_id": run_id, "status": status, "profile": profile, "dataset": data,
                       "trainer": {"sha256": sha}, "verdict": {"call": call},
                       "metrics": metrics, "wall_seconds": 12.5}, path)
        ledger.append_checks(run_id, True, [], path)
    rows = ledger.runs(path)
    assert ledger.best_markers(rows, {"k"}) == [True, False, False, True, True, False, False, False]
def test_git_info_tracks_binary_diffs(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    git("add", "blob.bin")
    git("commit", "-q", "-m", "base")
    clean = ledger.git_info(tmp_path)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["commit"]) == 40
    (tmp_path / "blob.bin").write_bytes(bytes(range(255, -1, -1)))
    first = ledger.git_info(tmp_path)
    (tmp_path / "blob.bin").write_bytes(bytes(range(1, 256)) + b"\0")
    second = ledger.git_info(tmp_path)
    assert first["dirty"] and second["dirty"]
    assert first["diff_sha256"] != second["diff_sha256"]  # binary content is hashed, not "Binary files differ"
    (tmp_path / "new.txt").write_text("x")
    assert ledger.git_info(tmp_path)["untracked"] == ["new.txt"]


def test_rows_are_single_json_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger.append({"run_id": "x", "exit_reason": "line one\nline two"}, path)
    raw = path.read_text()
    assert raw.count("\n") == 1
    assert json.loads(raw)["exit_reason"] == "line one\nline two"


def test_fold_merges_start_result_and_checks_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger.append_start("a", path, profile="smoke")
    ledger.append_start("b", path, profile="smoke")  # b is still going (this process is alive)
    ledger.append({"run_id": "a", "record": "run", "status": "ok", "metrics": {"val_bpb": 2.0}}, path)
    ledger.append_checks("a", False, ["protected file changed: README.md"], path)
    ledger.append({"run_id": "old", "status": "crash"}, path)  # an older ledger's line: no record
    runs = ledger.runs(path)
    assert [(r["run_id"], r["status"]) for r in runs] == [("a", "ok"), ("b", "running"), ("old", "crash")]
    assert runs[0]["profile"] == "smoke" and runs[0]["harness"]["pid"] == os.getpid()
    assert runs[0]["checks"]["passed"] is False and "README.md" in runs[0]["checks"]["problems"][0]
    assert runs[1]["checks"] is None


def test_a_start_whose_harness_died_is_reconciled_as_lost_once(tmp_path):
    path = tmp_path / "runs.jsonl"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from autogolf.judge import ledger
        ledger.append_start("dead", {str(path)!r}, profile="breadth")
    """)], cwd=REPO, check=True)
    assert child.returncode == 0  # that harness is gone now
    assert [r["status"] for r in ledger.runs(path)] == ["lost"]
    out = subprocess.run([sys.executable, "-m", "autogolf.judge.ledger", "--path", str(path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "run dead recorded as lost" in out.stderr
    assert "lost" in out.stdout
    rows, _ = ledger.read(path)
    assert [ledger.record_kind(r) for r in rows] == ["start", "run"]
    assert ledger.reconcile(path) == []  # settled for good: nothing written twice
