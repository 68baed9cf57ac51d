"""Sizing breadth to the machine (autogolf/run/sizing.py): the probe's arithmetic, the
ladder choice, the timeout and its margin, the record in logs/machine.json and its
precedence, the projection, and the new-baseline rule. Pure logic and files: no trainer."""

from __future__ import annotations

import json
import socket

import pytest

from autogolf.judge import verdict
from autogolf.run import budget, profiles, sizing

RULES = sizing.Rules(ladder=(36864, 73728, 147456, 294912), target_train_seconds=240.0,
                     timeout_margin=2.0, min_timeout_seconds=120.0)


def clock_of(times: list[float], total: int = 3) -> sizing.StepClock:
    clock = sizing.StepClock(started=0.0)
    for i, t in enumerate(times, 1):
        assert clock.feed(f"step:{i}/{total} train_loss:6.9 train_time:1ms step_avg:1ms tok_s:1", t)
    return clock


def test_the_step_clock_reads_only_training_step_lines():
    clock = sizing.StepClock(started=0.0)
    assert not clock.feed("warmup_step:1/1", 1.0)
    assert not clock.feed("step:3/3 val_loss:6.4 val_bpb:3.7 train_time:1ms", 2.0)  # evaluation line
    assert clock.step_seconds() is None
    assert clock.feed("step:1/3 train_loss:6.9 train_time:5ms", 10.0)
    assert clock.feed("step:3/3 train_loss:6.8 train_time:9ms", 14.0)
    assert clock.step_seconds() == pytest.approx(2.0)  # two steps in four seconds, whatever it printed


def test_the_probe_gives_throughput_and_fixed_cost_from_the_harness_clock():
    probe = sizing.analyse(clock_of([20.0, 27.0, 34.0]), lifetime_s=50.0, batch_tokens=4096)
    assert probe["step_s"] == pytest.approx(7.0)
    assert probe["train_tok_s"] == pytest.approx(4096 / 7.0, abs=0.01)
    assert probe["fixed_s"] == pytest.approx(50.0 - 3 * 7.0)
    assert probe["tail_s"] == pytest.approx(16.0)
    with pytest.raises(sizing.SizingError, match="saw 1 step line"):
        sizing.analyse(clock_of([20.0]), lifetime_s=30.0)


@pytest.mark.parametrize("tok_s, tokens", [
    (2000.0, 294912),  # a fast machine: the largest rung that fits 240 s (294,912 / 2000 = 147 s)
    (1000.0, 147456),  # half as fast: 294,912 would need 295 s
    (400.0, 73728),  # slower still (one BLAS thread, a laptop)
    (100.0, 36864),  # nothing fits: the smallest rung, with a note
])
def test_the_choice_is_the_largest_rung_that_fits_the_target(tok_s, tokens):
    choice = sizing.choose_tokens(RULES, tok_s)
    assert choice["tokens"] == tokens
    assert choice["predicted_train_s"] == pytest.approx(tokens / tok_s, abs=0.1)
    assert bool(choice["note"]) == (tokens / tok_s > RULES.target_train_seconds)


def test_the_timeout_is_the_margin_times_the_expected_time_stretched_for_a_slower_day():
    record = {"probe": {"fixed_s": 30.0, "train_tok_s": 600.0, "at": "2026-12-01T10:00"}}
    expected, basis = sizing.expected_trainer_s(record, 147456)
    assert expected == pytest.approx(30.0 + 147456 / 600.0) and basis == "probe 2026-12-01"
    record["measured"] = {"tokens": 147456, "trainer_s": 290.0, "at": "2026-12-02T09:00"}
    assert sizing.expected_trainer_s(record, 147456) == (290.0, "measured 2026-12-02")
    assert sizing.expected_trainer_s(record, 73728)[1].startswith("probe")  # measured at another budget
    assert sizing.expected_trainer_s(record, 73728, 1.25)[0] == pytest.approx(1.25 * (30.0 + 73728 / 600.0))
    assert sizing.hard_timeout(RULES, 290.0) == 580.0
    assert sizing.hard_timeout(RULES, 290.0, sizing.slowdown(200.0, 100.0)) == 1160.0
    assert sizing.slowdown(100.0, 200.0) == 1.0  # a faster day never shortens it
    assert sizing.slowdown(400.0, 10.0) == sizing.MAX_SLOWDOWN
    assert sizing.slowdown(None, 50.0) == 1.0
    assert sizing.hard_timeout(RULES, 10.0) == 120.0  # the floor
    # pi may kill only after the trainer and the scorer could both have used the timeout
    assert sizing.pi_timeout(580.0, 10.0) >= 2 * 580 + 20 and sizing.pi_timeout(580.0, 10.0) % 30 == 0


def test_the_projection_warns_and_says_by_how_much_a_run_missed():
    clock = clock_of([10.0, 20.0, 30.0], total=36)
    projected = sizing.project(clock, 30.0, tail_s=15.0)
    assert projected == pytest.approx(30.0 + 33 * 10.0 + 15.0)
    line = sizing.warning_line(projected, 200.0, clock)
    assert "projected trainer time 375 s exceeds the 200 s hard timeout" in line and "step 3/36" in line
    assert "+175 s (1.9x) over the 200 s timeout" in sizing.miss_note(projected, 200.0)
    assert "no training step" in sizing.miss_note(None, 200.0)


