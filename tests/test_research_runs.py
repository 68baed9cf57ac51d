"""REPEATS, the VERDICT line and the machine-file budget, through real `bash autoresearch.sh`
runs of the real trainer (smoke profile, tiny data) in a throw-away git project."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess

import pytest

from autoresearch_helpers import git, ledger_rows, metric_lines, run_bench
from autogolf.run import profiles
from autogolf.run import budget


def run_checks(project) -> None:
    subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, text=True,
                   timeout=300)


def test_repeats_give_the_median_and_the_next_change_is_judged_against_them(project, env):
    out = run_bench(project, dict(env, REPEATS="3"))
    assert out.returncode == 0, out.stdout[-3000:]
    rows = ledger_rows(project)
    assert len(rows) == 3 and len({r["repeat"]["group"] for r in rows}) == 1
    assert [r["repeat"]["seed"] for r in rows] == [None, "1", "2"]
    assert "SEED" not in rows[0]["settings"] and rows[2]["settings"]["SEED"] == "2"
    values = [r["metrics"]["val_bpb"] for r in rows]
    assert len(set(values)) == 3  # the seeds really differ
    found = metric_lines(out.stdout)
    assert float(found["val_bpb"]) == pytest.approx(statistics.median(values), abs=1e-8)
    assert float(found["val_bpb_spread"]) == pytest.approx(max(values) - min(values), abs=1e-7)
    assert found["repeats"] == "3" and float(found["tok_s"]) > 0
    assert rows[2]["repeats"]["val_bpb"] == values and "verdict" not in rows[0]
    last = out.stdout.rstrip().splitlines()[-1]
    assert last.startswith("VERDICT keep ") and "baseline" in last
    run_checks(project)
    assert ledger_rows(project)[2]["checks"]["passed"] is True, ledger_rows(project)[2]["checks"]

    # an uncommitted change of the trainer: judged against the committed (kept) baseline,
    # with the noise floor its three seeds measured
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    trainer.write_text(trainer.read_text().replace("matrix_lr: float = 0.04", "matrix_lr: float = 0.02"))
    out = run_bench(project, env)
    assert out.returncode == 0, out.stdout[-3000:]
    row = ledger_rows(project)[-1]
    v = row["verdict"]
    assert v["compared_with"] == rows[2]["run_id"] and v["noise_df"] == 2
    assert v["delta"] == pytest.approx(row["metrics"]["val_bpb"] - statistics.median(values), abs=1e-7)
    assert v["call"] in ("keep", "discard", "inconclusive") and v["throughput_change"] is not None
    assert out.stdout.rstrip().splitlines()[-1].startswith(f"VERDICT {v['call']} delta={v['delta']:+.4f}")
    assert out.stdout.rstrip().splitlines()[-2].startswith("autoresearch: ok")


def test_a_bad_repeats_value_is_a_config_error(project, env):
    out = run_bench(project, dict(env, REPEATS="many"))
    assert out.returncode == 2
    assert "REPEATS='many' must be a whole number" in out.stdout.splitlines()[-2]
    assert out.stdout.splitlines()[-1].startswith("VERDICT discard")


def test_the_machine_file_sets_the_budget_and_the_ledger_says_so(project, env):
    machine = project / budget.MACHINE_RELPATH
    machine.parent.mkdir(parents=True, exist_ok=True)
    machine.write_text(json.dumps({"host": socket.gethostname(), "at": "then",
                                   "profiles": {"smoke": {"ITERATIONS": 3}}}))
    out = run_bench(project, env)
    assert out.returncode == 0, out.stdout[-3000:]
    row = ledger_rows(project)[-1]
    assert row["budget"]["kind"] == "steps" and row["budget"]["value"] == 3
    assert row["budget"]["source"].startswith("logs/machine.json") and row["overrides"] == {}
    assert "iterations:3 " in (project / row["log_path"]).read_text()
    assert git(project, "status", "--porcelain") == ""  # the machine file is git-ignored


def test_budget_sources(tmp_path):
    profile = profiles.load("confirm", environ={})
    assert budget.apply(profile, {}, tmp_path) == {"kind": "seconds", "value": 900,
                                                   "variable": "MAX_WALLCLOCK_SECONDS", "source": "profile"}
    environ = {"MAX_WALLCLOCK_SECONDS": "60"}
    profile = profiles.load("confirm", environ=environ)
    b = budget.apply(profile, environ, tmp_path)
    assert b["value"] == 60 and b["source"] == "environment (override)"
    machine = tmp_path / budget.MACHINE_RELPATH
    machine.parent.mkdir()
    machine.write_text(json.dumps({"host": "another-machine", "profiles": {"confirm": {"MAX_WALLCLOCK_SECONDS": 5}}}))
    assert budget.apply(profiles.load("confirm", environ={}), {}, tmp_path)["value"] == 900
    machine.write_text("{not json")
    with pytest.raises(profiles.ProfileError, match="machine.json: unreadable machine file"):
        budget.apply(profiles.load("confirm", environ={}), {}, tmp_path)
