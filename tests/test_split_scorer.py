"""The split scorer's parts: the child that runs the trainer's model (a real process, with
tiny numpy "trainers" that define harness_load), the trusted side's checks of its replies,
the random probe's draw, and the rules that read the harness's own numbers."""

from __future__ import annotations

import numpy as np
import pytest

from autogolf.judge import verdict as V
from autogolf.measure import causality, metrics
from autogolf.measure.model_child import ChildError, ModelChild
from autogolf.run.outcome import over_budget

VOCAB = 16
SEQ = 8

# A causal "model": the logits at t are a function of ids[:, :t+1] (a running sum).
HONEST = f'''
import numpy as np
print("a trainer that prints while it loads")  # must not corrupt the pipe
def harness_load(blob):
    if len(blob) < 8:
        raise ValueError("artifact too short")
    scale = float(len(blob))
    def logits(ids):
        c = np.cumsum(ids, axis=1)[..., None]
        return (np.sin(c * np.arange({VOCAB}) / scale) * 3).astype(np.float32)
    return logits, {SEQ}
'''


def child_for(tmp_path, source: str) -> ModelChild:
    trainer = tmp_path / "trainer.py"
    trainer.write_text(source, encoding="utf-8")
    import os

    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(__import__("conftest").REPO))
    return ModelChild(trainer, env, scratch, VOCAB)


def ids(rows: int = 3) -> np.ndarray:
    return np.arange(rows * SEQ, dtype=np.int32).reshape(rows, SEQ) % VOCAB


def test_an_honest_child_serves_logits_and_a_second_model(tmp_path):
    child = child_for(tmp_path, HONEST)
    try:
        slot, seq = child.load(b"0123456789abcdef")
        assert (slot, seq) == (0, SEQ)
        out = child.logits(slot, ids())
        assert out.shape == (3, SEQ, VOCAB) and out.dtype == np.float32
        expected = (np.sin(np.cumsum(ids(), axis=1)[..., None] * np.arange(VOCAB) / 16.0) * 3).astype(np.float32)
        assert np.array_equal(out, expected)
        half, _ = child.load(b"01234567")
        assert half == 1 and not np.array_equal(child.logits(half, ids()), out)
        with pytest.raises(ChildError, match=r"harness_load could not rebuild the model from the artifact \(it must read the bytes as main\(\) "
                                                r"writes them: .*\): ValueError: artifact too short"):
            child.load(b"0")
        assert child.logits(0, ids(1)).shape == (1, SEQ, VOCAB)  # still serving after an error
    finally:
        child.close()
    assert child.proc.returncode is not None


@pytest.mark.parametrize("body, message", [
    ("return np.zeros((ids.shape[0], ids.shape[1] + 1, 16), np.float32)", "logits have shape"),
    ("return np.zeros((ids.shape[0], ids.shape[1], 4), np.float32)", "16 <= vocab <= 1040"),
    # a forged header (the child's own wire module patched): a huge reply is refused unread
    ("import autogolf.measure.wire as w; w.u64 = lambda *v, _u=w.u64: _u(*v[:2], 1 << 40) if len(v) == 3 "
     "else _u(*v); return np.zeros((ids.shape[0], ids.shape[1], 16), np.float32)", "16 <= vocab <= 1040"),
    ("return np.full((ids.shape[0], ids.shape[1], 16), np.nan, np.float32)", "non-finite values"),
    ("import os; os._exit(3)", "ended or broke the protocol"),
    ("import os; os.write(1, b'K' * 40); return np.zeros((ids.shape[0], ids.shape[1], 16))", None),
])
def test_garbage_from_the_child_ends_the_scoring_with_a_reason(tmp_path, body, message):
    source = f'''
import numpy as np
def harness_load(blob):
    def logits(ids):
        {body}
    return logits, {SEQ}
'''
    child = child_for(tmp_path, source)
    try:
        child.load(b"x" * 16)
        if message is None:  # writing to fd 1 reaches stderr: the reply pipe is private
            assert child.logits(0, ids()).shape == (3, SEQ, VOCAB)
        else:
            with pytest.raises(ChildError, match=message):
                child.logits(0, ids())
    finally:
        child.close()


def test_a_child_whose_trainer_does_not_import_says_why(tmp_path):
    child = child_for(tmp_path, "raise SystemExit('no')\n")
    try:
        with pytest.raises(ChildError):
            child.load(b"x" * 16)
    finally:
        child.close()
    child = child_for(tmp_path, "x = 1\n")
    try:
        with pytest.raises(ChildError, match="defines no harness_load"):
            child.load(b"x" * 16)
    finally:
        child.close()


def test_the_probe_draw_is_random_and_covers_parities_classes_and_both_ends():
    draws = [causality.draw(30, 128) for _ in range(200)]
    assert len({d["seed"] for d in draws}) == 200
    for d in draws:
        cuts = d["cuts"]
        assert len(cuts) == causality.ROWS == len(set(d["windows"]))
        assert {c % 6 for c in cuts[:6]} == set(range(6))
        assert cuts[0] <= 16 and cuts[1] >= 126 - 16 and all(0 <= c <= 126 for c in cuts)
        assert all(w != donor for w, donor in zip(d["windows"], d["donors"]))
    assert causality.draw(30, 128, seed=7) == causality.draw(30, 128, seed=7)
    small = causality.draw(2, 4)
    assert len(small["cuts"]) == 2 and all(0 <= c <= 2 for c in small["cuts"])


