"""Every number the harness reports or judges by is the harness's own (issue 15, part B).

Each test is a real `bash autoresearch.sh` run of a modified trainer on small data, and each
is caught with the one-line reason asserted. Every tamper is code inserted just before the
trainer's final `if __name__ == "__main__":` line (module-level names rewrapped), so it does
not depend on the trainer's body:
  - code that patches the scorer from inside harness_load (numpy, the scorer module,
    builtins) while the log prints a lowered val_bpb: the trusted scorer never runs trainer
    code, so its own score disagrees (and garbage logits fail with a clear reason);
  - size lies: an artifact over the cap while the log's size line says small; a size line
    that disagrees with the files;
  - extra optimizer steps with the printed clock adjusted: more harness-measured time, not
    a better run;
  - printed step times that lie: the VERDICT's throughput is the harness's;
  - next-token leaks at odd positions, and at positions divisible by 3: the random probe;
  - training on the selection slice: "selection gain not confirmed by the holdout".

The module shares one project whose baseline is three seeds (REPEATS=3) of the committed
trainer at 30 smoke steps (logs/machine.json), with its checks passed: it is kept, and its
repeats measure the noise of val_bpb, of the holdout and of the throughput.
"""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from autoresearch_helpers import (bench_env, ledger_rows, make_project, make_tiny_dataset, metric_lines,
                                  run_bench, summary_line)
from autogolf.measure import causality
from autogolf.run import budget

TRAINER = "benchmark/train_gpt_mlx.py"
MAIN_GUARD = 'if __name__ == "__main__":'
STEPS = 30  # enough training that extra steps and a memorized slice show over start-up


def before_main(code: str):
    """A tamper: `code` inserted just before the trainer's final main guard."""
    def edit(text: str) -> str:
        at = text.rindex(MAIN_GUARD)
        return text[:at] + code.strip("\n") + "\n\n\n" + text[at:]
    return edit


# The trainer's log lines rewritten on their way out: main()'s log() prints each line to the
# console and to the log file through the name `print`, which a module-level def shadows.
REWRITE_LOG = '''
import re as _re, builtins as _builtins
def print(*args, **kwargs):
    if args and isinstance(args[0], str):
        args = (_rewrite(args[0]),) + args[1:]
    return _builtins.print(*args, **kwargs)
'''

LOWER_BPB = REWRITE_LOG + '''
def _rewrite(msg):
    m = _re.match(r"(final_int8_zlib_roundtrip(?:_exact)? val_loss:\\S+ val_bpb:)(\\S+)(.*)", msg)
    return f"{m[1]}{float(m[2]) - 0.5:.8f}{m[3]}" if m else msg
'''

PATCH_SCORE_MODULE = LOWER_BPB + '''
_load = harness_load
def harness_load(blob):  # patches once: the scorer may load twice (the artifact-only check)
    import sys as _sys
    for _mod in list(_sys.modules.values()):  # the scorer, whatever name it runs under (__main__)
        _orig = getattr(_mod, "score_tokens", None)
        if callable(_orig) and not getattr(_orig, "lowered", False):
            def _lowered(*a, _orig=_orig, **k):
                out = _orig(*a, **k)
                out["val_bpb"] -= 0.5
                return out
            _lowered.lowered = True
            _mod.score_tokens = _lowered
    return _load(blob)
'''

# numpy's log and exp patched where harness_load runs (the scorer once did its arithmetic
# with them there), and the printed number lowered by 0.5
PATCH_NUMPY = LOWER_BPB + '''
_load = harness_load
def harness_load(blob):
    import numpy as _np
    if not getattr(_np.log, "lowered", False):
        _log, _exp = _np.log, _np.exp
        _np.log = lambda x, *a, **k: _log(x, *a, **k) - 0.35
        _np.exp = lambda x, *a, **k: _exp(x, *a, **k) * 0.7
        _np.log.lowered = True
    return _load(blob)
'''

