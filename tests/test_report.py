"""`just report` (autogolf/lab/report.py) on a ledger written with the ledger's own
writer, with "kept" decided by a real git history."""

from __future__ import annotations

import struct

from autogolf.judge import ledger
from autogolf.fsutil import file_sha256
from autogolf.lab import report
from test_verdict import _git, trainer_repo


def _row(run_id, profile, sha, val, status="ok", holdout=None, total=1_500_000, group=None, call="keep"):
    # a VERDICT keep (and checks that pass, below): "kept" turns on whether the trainer was committed
    row = {"record": "run", "run_id": run_id, "status": status, "profile": profile,
           "started_at": run_id, "dataset": {"name": "tiny", "fingerprint": "fp"},
           "trainer": {"sha256": sha}, "overrides": {}, "verdict": {"call": call},
           "metrics": {} if val is None else {"val_bpb": val, "total_bytes": total, "harness_tok_s": 1000.0}}
    if holdout is not None:
        row["holdout"] = {"val_bpb": holdout, "tokens": 4096, "slice": "test"}
    if group:
        row["repeat"] = {"group": group}
    return row


def test_report_table_png_and_html(tmp_path, capsys):
    repo, trainer = trainer_repo(tmp_path)
    trainer.write_text("v1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    kept = file_sha256(trainer)
    path = tmp_path / "logs" / "runs.jsonl"
    rows = [_row("a1", "breadth", kept, 2.50, group="g"), _row("a2", "breadth", kept, 2.52, group="g"),
            _row("b", "breadth", "discarded-sha", 2.60), _row("c", "breadth", kept, 2.40, holdout=2.45),
            _row("d", "breadth", "discarded-sha", None, status="crash"),
            _row("e", "smoke", kept, 4.1, total=300_000), _row("f", "smoke", "other", 4.2)]
    for row in rows:
        ledger.append(row, path)
        ledger.append_checks(row["run_id"], True, [], path)  # fold takes the checks from these lines
    assert report.main(["--path", str(path), "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("breadth "))
    # experiments (a1+a2 are one), kept, discarded, crashes, best kept, its holdout
    assert line.split()[2:8] == ["4", "2", "1", "1", "2.400000", "2.450000"]
    assert next(l for l in out.splitlines() if l.startswith("smoke ")).split()[2:6] == ["2", "1", "1", "0"]
    png = path.parent / "progress.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > height  # two profile columns side by side
    page = (path.parent / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "2.450000" in page
    assert "src='http" not in page  # self-contained


def test_report_on_an_empty_ledger_says_what_to_do(tmp_path, capsys):
    assert report.main(["--path", str(tmp_path / "runs.jsonl"), "--repo", str(tmp_path)]) == 1
    assert "run `bash autoresearch.sh` first" in capsys.readouterr().out