def test_the_probe_catches_a_leak_exactly_at_its_cuts():
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=30 * 64 + 1)
    plan = causality.draw(30, 64, seed=1)
    window = lambda w: tokens[w * 64:(w + 1) * 64].astype(np.int32)  # noqa: E731

    def model(x, leak):
        c = np.cumsum(x, axis=1).astype(np.float32)
        nxt = np.concatenate([x[:, 1:], x[:, -1:]], axis=1)
        c = np.where(leak(np.arange(x.shape[1]))[None, :], c + nxt, c)
        return np.repeat(c[..., None], 4, axis=-1)

    for leak, bad in ((lambda p: p < 0, set()), (lambda p: p % 2 == 1, None), (lambda p: p % 3 == 0, None)):
        base = {w: model(window(w)[None], leak)[0] for w in plan["windows"]}
        result = causality.check(plan, base, model(causality.spliced(plan, window, VOCAB), leak))
        expected = {c for c in plan["cuts"] if leak(np.array(c))} if bad is None else bad
        assert set(result["failing_cuts"]) == expected and result["passed"] == (not expected)


def test_total_bytes_are_the_files_and_a_disagreeing_log_is_named():
    result = metrics.MetricsResult(metrics={"total_bytes": 300})
    record, problem = metrics.harness_sizes(result, 250, 50)
    assert problem is None and result.metrics["total_bytes"] == 300 == record["total_bytes"]
    result = metrics.MetricsResult(metrics={"total_bytes": 300})
    record, problem = metrics.harness_sizes(result, 17_000_000, 50)
    assert result.metrics["total_bytes"] == 17_000_050 and result.metrics["artifact_headroom_bytes"] < 0
    assert "the log says total_bytes 300 but the artifact file (17,000,000 bytes)" in problem
    result = metrics.MetricsResult(metrics={"train_tokens_consumed": 1000})
    metrics.harness_throughput(result, {"kind": "tokens", "value": 4000}, 2.0)
    assert result.metrics["harness_tok_s"] == 2000.0
    metrics.harness_throughput(result, {"kind": "steps", "value": 4}, 4.0)
    assert result.metrics["harness_tok_s"] == 250.0


def test_a_wall_clock_run_past_its_allowance_is_over_budget():
    budget = {"kind": "seconds", "value": 900}
    assert over_budget(budget, 900.0, 1799.0) is None
    assert "ran 1801 s on the harness's clock, past its 900 s wall-clock budget" in over_budget(budget, 900.0, 1801.0)
    assert over_budget({"kind": "tokens", "value": 900}, 900.0, 5000.0) is None
    assert over_budget(budget, None, 5000.0) is None


def _row(run_id, sha, sel, hold, seed=None, group=None, checks=True):
    row = {"run_id": run_id, "status": "ok", "profile": "breadth", "dataset": {"fingerprint": "fp"},
           "budget": {"kind": "tokens", "value": 1}, "machine": {"hostname": "h"}, "settings": {},
           "overrides": {}, "trainer": {"sha256": sha}, "metrics": {"val_bpb": sel, V.SPEED_METRIC: 1000.0},
           "holdout": {"val_bpb": hold}, "checks": {"passed": checks} if checks is not None else None,
           "verdict": {"call": "keep"}}
    if seed is not None:
        row["settings"]["SEED"] = str(seed)
    if group:
        row["repeat"] = {"group": group}
    return row


def _judge(history, current):
    runs = history + current
    exps = V.experiments(runs)
    cur = next(e for e in exps if e.run_id == current[-1]["run_id"])
    return V.decide(cur, [e for e in exps if e is not cur], V.noise_floor(runs, cur.key), {"base"})


BASE = [_row(f"b{i}", "base", 2.0 + d, 1.9 + d, seed=i, group="b", checks=True if i == 2 else None)
        for i, d in enumerate((0.0, 0.001, -0.001))]


def test_a_selection_gain_the_holdout_contradicts_is_not_kept():
    v = _judge(BASE, [_row("c", "cand", 1.9, 1.95, checks=None)])
    assert v["call"] == "discard" and v["holdout_delta"] == pytest.approx(0.05)
    assert v["reason"].startswith("selection gain not confirmed by the holdout: selection delta -0.1000, "
                                  "holdout delta +0.0500")
    # a real gain shows on the holdout too: kept
    v = _judge(BASE, [_row("c", "cand", 1.9, 1.81, checks=None)])
    assert v["call"] == "keep" and v["holdout_delta"] == pytest.approx(-0.09)
    # without a holdout score the VERDICT says it could not compare
    v = _judge(BASE, [_row("c", "cand", 1.9, None, checks=None)])
    assert v["call"] == "keep" and v["holdout_note"] == "not compared: this run has no holdout score"


def test_holdouts_of_different_slices_are_not_compared():
    base = [dict(r, data_view={"holdout": {"start": 10, "stop": 20}}) for r in BASE]
    current = [dict(_row("c", "cand", 1.9, 1.95, checks=None), data_view={"holdout": {"start": 15, "stop": 20}})]
    v = _judge(base, current)
    assert v["call"] == "keep" and v["holdout_note"] == "not compared: b2 scored another holdout slice"
    current[0]["data_view"] = {"holdout": {"start": 10, "stop": 20}}
    assert _judge(base, current)["call"] == "discard"


def test_a_contradicted_gain_is_named_even_where_speed_left_it_open():
    slow = _row("c", "cand", 1.9, 1.95, checks=None)
    slow["metrics"][V.SPEED_METRIC] = 500.0  # half the throughput: inconclusive on speed alone
    v = _judge(BASE, [slow])
    assert v["call"] == "discard" and "selection gain not confirmed by the holdout" in v["reason"]
    slow["holdout"] = {"val_bpb": 1.81}
    assert _judge(BASE, [slow])["call"] == "inconclusive"
