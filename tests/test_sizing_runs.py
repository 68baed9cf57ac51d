"""Breadth sized to the machine, through real `bash autoresearch.sh` runs and the real
`just calibrate --quick` (the real trainer with a tiny model on tiny data, in a throw-away
git project): the probe, its record, the summary and VERDICT lines, the measured baseline,
a new baseline when the choice changes, a slower machine choosing less, and the warning."""

from __future__ import annotations

import json
import re
import subprocess

from autoresearch_helpers import git, ledger_rows, run_bench, summary_line

# A tiny model (the variables are the trainer's, not breadth's, so they are no override)
TINY = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
        "TRAIN_SEQ_LEN": "128", "MLX_MAX_MICROBATCH_TOKENS": "2048"}


def breadth_env(env: dict, **extra: str) -> dict:
    return dict(env, PROFILE="breadth", **TINY, **extra)


def machine(project) -> dict:
    return json.loads((project / "logs" / "machine.json").read_text())


def slow_steps(project, seconds: float) -> None:
    """The trainer sleeps after every optimizer step: a slower machine, or a slower change."""
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    text = trainer.read_text()
    anchor = "        step_ms = 1000.0 * (time.perf_counter() - step_t0)\n"
    assert anchor in text
    trainer.write_text(text.replace(anchor, f"        time.sleep({seconds})\n" + anchor))


def test_the_first_breadth_run_sizes_the_machine_and_later_runs_follow_it(project, env):
    out = run_bench(project, breadth_env(env, AUTOGOLF_SIZING_TARGET="1"), timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "autoresearch: sizing breadth to this machine: probing the baseline trainer" in out.stdout
    record = machine(project)["sizing"]["breadth"]
    probe = record["probe"]
    assert probe["train_tok_s"] > 0 and probe["fixed_s"] > 0 and probe["probe_s"] > 0
    assert probe["trainer_sha256"] and probe["at"].startswith("20")
    # a 1 s target fits no rung: the smallest, and the record says why
    assert record["tokens"] == record["ladder"][0] and "even the smallest rung" in record["note"]
    summary = summary_line(out.stdout)
    timeout = int(re.search(r" timeout=(\d+)s ", summary).group(1))
    assert f"budget={record['tokens']:,}tok(probe {probe['at'][:10]} " in summary
    assert re.search(r"pi_timeout=(\d+)s", summary)
    verdict_line = out.stdout.rstrip().splitlines()[-1]
    pi_timeout = int(re.search(r"timeout_seconds=(\d+) ", verdict_line).group(1))
    assert pi_timeout >= 2 * timeout
    row = ledger_rows(project)[-1]
    assert row["budget"]["value"] == record["tokens"] and row["sizing"]["state"] == "sized"
    assert row["sizing"]["timeout_s"] == timeout >= 2 * row["sizing"]["expected_trainer_s"]
    measured = machine(project)["sizing"]["breadth"]["measured"]
    assert measured["run_id"] == row["run_id"] and measured["trainer_s"] > 0
    assert not list((project / "logs" / "probe").glob("*/*.npz"))  # the probe's weights are gone
    subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, timeout=300)

    # the second run does not probe; its timeout follows the measured baseline
    out = run_bench(project, breadth_env(env), timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "probing the baseline trainer" not in out.stdout
    row = ledger_rows(project)[-1]
    assert row["sizing"]["basis"].startswith("measured")
    subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, timeout=300)

    # a new choice (a re-sizing on a faster day) starts a new baseline, and the VERDICT says so
    data = machine(project)
    old = data["sizing"]["breadth"]["tokens"]
    new = data["sizing"]["breadth"]["ladder"][1]
    data["sizing"]["breadth"]["tokens"] = new
    (project / "logs" / "machine.json").write_text(json.dumps(data))
    out = run_bench(project, breadth_env(env), timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    assert out.stdout.rstrip().splitlines()[-1].startswith(
        "VERDICT keep delta=n/a") and f"new baseline: the training budget changed from {old:,} tokens " \
        f"to {new:,} tokens" in out.stdout
    status = subprocess.run([".venv/bin/python", "-m", "autogolf.agent.status"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=60).stdout
    assert f"changed from {old:,} tokens to {new:,} tokens" in status, status
    assert f"sizing   breadth: {new:,} tokens" in status
    report = subprocess.run([".venv/bin/python", "-m", "autogolf.lab.report"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120).stdout
    assert f"budget change: breadth from {old:,} tokens to {new:,} tokens" in report, report


def test_a_slower_machine_gets_a_smaller_budget_and_a_slow_run_is_warned(project, env):
    quick = [".venv/bin/python", "-m", "autogolf.lab.calibrate", "--quick"]
    cal_env = breadth_env(env, AUTOGOLF_SIZING_TARGET="60")
    out = subprocess.run(quick, cwd=project, env=cal_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    fast = machine(project)["sizing"]["breadth"]

    # the same machine made slower (every step sleeps 2 s, several times a tiny model's step):
    # the probe measures it, and the rung shrinks
    slow_steps(project, 2.0)
    git(project, "commit", "-qam", "a slower baseline")
    out = subprocess.run(quick, cwd=project, env=cal_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    slow = machine(project)["sizing"]["breadth"]
    assert slow["probe"]["train_tok_s"] < fast["probe"]["train_tok_s"] / 2
    assert slow["tokens"] < fast["tokens"], (fast["tokens"], slow["tokens"])
    assert slow["history"][-1]["tokens"] == fast["tokens"]
    assert "the next run of breadth starts a new baseline" in out.stdout

    # a change that makes the step much slower than the timeout allows: warned early, then
    # a timeout whose summary says by how much it missed
    slow_steps(project, 2.0)
    out = run_bench(project, breadth_env(env, AUTOGOLF_TIMEOUT="25"), timeout=600)
    assert out.returncode == 124, out.stdout[-4000:]
    warning = next(l for l in out.stdout.splitlines() if "autoresearch: warning: projected trainer time" in l)
    assert "exceeds the 25 s hard timeout" in warning
    summary = summary_line(out.stdout)
    assert summary.startswith("autoresearch: timeout ")
    assert re.search(r"it needed about \d+ s, \+\d+ s \(\d+\.\dx\) over the 25 s timeout", summary), summary
    row = ledger_rows(project)[-1]
    assert row["status"] == "timeout"
