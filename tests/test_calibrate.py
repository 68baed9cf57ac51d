"""`just calibrate`'s arithmetic: Spearman with ties, the variants, and the budget choice."""

from __future__ import annotations

import json
import socket

import pytest

from autogolf.lab import calibrate
from autogolf.run import budget


def test_spearman_against_known_values():
    assert calibrate.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert calibrate.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # textbook example with a tie: ranks x (1, 2.5, 2.5, 4), y (1, 2, 3, 4)
    assert calibrate.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert calibrate.spearman([1, 1, 1], [1, 2, 3]) is None  # no ranking at all
    assert calibrate.spearman([1, 2], [1, 2]) is None  # too few variants


def test_variants_change_the_base_they_start_from():
    base = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "TRAIN_SEQ_LEN": "128"}
    assert calibrate.variant_env(base, {"NUM_LAYERS": "+1"}) == {"NUM_LAYERS": "3"}
    assert calibrate.variant_env(base, {"MODEL_DIM": "x1.5"}) == {"MODEL_DIM": "96"}
    assert calibrate.variant_env({}, {"TRAIN_SEQ_LEN": "x0.5"}) == {"TRAIN_SEQ_LEN": "512"}
    assert calibrate.variant_env(base, {"MATRIX_LR": "0.01"}) == {"MATRIX_LR": "0.01"}
    assert len(calibrate.VARIANTS) >= 6


def test_the_choice_is_the_cheapest_budget_close_to_the_best_correlation():
    rows = [{"tokens": 8192, "spearman": 0.5, "minutes": 1.0},
            {"tokens": 16384, "spearman": 0.85, "minutes": 2.0},
            {"tokens": 32768, "spearman": 0.9, "minutes": 4.0}]
    assert calibrate.choose(rows)["tokens"] == 16384
    assert calibrate.choose([dict(r, spearman=-0.2) for r in rows]) is None


def test_the_choice_is_written_to_the_machine_file_runs_read(tmp_path):
    path = tmp_path / "logs" / "machine.json"
    budget.write_machine_choice(path, "breadth", 65536, {"chosen": 65536})
    data = json.loads(path.read_text())
    assert data["profiles"]["breadth"] == {"TRAIN_BUDGET_TOKENS": 65536}
    assert data["host"] == socket.gethostname() and data["findings"]["breadth"]["chosen"] == 65536
    from autogolf.run import profiles

    profile = profiles.load("breadth", environ={})
    got = budget.apply(profile, {}, tmp_path)
    assert got["value"] == 65536 and got["source"].startswith("logs/machine.json")
    assert profile.resolved["TRAIN_BUDGET_TOKENS"] == "65536" and profile.overrides == {}


def test_bad_arguments_are_one_line_errors(capsys):
    assert calibrate.main(["--budgets", "12,x", "--dry-run"]) == 2
    assert calibrate.main(["--variants", "baseline,nonsense", "--dry-run"]) == 2
    assert calibrate.main(["--profile", "confirm", "--dry-run"]) == 2  # a wall-clock budget
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("calibrate: ") for line in out)
