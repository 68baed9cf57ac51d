"""The harness vouches for the number: every run's artifact is scored again by the harness's
own code in its own process (autogolf/measure/score.py). Each tamper below is a real run of a
modified trainer, and each is caught with a one-line reason; the untampered run agrees to
the tolerance. On the real FineWeb fixtures with the real tokenizer, and on project-made
data so a fresh clone tests it too."""

from __future__ import annotations

import subprocess

import pytest

from autoresearch_helpers import (summary_line, bench_env, ledger_rows, make_project, make_synth_dataset,
                                  make_tiny_dataset, metric_lines, run_bench)
from autogolf.measure.score import TOLERANCE_BPB
from conftest import require_fixtures

TRAINER = "benchmark/train_gpt_mlx.py"


@pytest.fixture(scope="module", params=["fineweb_fixtures", "project_made"])
def data(request, tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "fineweb_fixtures":
        require_fixtures()  # the project-made variant below still runs
        return make_tiny_dataset(root, corpus)
    return make_synth_dataset(root)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("integrity") / "project")


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the trainer no longer has {old!r}; update this tamper"
    return text.replace(old, new)


def bytes_plus_one(text: str) -> str:
    return edit(text, "bytes_np = base_bytes_lut[tgt_ids].astype(np.int16, copy=True)\n",
                "bytes_np = base_bytes_lut[tgt_ids].astype(np.int16, copy=True) + 1\n")


def loss_scaled_down(text: str) -> str:
    return edit(text, "    val_loss = total_loss_sum / total_tokens\n", "    val_loss = total_loss_sum / total_tokens * 0.99\n")


def reads_targets(text: str) -> str:
    # each position also sees the embedding of the token it is asked to predict
    return edit(text, "x = rms_norm(self.tok_emb(input_ids).astype(COMPUTE_DTYPE))",
                "x = rms_norm((self.tok_emb(input_ids) + self.tok_emb(mx.roll(input_ids, -1, axis=1)))"
                ".astype(COMPUTE_DTYPE))")


TAMPERS = {
    "bytes_plus_one": (bytes_plus_one, "the harness scored the artifact at val_bpb"),
    "loss_scaled_down": (loss_scaled_down, "the harness scored the artifact at val_bpb"),
    "reads_targets": (reads_targets, "causality probe failed"),
}
# A loader reading raw weights kept next to the trainer file now fails earlier: the sandboxed
# trainer cannot write there (read-only). tests/test_sandbox.py runs the weights-outside-the-
# artifact tampers.


def run(project, data, tmp_path, trainer_edit=None):
    dataset, tokenizer = data
    extra = {}
    if trainer_edit is not None:
        path = tmp_path / "train_gpt_mlx.py"
        path.write_text(trainer_edit((project / TRAINER).read_text(encoding="utf-8")), encoding="utf-8")
        extra["AUTOGOLF_TRAINER"] = str(path)
    out = run_bench(project, bench_env(dataset, tokenizer, tmp_path / "lock", **extra))
    return out, ledger_rows(project)[-1]