def test_breadth_is_sized_and_its_table_is_checked(tmp_path):
    breadth = profiles.load("breadth", environ={})
    assert breadth.sizing is not None and int(breadth.env["TRAIN_BUDGET_TOKENS"]) in breadth.sizing.ladder
    assert breadth.sizing.timeout_margin >= 2.0
    assert profiles.load("smoke", environ={}).sizing is None
    bad = tmp_path / "profiles.toml"
    bad.write_text('[profiles.x]\ntimeout_seconds = 1\n[profiles.x.env]\nA = 1\n[profiles.x.sizing]\nladder = []\n')
    with pytest.raises(profiles.ProfileError, match="positive rungs"):
        profiles.load("x", environ={}, path=bad)


def _record(tokens: int, tok_s: float = 500.0) -> dict:
    return {"probe": {"at": "2026-12-01T10:00:00", "train_tok_s": tok_s, "fixed_s": 20.0,
                      "trainer_sha256": "abc"}, "tokens": tokens}


def test_the_record_its_precedence_and_its_history(tmp_path):
    path = budget.machine_path(tmp_path)
    path.parent.mkdir()
    profile = profiles.load("breadth", environ={})
    assert budget.apply(profile, {}, tmp_path)["source"] == "profile"
    budget.write_sizing(path, "breadth", _record(73728))
    profile = profiles.load("breadth", environ={})
    b = budget.apply(profile, {}, tmp_path)
    assert (b["value"], profile.resolved["TRAIN_BUDGET_TOKENS"]) == (73728, "73728")
    assert "probe 2026-12-01" in b["source"] and "500 tok/s" in b["source"]
    # the environment still wins, as an override
    profile = profiles.load("breadth", environ={"TRAIN_BUDGET_TOKENS": "36864"})
    b = budget.apply(profile, {"TRAIN_BUDGET_TOKENS": "36864"}, tmp_path)
    assert b["value"] == 36864 and profile.overrides == {"TRAIN_BUDGET_TOKENS": "36864"}
    # a rank-fidelity choice by `just calibrate` takes precedence over the probe's
    budget.write_machine_choice(path, "breadth", 147456, {"chosen": 147456})
    profile = profiles.load("breadth", environ={})
    b = budget.apply(profile, {}, tmp_path)
    assert b["value"] == 147456 and "just calibrate" in b["source"]
    # a re-probe keeps the previous choice in the history; the measured time is per choice
    assert budget.record_measured(path, "breadth", 73728, "abc", 200.0, "r1", 150.0)
    assert not budget.record_measured(path, "breadth", 73728, "abc", 999.0, "r2", 150.0)  # only the first
    assert not budget.record_measured(path, "breadth", 73728, "other-trainer", 1.0, "r3", None)
    budget.write_sizing(path, "breadth", _record(36864, 250.0))
    data = json.loads(path.read_text())
    record = data["sizing"]["breadth"]
    assert record["tokens"] == 36864 and record["history"][-1]["tokens"] == 73728 and "measured" not in record
    assert data["profiles"]["breadth"] == {"TRAIN_BUDGET_TOKENS": 147456} and data["host"] == socket.gethostname()


def _run(run_id: str, tokens: int, value: float, sha: str = "kept", source: str = "probe") -> dict:
    return {"run_id": run_id, "status": "ok", "profile": "breadth", "dataset": {"fingerprint": "fp"},
            "budget": {"kind": "tokens", "value": tokens, "variable": "TRAIN_BUDGET_TOKENS", "source": source},
            "machine": {"hostname": "h", "machine": "x86_64", "cpu_count": 2},
            "settings": {"TRAIN_BUDGET_TOKENS": str(tokens), "VAL_MAX_TOKENS": "16384"},
            "trainer": {"sha256": sha}, "metrics": {"val_bpb": value, "harness_tok_s": 500.0},
            "checks": {"passed": True}, "verdict": {"call": "keep"}, "started_at": run_id}


def test_a_new_budget_choice_starts_a_new_baseline_and_says_so():
    runs = [_run("a", 294912, 3.0), _run("b", 294912, 2.9)]
    new = _run("c", 73728, 3.4)
    exps = verdict.experiments(runs + [new])
    current = exps[-1]
    v = verdict.decide(current, exps[:-1], None, {"kept"})
    assert v["call"] == "keep" and v["delta"] is None
    assert v["reason"].startswith("new baseline: the training budget changed from 294,912 tokens to 73,728 tokens")
    # the next run on the new budget is judged against the new baseline only
    later = _run("d", 73728, 3.5)
    exps = verdict.experiments(runs + [new, later])
    v = verdict.decide(exps[-1], exps[:-1], None, {"kept"})
    assert v["compared_with"] == "c" and v["call"] == "discard"
    changes = verdict.budget_changes(runs + [new, later])
    assert [(c["run_id"], c["from"], c["to"]) for c in changes] == [("c", "294,912 tokens", "73,728 tokens")]
    # another profile or dataset is not a budget change
    other = dict(_run("e", 36864, 3.0), dataset={"fingerprint": "other"})
    assert len(verdict.budget_changes(runs + [new, later, other])) == 1


def test_the_verdict_line_tells_pi_its_timeout():
    v = verdict.not_judged("timeout: too slow")
    assert "timeout_seconds" not in verdict.format_line(v)
    v["pi_timeout_s"] = 1260
    line = verdict.format_line(v)
    assert " timeout_seconds=1260 reason: timeout: too slow" in line
