"""The keep/discard verdict (autogolf/judge/verdict.py) on synthetic ledgers with a known
truth, and its notion of "kept" on a real git history."""

from __future__ import annotations

import random
import statistics
import subprocess
from pathlib import Path

import pytest

from autogolf.fsutil import file_sha256
from autogolf.judge import verdict as V

SIGMA = 0.01  # run-to-run noise of the synthetic ledgers (autoresearch-mlx saw 0.03 on Macs)


def run_row(run_id, sha, val_bpb, *, group=None, seed=None, tok_s=1000.0, checks=True, call="keep", **extra):
    row = {"run_id": run_id, "status": "ok", "profile": "breadth", "dataset": {"fingerprint": "fp"},
           "budget": {"kind": "tokens", "value": 294912, "source": "profile"},
           "machine": {"hostname": "h", "machine": "x86_64", "cpu_count": 2},
           "settings": {"TRAIN_BUDGET_TOKENS": "294912", "RUN_ID": run_id}, "overrides": {},
           "trainer": {"sha256": sha}, "metrics": {"val_bpb": val_bpb, V.SPEED_METRIC: tok_s},
           "checks": None if checks is None else {"passed": checks, "problems": [], "at": "t"},
           "verdict": {"call": call}}  # the history's runs were called keep unless a test says not
    if seed is not None:
        row["settings"]["SEED"] = str(seed)
    if group:
        row["repeat"] = {"group": group}
    row.update(extra)
    return row


def repeats(prefix, sha, mean, n, rng, checks=True, **kw):
    return [run_row(f"{prefix}{i}", sha, mean + rng.gauss(0, SIGMA), group=prefix, seed=i,
                    checks=checks if i == n - 1 else None, **kw) for i in range(n)]


def judge(history: list[dict], current: list[dict], kept=("base",)) -> dict:
    runs = history + current
    exps = V.experiments(runs)
    cur = next(e for e in exps if e.run_id == current[-1]["run_id"])
    return V.decide(cur, [e for e in exps if e is not cur], V.noise_floor(runs, cur.key), set(kept))


def replay(effect: float, n_base: int, n_cand: int, trials: int, seed: int) -> dict:
    """Many independent ledgers: a kept baseline (n_base repeats), then a candidate change
    with a true effect (bpb better) judged with n_cand repeats. Returns call frequencies."""
    rng = random.Random(seed)
    counts = {"keep": 0, "discard": 0, "inconclusive": 0}
    for _ in range(trials):
        base = repeats("b", "base", 2.0, n_base, rng)
        cand = repeats("c", "cand", 2.0 - effect, n_cand, rng, checks=None)
        counts[judge(base, cand)["call"]] += 1
    return {k: v / trials for k, v in counts.items()}


def test_no_true_effect_is_kept_at_most_5_percent_of_the_time():
    for n_base, n_cand in ((9, 1), (5, 3), (3, 1)):
        rates = replay(0.0, n_base, n_cand, trials=600, seed=n_base * 10 + n_cand)
        assert rates["keep"] <= 0.05, (n_base, n_cand, rates)


def test_a_true_effect_of_three_noise_floors_is_mostly_kept():
    for n_base, n_cand in ((9, 1), (5, 3)):
        rates = replay(3 * SIGMA, n_base, n_cand, trials=600, seed=7 + n_base)
        assert rates["keep"] > 0.5, (n_base, n_cand, rates)
        assert rates["discard"] < 0.02, rates


def test_a_gain_bought_with_a_2x_slower_step_is_flagged():
    rng = random.Random(3)
    base = repeats("b", "base", 2.0, 5, rng, tok_s=1000.0)
    # a marginal gain (beyond the noise of these runs, under 0.005) at half the throughput
    small = [run_row("c0", "cand", 1.996, tok_s=500.0, checks=None)]
    quiet = [dict(r, metrics={"val_bpb": 2.0 + 0.0002 * i, V.SPEED_METRIC: 1000.0}) for i, r in enumerate(base)]
    v = judge(quiet, small)
    assert v["call"] == "discard" and v["throughput_change"] == -0.5
    assert "marginal gain" in v["reason"] and "-50%" in v["reason"], v
    # a large gain at half the throughput: not a keep on a token budget; confirm decides
    v = judge(quiet, [run_row("c1", "cand", 1.95, tok_s=500.0, checks=None)])
    assert v["call"] == "inconclusive" and "PROFILE=confirm" in v["reason"], v
    # the same large gain at the same throughput is a keep
    assert judge(quiet, [run_row("c2", "cand", 1.95, tok_s=990.0, checks=None)])["call"] == "keep"


