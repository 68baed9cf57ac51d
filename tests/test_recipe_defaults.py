"""Profiles fix only the measurement: a change to any recipe default in the trainer reaches
the run under every profile the agent is judged by (issue 8, item 5).

For each recipe field of the trainer's Hyperparameters (every field that is not a budget,
validation, logging or how-to-compute setting), the default is changed in a copy of the
real trainer, the copy is loaded, and the hyperparameters it resolves from the profile's
environment must differ from the unchanged trainer's. A real run then shows a warm-down
change moving val_bpb."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from autogolf.run import profiles
from autogolf.judge.verdict import comparable_settings
from conftest import REPO

TRAINER = REPO / "benchmark" / "train_gpt_mlx.py"
# What a profile may fix: the budget, the validation slice, logging, and how to compute
# without changing the mathematics (data paths, run id and output folder are per run).
MEASUREMENT = {
    "data_path", "tokenizer_path", "run_id", "out_dir",
    "iterations", "max_wallclock_seconds", "train_budget_tokens",
    "val_loss_every", "val_batch_size", "val_max_tokens", "train_log_every",
    "grad_accum_steps", "mlx_max_microbatch_tokens", "mlx_eager_eval", "warmup_steps",
    "compute_dtype", "attn_block_size", "cpu_streams",
}
# Documented in profiles.toml: under a wall-clock budget there is no token count to size
# the batch from, so confirm and full fix a laptop-sized one. Smoke (tests) pins a tiny model.
PINNED = {"confirm": {"train_batch_tokens"}, "full": {"train_batch_tokens"}}
JUDGED_PROFILES = ("breadth", "confirm", "full")
# Changes that matter where the default is clamped by the budget: the batch is at most
# TRAIN_BATCH_TOKENS, the warm-down at most WARMDOWN_ITERS steps (36-step breadth).
SPECIAL = {"train_batch_tokens": "4096", "warmdown_iters": "12", "warmdown_frac": "0.5"}


def load_trainer(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def changed_value(field: dataclasses.Field) -> str:
    if field.name in SPECIAL:
        return SPECIAL[field.name]
    default = field.default
    if isinstance(default, bool):
        return repr(not default)
    if isinstance(default, int):
        return repr(default * 2 if default else 1)
    if isinstance(default, float):
        return repr(default * 1.5 if default else 0.5)
    return repr(default + ",changed" if default else "changed")


def recipe_fields(module) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(module.Hyperparameters) if f.name not in MEASUREMENT]


@pytest.fixture(scope="module")
def original():
    return load_trainer(TRAINER, "train_gpt_mlx_recipe_original")


def resolved(module, profile: str) -> dict:
    env = dict(profiles.load(profile, environ={}).resolved, RUN_ID="fixed")
    return dataclasses.asdict(module.hyperparameters_from_env(env))


def test_profiles_fix_no_recipe_knob(original):
    recipe = {f.name.upper() for f in recipe_fields(original)}
    assert {"MATRIX_LR", "NUM_LAYERS", "WARMDOWN_ITERS", "WARMDOWN_FRAC", "TRAIN_BATCH_TOKENS"} <= recipe
    for name in JUDGED_PROFILES:
        fixed = set(profiles.load(name, environ={}).env)
        allowed = {p.upper() for p in PINNED.get(name, ())}
        assert fixed & recipe <= allowed, (name, sorted(fixed & recipe - allowed))


def test_a_change_to_each_recipe_default_changes_the_run(original, tmp_path):
    source = TRAINER.read_text(encoding="utf-8")
    baseline = {p: resolved(original, p) for p in JUDGED_PROFILES}
    fields = recipe_fields(original)
    assert len(fields) >= 25
    for i, field in enumerate(fields):
        # the default: one line, or a parenthesized expression over several
        pattern = re.compile(rf"^(    {field.name}: [\w\[\]| ]+ = )(\((?:.|\n)*?\)|.+?)(\s*#.*)?$", re.M)
        assert len(pattern.findall(source)) == 1, field.name
        edited = pattern.sub(lambda m: m.group(1) + changed_value(field) + (m.group(3) or ""), source)
        copy = tmp_path / f"trainer_{i}.py"
        copy.write_text(edited, encoding="utf-8")
        module = load_trainer(copy, f"train_gpt_mlx_recipe_{i}")
        for profile in JUDGED_PROFILES:
            if field.name in PINNED.get(profile, ()):
                continue
            assert resolved(module, profile) != baseline[profile], \
                f"changing {field.name}'s default to {changed_value(field)} has no effect under {profile}"


def test_a_warmdown_change_in_the_trainer_moves_val_bpb_in_a_real_run(tmp_path, corpus):
    """Two real smoke runs: the trainer as it is, then with WARMDOWN_FRAC's default at 0.25
    (the warm-down over the last quarter of the 4 steps instead of all of them)."""
    from autoresearch_helpers import bench_env, ledger_rows, make_project, make_tiny_dataset, run_bench

    dataset, tokenizer = make_tiny_dataset(tmp_path / "data", corpus)
    project = make_project(tmp_path / "project")
    env = bench_env(dataset, tokenizer, tmp_path / "machine.lock")
    assert run_bench(project, env).returncode == 0
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    text = trainer.read_text()
    assert text.count("warmdown_frac: float = 1.0") == 1
    trainer.write_text(text.replace("warmdown_frac: float = 1.0", "warmdown_frac: float = 0.25"))
    out = run_bench(project, env)
    assert out.returncode == 0, out.stdout[-2000:]
    first, second = ledger_rows(project)
    assert second["overrides"] == {}
    assert comparable_settings(first) == comparable_settings(second)  # the same measurement
    assert abs(first["metrics"]["val_bpb"] - second["metrics"]["val_bpb"]) > 1e-4, \
        (first["metrics"]["val_bpb"], second["metrics"]["val_bpb"])


def test_budget_rules_keep_upstream_and_size_breadth(original):
    hp = original.hyperparameters_from_env({"RUN_ID": "x"})  # upstream's defaults: 600 s, 1,200 steps
    step_ms = 43.5  # upstream's 8xH100 step
    for step in (1, 5000, 12000, 13000, 13700):
        elapsed = step * step_ms
        old = 1.0
        warmdown_ms = 1200 * elapsed / step
        remaining = max(600_000.0 - elapsed, 0.0)
        if remaining <= warmdown_ms:
            old = remaining / warmdown_ms
        assert hp.lr_mul(step, elapsed) == pytest.approx(old), step
    assert hp.iterations == 20_000 and hp.train_batch_tokens == 524_288
    breadth = original.hyperparameters_from_env(dict(profiles.load("breadth", environ={}).resolved, RUN_ID="x"))
    assert (breadth.iterations, breadth.train_batch_tokens) == (36, 8192)
    assert [round(breadth.lr_mul(s, 0.0), 6) for s in (0, 18, 35)] == [1.0, 0.5, round(1 / 36, 6)]
    smaller = original.hyperparameters_from_env({"RUN_ID": "x", "TRAIN_BUDGET_TOKENS": "1000", "TRAIN_SEQ_LEN": "128",
                                                 "GRAD_ACCUM_STEPS": "1", "MAX_WALLCLOCK_SECONDS": "0"})
    assert (smaller.iterations, smaller.train_batch_tokens) == (7, 128)  # at least one sequence per step