# the standard library's JSON writer rewrites the scorer's result on its way out
PATCH_BUILTINS = LOWER_BPB + '''
_load = harness_load
def harness_load(blob):
    import builtins, json as _json
    if not builtins.__dict__.get("_lowered"):
        _dumps = _json.dumps
        def _dumps_lowered(obj, *a, **k):
            if isinstance(obj, dict) and isinstance(obj.get("selection"), dict):
                obj["selection"]["val_bpb"] -= 0.5
            return _dumps(obj, *a, **k)
        _json.dumps = _dumps_lowered
        builtins.__dict__["_lowered"] = True
    return _load(blob)
'''

GARBAGE_LOGITS = '''
_load = harness_load
def harness_load(blob):
    fn, seq_len = _load(blob)
    return (lambda ids: fn(ids) * float("nan")), seq_len
'''

SIZE_OVER_CAP = REWRITE_LOG + '''
def _rewrite(msg):
    if msg.startswith("serialized_model_int8_zlib:"):
        import os as _os
        artifact = Path(_os.environ["OUT_DIR"]) / f"{_os.environ['RUN_ID']}_mlx_model.int8.ptz"
        with artifact.open("ab") as f:
            f.write(b"\\0" * 17_000_000)
    return msg
'''

SIZE_DISAGREES = REWRITE_LOG + '''
def _rewrite(msg):
    m = _re.match(r"serialized_model_int8_zlib:(\\d+) bytes(.*)", msg)
    return f"serialized_model_int8_zlib:{int(m[1]) - 5000} bytes{m[2]}" if m else msg
'''

# Two more optimizer steps, on fresh batches, after each real one; the trainer's clock is
# moved back by their time, so its printed train_time and step_avg show only the real ones.
EXTRA_STEPS = '''
import time as _time_module
class _Clock:
    offset = 0.0
    def perf_counter(self):
        return _time_module.perf_counter() - self.offset
    def __getattr__(self, name):
        return getattr(_time_module, name)
time = _Clock()
_saved = {}
_chunked = loss_and_grad_chunked
def loss_and_grad_chunked(*a, **k):
    _saved["a"] = a
    return _chunked(*a, **k)
_step = SplitOptimizers.step
def _more_steps(self, model, grads_tree, step, lr_mul):
    _step(self, model, grads_tree, step=step, lr_mul=lr_mul)
    t = _time_module.perf_counter()
    for _ in range(2):
        mx.eval(model.parameters())
        loss, g = _chunked(*_saved["a"])
        _step(self, model, clip_grad_tree(g, _saved["a"][0].grad_clip_norm), step=step, lr_mul=lr_mul)
    mx.eval(model.parameters())
    time.offset += _time_module.perf_counter() - t
SplitOptimizers.step = _more_steps
'''

HALVED_CLOCK = REWRITE_LOG + '''
def _rewrite(msg):
    msg = _re.sub(r"(train_time:)([0-9.]+)", lambda m: f"{m[1]}{float(m[2]) / 2:.0f}", msg)
    msg = _re.sub(r"(step_avg:)([0-9.]+)", lambda m: f"{m[1]}{float(m[2]) / 2:.2f}", msg)
    return _re.sub(r"(tok_s:)([0-9.]+)", lambda m: f"{m[1]}{float(m[2]) * 2:.0f}", msg)
'''


def leak_at(condition: str) -> str:
    """The model reads the next token at the positions where `condition` (of pos) holds."""
    return f'''
_gpt_call = GPT.__call__
def _leaky(self, input_ids):
    pos = mx.arange(input_ids.shape[1])
    nxt = mx.concatenate([input_ids[:, 1:], input_ids[:, -1:]], axis=1)
    return _gpt_call(self, mx.where(({condition})[None, :], nxt, input_ids))
GPT.__call__ = _leaky
'''