def test_untampered_run_agrees_and_scores_the_holdout(project, data, tmp_path):
    out, row = run(project, data, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    score, holdout = row["harness_score"], row["holdout"]
    assert score["probe"] == "passed" and score["artifact_only"]["passed"]
    assert score["abs_diff"] <= TOLERANCE_BPB
    assert score["trainer_val_bpb"] == row["metrics"]["val_bpb"] == float(metric_lines(out.stdout)["val_bpb"])
    assert score["tokens"] == row["data_view"]["selection"]["tokens"] == 4096
    assert holdout["tokens"] == 4096 and holdout["val_bpb"] > 0
    sel, hold = row["data_view"]["selection"], row["data_view"]["holdout"]
    assert sel["stop"] <= hold["start"]  # disjoint
    # the holdout reaches the ledger only: no METRIC line, nothing in the agent's output
    assert not any("holdout" in line for line in out.stdout.splitlines())
    assert f"{holdout['val_bpb']:.4f}" not in out.stdout
    print(f"\nagreement: harness {score['val_bpb']:.10f} trainer {score['trainer_val_bpb']:.8f} "
          f"|diff| {score['abs_diff']:.2e}; holdout {holdout['val_bpb']:.4f}; scoring {score['seconds']:.2f} s")


def sure_of_padding(text: str) -> str:
    # every position all but certain of token 0 (padding, never a target): a loss near 30
    # nats a token, worse than any model (a uniform guess is not: it beat the 4-step smoke
    # model on the FineWeb fixtures)
    return edit(text, "        return c * mx.tanh(logits / c)\n",
                "        return c * mx.tanh(logits / c) * 0.0 + c * (mx.arange(logits.shape[-1]) == 0)\n")


def test_holdout_is_scored_only_for_runs_that_could_be_kept(project, data, tmp_path):
    """The untampered run above passes its checks, so it is kept (VERDICT keep as the
    baseline, checks passed, its trainer committed). A worse run -- sure of the wrong token --
    cannot be kept: no holdout score, unless AUTOGOLF_HOLDOUT=every; a rerun of the kept
    code is not worse, so it could be kept: its holdout is scored, equal to the first's."""
    first = [r for r in ledger_rows(project) if r["status"] == "ok" and r["dataset"]["dir"] == str(data[0])]
    assert first and first[-1]["holdout"]["val_bpb"] > 0
    checks = subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, text=True)
    assert checks.returncode == 0, checks.stdout[-2000:]
    out, row = run(project, data, tmp_path, sure_of_padding)
    assert out.returncode == 0 and row["metrics"]["val_bpb"] > first[-1]["metrics"]["val_bpb"] + 0.002
    assert row["holdout"]["val_bpb"] is None
    assert row["holdout"]["slice"].startswith("not scored: the harness's selection val_bpb") \
        and "worse than the best kept" in row["holdout"]["slice"]
    out, row = run_every(project, data, tmp_path, sure_of_padding)
    assert out.returncode == 0 and row["holdout"]["val_bpb"] > 0
    out, row = run(project, data, tmp_path)
    assert out.returncode == 0 and row["holdout"]["val_bpb"] == first[-1]["holdout"]["val_bpb"]


def run_every(project, data, tmp_path, trainer_edit=None):
    dataset, tokenizer = data
    extra = {"AUTOGOLF_HOLDOUT": "every"}
    if trainer_edit is not None:
        path = tmp_path / "train_gpt_mlx_every.py"
        path.write_text(trainer_edit((project / TRAINER).read_text(encoding="utf-8")), encoding="utf-8")
        extra["AUTOGOLF_TRAINER"] = str(path)
    out = run_bench(project, bench_env(dataset, tokenizer, tmp_path / "lock", **extra))
    return out, ledger_rows(project)[-1]


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_trainer_is_caught(project, data, tmp_path, name):
    tamper, expected = TAMPERS[name]
    out, row = run(project, data, tmp_path, tamper)
    summary = summary_line(out.stdout)
    assert out.returncode == 4, out.stdout[-3000:]
    assert row["status"] == "integrity_failed"
    assert summary.startswith("autoresearch: integrity_failed profile=smoke") and expected in summary, summary
    assert "val_bpb" not in metric_lines(out.stdout)  # a disowned number is never a METRIC
    assert row["harness_score"]["trainer_val_bpb"] == row["metrics"]["val_bpb"]  # both numbers kept
    # a failed run cannot be kept: its holdout is never scored, not even with AUTOGOLF_HOLDOUT=every
    assert row["holdout"]["val_bpb"] is None and "failed the harness's integrity check" in row["holdout"]["slice"]
    assert isinstance(row["harness_score"]["val_bpb"], float)
    print(f"\n{name}: {summary.split('reason: ', 1)[1]}")