def test_unchanged_bpb_with_a_faster_step_is_kept_and_unknown_noise_is_inconclusive():
    steady = [run_row(f"s{i}", "base", 2.0 + 0.0005 * i, group="s", seed=i, tok_s=t,
                      checks=True if i == 2 else None) for i, t in enumerate((1000.0, 1010.0, 990.0))]
    v = judge(steady, [run_row("c0", "cand", 2.001, tok_s=1200.0, checks=None)])
    assert v["call"] == "keep" and "+20%" in v["reason"], v
    # the same +20% where tok_s itself swings by 30% between runs of one code: not yet a keep
    swinging = [dict(r, metrics=dict(r["metrics"], **{V.SPEED_METRIC: t})) for r, t in zip(steady, (700.0, 1000.0, 1300.0))]
    v = judge(swinging, [run_row("c0", "cand", 2.001, tok_s=1200.0, checks=None)])
    assert v["call"] == "inconclusive" and "REPEATS=3" in v["reason"], v
    base = [run_row("b0", "base", 2.0)]
    v = judge(base, [run_row("c0", "cand", 2.001, tok_s=1200.0, checks=None)])
    assert v["call"] == "inconclusive", v  # no measured spread of tok_s at all
    v = judge(base, [run_row("c1", "cand", 1.99, checks=None)])
    assert v["call"] == "inconclusive" and "REPEATS=3" in v["reason"] and v["noise"] is None, v
    assert judge(base, [run_row("c2", "cand", 2.01, checks=None)])["call"] == "discard"


def test_within_the_noise_says_how_many_repeats_would_settle_it():
    rng = random.Random(5)
    base = repeats("b", "base", 2.0, 9, rng)
    best = min(V.experiments(base), key=lambda e: e.val_bpb).val_bpb
    v = judge(base, [run_row("c0", "cand", best - 2 * SIGMA, checks=None)])  # a gain of two sd
    assert v["call"] == "inconclusive" and "REPEATS=" in v["reason"], v
    assert v["threshold"] > 2 * SIGMA and v["noise_df"] == 8
    # one sd: even the median of 9 repeats could not tell it from the noise
    v = judge(base, [run_row("c1", "cand", best - SIGMA, checks=None)])
    assert v["call"] == "inconclusive" and "treat it as noise" in v["reason"], v


def test_override_runs_failed_checks_and_unkept_runs_are_never_the_best():
    good = run_row("b0", "base", 2.00)
    lucky_override = run_row("o1", "base", 1.50, overrides={"ITERATIONS": "100"},
                             settings={"TRAIN_BUDGET_TOKENS": "294912"})
    failed_checks = run_row("f1", "base", 1.60, checks=False)
    unchecked = run_row("u1", "base", 1.70, checks=None)
    discarded = run_row("d1", "other", 1.80)  # never committed: not kept
    crashed = run_row("x1", "base", 1.40, status="crash")
    history = [good, lucky_override, failed_checks, unchecked, discarded, crashed]
    v = judge(history, [run_row("c0", "cand", 1.99, tok_s=1200.0, checks=None)])
    assert v["compared_with"] == "b0" and abs(v["delta"] + 0.01) < 1e-9, v


def test_never_compares_across_profiles_datasets_budgets_machines_or_settings():
    current = run_row("c0", "cand", 1.9, checks=None)
    variants = [
        run_row("p", "base", 2.0, profile="confirm"),
        run_row("d", "base", 2.0, dataset={"fingerprint": "other"}),
        run_row("b", "base", 2.0, budget={"kind": "tokens", "value": 65536, "source": "machine file"}),
        run_row("m", "base", 2.0, machine={"hostname": "mac", "machine": "arm64", "cpu_count": 10}),
        run_row("s", "base", 2.0, settings={"TRAIN_BUDGET_TOKENS": "294912", "VAL_MAX_TOKENS": "8"}),
    ]
    for other in variants:
        v = judge([other], [current])
        assert v["call"] == "keep" and v["compared_with"] is None and "baseline" in v["reason"], other
    # what differs per run (run id, seed, harness knobs) does not make runs incomparable
    same = run_row("z", "base", 2.0, settings={"TRAIN_BUDGET_TOKENS": "294912", "RUN_ID": "z",
                                               "SEED": "9", "AUTOGOLF_START_TIME": "1"})
    assert judge([same], [current])["compared_with"] == "z"