TRAIN_ON_SELECTION = '''
_stream_init = TokenStream.__init__
def _on_selection(self, pattern, *a, **k):  # the training stream reads the view's validation slice
    _stream_init(self, pattern.replace("fineweb_train_", "fineweb_val_"), *a, **k)
TokenStream.__init__ = _on_selection
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory, corpus):
    """(project, env): a project whose baseline (3 seeds, checks passed) is kept."""
    root = tmp_path_factory.mktemp("authority")
    dataset, tokenizer = make_tiny_dataset(root / "data", corpus)
    project = make_project(root / "project")
    # upstream's warm-down (1,200 iterations) would keep 30 steps near LR 0, where neither a
    # memorized slice nor extra steps show: this project's trainer warms down over 10, committed
    # (HEAD's own default, not an override, so its runs can be kept)
    trainer = project / TRAINER
    text = trainer.read_text(encoding="utf-8")
    assert text.count('os.environ.get("WARMDOWN_ITERS", 1200)') == 1
    trainer.write_text(text.replace('os.environ.get("WARMDOWN_ITERS", 1200)', 'os.environ.get("WARMDOWN_ITERS", 10)'),
                       encoding="utf-8")
    subprocess.run(["git", "-C", str(project), "commit", "-qam", "warm down over 10 steps"], check=True)
    machine = project / budget.MACHINE_RELPATH
    machine.parent.mkdir(parents=True, exist_ok=True)
    machine.write_text(json.dumps({"host": socket.gethostname(), "at": "tests",
                                   "profiles": {"smoke": {"ITERATIONS": STEPS}}}))
    env = bench_env(dataset, tokenizer, root / "lock")
    out = run_bench(project, dict(env, REPEATS="3"), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.rstrip().splitlines()[-1].startswith("VERDICT keep "), out.stdout[-2000:]
    checks = subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, text=True,
                            timeout=600)
    assert checks.returncode == 0, checks.stdout[-2000:]
    return project, env, root


def run(lab, tamper=None, name: str = "tampered", **extra):
    project, env, root = lab
    env = dict(env, **extra)
    if tamper is not None:
        path = root / f"{name}.py"
        path.write_text(tamper((project / TRAINER).read_text(encoding="utf-8")), encoding="utf-8")
        env["AUTOGOLF_TRAINER"] = str(path)
    out = run_bench(project, env, timeout=600)
    return out, ledger_rows(project)[-1]


def baseline_rows(lab) -> list[dict]:
    return [r for r in ledger_rows(lab[0]) if (r.get("repeat") or {}).get("of") == 3][:3]


def test_the_untampered_baseline_agrees_and_every_run_is_probed_at_random(lab):
    rows = baseline_rows(lab)
    assert [r["status"] for r in rows] == ["ok"] * 3
    for row in rows:
        score = row["harness_score"]
        assert score["abs_diff"] <= score["tolerance"] and score["probe"] == "passed"
        draw = score["probe_detail"]["draw"]
        assert len(draw["cuts"]) == causality.ROWS and {c % 2 for c in draw["cuts"]} == {0, 1}
        assert {c % 3 for c in draw["cuts"]} == {0, 1, 2}
        assert row["holdout"]["val_bpb"] > 0  # every run that could be kept: the holdout
        assert row["sizes"]["total_bytes"] == row["metrics"]["total_bytes"] == \
            row["sizes"]["artifact_bytes"] + row["sizes"]["trainer_bytes"]
    assert len({r["harness_score"]["probe_detail"]["draw"]["seed"] for r in rows}) == 3  # a new draw per run
    print("\nprobe draws: " + "; ".join(str(r["harness_score"]["probe_detail"]["draw"]["cuts"]) for r in rows))


@pytest.mark.parametrize("name", ["score_module", "numpy", "builtins"])
def test_trainer_code_cannot_patch_the_scorer(lab, name):
    tamper = {"score_module": PATCH_SCORE_MODULE, "numpy": PATCH_NUMPY, "builtins": PATCH_BUILTINS}[name]
    out, row = run(lab, before_main(tamper), name=f"patch_{name}")
    summary = summary_line(out.stdout)
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert "the harness scored the artifact at val_bpb" in summary and "but the trainer printed" in summary
    assert abs(row["harness_score"]["val_bpb"] - row["harness_score"]["trainer_val_bpb"]) > 0.4
    assert "val_bpb" not in metric_lines(out.stdout)
    print(f"\n{name}: {summary.split('reason: ', 1)[1]}")


def test_garbage_logits_fail_with_a_clear_reason(lab):
    out, row = run(lab, before_main(GARBAGE_LOGITS), name="garbage")
    summary = summary_line(out.stdout)
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert "the harness could not score the artifact: harness_load's logits hold non-finite values" in summary
    print(f"\ngarbage: {summary.split('reason: ', 1)[1]}")


def test_an_artifact_over_the_cap_is_caught_whatever_the_log_says(lab):
    out, row = run(lab, before_main(SIZE_OVER_CAP), name="over_cap")
    summary = summary_line(out.stdout)
    assert out.returncode == 3 and row["status"] == "cap_violation", out.stdout[-3000:]
    assert row["sizes"]["logged_total_bytes"] < 1_000_000 < 16_000_000 < row["sizes"]["total_bytes"]
    assert f"artifact is {row['sizes']['total_bytes']:,} bytes, over the 16,000,000-byte cap" in summary
    print(f"\nover cap: {summary.split('reason: ', 1)[1]}")


def test_a_size_line_that_disagrees_with_the_files_fails_the_run(lab):
    out, row = run(lab, before_main(SIZE_DISAGREES), name="size_line")
    summary = summary_line(out.stdout)
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert row["sizes"]["total_bytes"] - row["sizes"]["logged_total_bytes"] == 5000
    assert "the log says total_bytes" in summary and "the log's size line is wrong" in summary
    print(f"\nsize line: {summary.split('reason: ', 1)[1]}")


@pytest.mark.alone  # compares run times: a neighbour's load would skew them
def test_extra_optimizer_steps_show_as_harness_time_not_as_a_better_run(lab):
    base = baseline_rows(lab)[0]
    out, row = run(lab, before_main(EXTRA_STEPS), name="extra_steps")
    assert out.returncode == 0 and row["status"] == "ok", out.stdout[-3000:]
    printed = row["metrics"]
    assert printed["train_steps"] == STEPS  # the log says the budget's steps...
    # the harness's clock sees more extra time than the trainer's printed clock admits (both
    # are loaded by whatever else runs, so no fixed ratio of the printed one is asserted)
    extra_measured = row["timing"]["trainer_s"] - base["timing"]["trainer_s"]
    assert extra_measured > 0.5 * base["train_s"] and extra_measured > row["train_s"] - base["train_s"]
    v = row["verdict"]
    assert v["call"] != "keep" and v["throughput_change"] < -0.15, v
    print(f"\nextra steps: trainer_s {base['timing']['trainer_s']:.1f} -> {row['timing']['trainer_s']:.1f}, "
          f"printed train_s {base['train_s']:.1f} -> {row['train_s']:.1f}; "
          f"{out.stdout.rstrip().splitlines()[-1]}")


@pytest.mark.alone  # compares run times: a neighbour's load would skew them
def test_printed_step_times_that_lie_do_not_move_the_verdict(lab):
    base = baseline_rows(lab)
    out, row = run(lab, before_main(HALVED_CLOCK), name="halved_clock", REPEATS="3")
    assert out.returncode == 0, out.stdout[-3000:]
    printed = row["metrics"]["tok_s"] / base[-1]["metrics"]["tok_s"]
    measured = row["metrics"]["harness_tok_s"] / base[-1]["metrics"]["harness_tok_s"]
    assert printed > 1.4 * measured  # the lie reached the log; the harness's clock did not follow
    v = row["verdict"]
    assert v["call"] != "keep" and v["delta"] == pytest.approx(0.0, abs=1e-9), v
    assert abs(v["throughput_change"]) < 0.5, v  # the harness's clock: no +100%
    print(f"\nhalved clock: printed tok_s {base[-1]['metrics']['tok_s']:.0f} -> {row['metrics']['tok_s']:.0f}; "
          f"{out.stdout.rstrip().splitlines()[-1]}")


@pytest.mark.parametrize("condition", ["pos % 2 == 1", "pos % 3 == 0"])
def test_a_next_token_leak_at_some_positions_fails_the_random_probe(lab, condition):
    out, row = run(lab, before_main(leak_at(condition)), name="leak")
    summary = summary_line(out.stdout)
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert "causality probe failed" in summary and "drawn at random, seed" in summary
    detail = row["harness_score"]["probe_detail"]
    modulus, residue = (2, 1) if "% 2" in condition else (3, 0)
    assert detail["failing_cuts"] and all(c % modulus == residue for c in detail["failing_cuts"])
    print(f"\n{condition}: {summary.split('reason: ', 1)[1]}")


def test_training_on_the_selection_slice_is_not_kept(lab):
    out, row = run(lab, before_main(TRAIN_ON_SELECTION), name="on_selection")
    assert out.returncode == 0 and row["status"] == "ok", out.stdout[-3000:]
    v = row["verdict"]
    last = out.stdout.rstrip().splitlines()[-1]
    assert v["call"] == "discard" and "selection gain not confirmed by the holdout" in last, last
    assert v["delta"] < 0 < v["holdout_delta"] or v["holdout_delta"] > v["delta"] / 2, v
    assert f"selection delta {v['delta']:+.4f}, holdout delta {v['holdout_delta']:+.4f}" in last
    print(f"\non selection: {last}")


SLOW_CLOCK = '''
import time as _time_module
class _SlowClock:
    start = _time_module.perf_counter()
    def perf_counter(self):  # the trainer's clock runs 10 times slow: it trains 10 times too long
        return self.start + (_time_module.perf_counter() - self.start) / 10
    def __getattr__(self, name):
        return getattr(_time_module, name)
time = _SlowClock()
'''

WALL_PROFILE = '''

[profiles.wallsmoke]
description = "smoke's model under a 3 s wall-clock budget (tests)"
timeout_seconds = 300
over_budget_allowance_seconds = 15
holdout_tokens = 4096

[profiles.wallsmoke.env]
MAX_WALLCLOCK_SECONDS = 3
ITERATIONS = 1000000
'''


@pytest.mark.alone  # compares run times: a neighbour's load would skew them
def test_a_wall_clock_run_past_its_budget_and_allowance_is_over_budget(tmp_path, corpus):
    """A wall-clock profile (added to a project's profiles.toml and committed): the untampered
    trainer is ok; one whose clock runs slow trains far past the budget and is over_budget."""
    dataset, tokenizer = make_tiny_dataset(tmp_path / "data", corpus)
    project = make_project(tmp_path / "project")
    profiles_file = project / "autogolf" / "run" / "profiles.toml"
    text = profiles_file.read_text(encoding="utf-8")
    smoke_env = text.split("[profiles.smoke.env]", 1)[1]
    smoke_env = "\n".join(line for line in smoke_env.strip().splitlines()
                          if not line.startswith(("MAX_WALLCLOCK_SECONDS", "ITERATIONS")))
    profiles_file.write_text(text + WALL_PROFILE + smoke_env + "\n", encoding="utf-8")
    subprocess.run(["git", "-C", str(project), "commit", "-qam", "a wall-clock test profile"], check=True)
    env = bench_env(dataset, tokenizer, tmp_path / "lock", PROFILE="wallsmoke")
    out = run_bench(project, env, timeout=600)
    row = ledger_rows(project)[-1]
    assert out.returncode == 0 and row["status"] == "ok", out.stdout[-3000:]
    assert row["timing"]["trainer_s"] < 18
    trainer = tmp_path / "slow_clock.py"
    trainer.write_text(before_main(SLOW_CLOCK)((project / TRAINER).read_text(encoding="utf-8")), encoding="utf-8")
    out = run_bench(project, dict(env, AUTOGOLF_TRAINER=str(trainer)), timeout=600)
    row = ledger_rows(project)[-1]
    summary = summary_line(out.stdout)
    assert out.returncode == 5 and row["status"] == "over_budget", out.stdout[-3000:]
    assert row["train_s"] < 10  # its printed clock says it kept to the budget
    assert "past its 3 s wall-clock budget + the profile's 15 s allowance (18 s)" in summary, summary
    print(f"\nover budget: {summary.split('reason: ', 1)[1]}")