def test_a_run_with_overrides_is_not_judged_against_kept_runs():
    v = judge([run_row("b0", "base", 2.0)],
              [run_row("c0", "cand", 1.5, overrides={"NUM_LAYERS": "12"}, checks=None)])
    assert v["call"] == "inconclusive" and "NUM_LAYERS" in v["reason"]


def test_noise_floor_counts_a_deterministic_rerun_once_and_pools_trainers():
    rows = [run_row("a1", "A", 2.00, seed=1), run_row("a2", "A", 2.00, seed=1),
            run_row("a3", "A", 2.02, seed=2), run_row("b1", "B", 1.90, seed=1),
            run_row("b2", "B", 1.94, seed=2)]
    noise = V.noise_floor(rows, V.comparison_key(rows[0]))
    # A: {2.00, 2.02} and B: {1.90, 1.94}: pooled variance (0.0002 + 0.0008) / 2
    assert noise.df == 2 and noise.trainer_hashes == 2
    assert abs(noise.sd - (0.0005 ** 0.5)) < 1e-12
    assert V.noise_floor(rows[:2], V.comparison_key(rows[0])) is None


def test_format_line_is_one_line_with_every_field():
    v = judge([run_row("b0", "base", 2.0)], [run_row("c0", "cand", 2.01, tok_s=900.0, checks=None)])
    line = V.format_line(v)
    assert line.startswith("VERDICT discard delta=+0.0100 noise=unknown") and "\n" not in line
    assert "throughput=-10.0%" in line and "min_improvement=0.002" in line and "vs=b0" in line


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def trainer_repo(root: Path) -> tuple[Path, Path]:
    """A fresh git repository with a benchmark/ folder: (repo, its trainer path)."""
    repo = root / "repo"
    (repo / "benchmark").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    return repo, repo / "benchmark" / "train_gpt_mlx.py"


def test_kept_means_committed_in_the_history_of_head(tmp_path):
    repo, trainer = trainer_repo(tmp_path)
    shas = []
    for version in ("baseline = 1\n", "kept change = 2\n"):
        trainer.write_text(version)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", version)
        shas.append(file_sha256(trainer))
    trainer.write_text("discarded change = 3\n")  # run, then reverted: never committed
    discarded = file_sha256(trainer)
    _git(repo, "checkout", "-q", "--", ".")
    _git(repo, "checkout", "-qb", "side")
    trainer.write_text("on another branch\n")
    _git(repo, "commit", "-qam", "side")
    side = file_sha256(trainer)
    _git(repo, "checkout", "-q", "-")
    kept = V.kept_trainer_hashes(repo)
    assert set(shas) <= kept and discarded not in kept and side not in kept
    assert V.kept_trainer_hashes(tmp_path / "not-a-repo") == set()


def test_repeats_summary_says_how_much_the_step_count_explains():
    from autogolf.judge import repeats

    rows = [{"run_id": f"r{i}", "status": "ok", "repeat": {"seed": str(i)},
             "metrics": {"val_bpb": 2.0 - 0.01 * steps + noise, "train_steps": steps}}
            for i, (steps, noise) in enumerate(((100, 0.0), (104, 0.001), (98, -0.001), (101, 0.0)))]
    summary = repeats.summarize(rows)
    assert summary["median"] == pytest.approx(statistics.median(r["metrics"]["val_bpb"] for r in rows))
    assert 0.95 < summary["steps_r2"] <= 1.0
    assert "the step count explains" in repeats.describe(summary)
    fixed = repeats.summarize([dict(r, metrics=dict(r["metrics"], train_steps=36)) for r in rows])
    assert "steps_r2" not in fixed  # a token budget: the same steps every time
    assert [p["seed"] for p in repeats.plan(3, "g", {"SEED": "7"})] == ["7", "8", "9"]


def test_a_slowdown_within_the_measured_spread_of_tok_s_does_not_block_a_gain():
    swinging = [run_row(f"s{i}", "base", 2.0 + 0.0005 * i, group="s", seed=i, tok_s=t,
                        checks=True if i == 2 else None) for i, t in enumerate((700.0, 1000.0, 1300.0))]
    v = judge(swinging, [run_row("c0", "cand", 1.95, tok_s=800.0, checks=None)])
    assert v["call"] == "keep" and v["throughput_change"] == -0.2, v
