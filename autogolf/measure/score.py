"""The harness scores every run's artifact itself, and no trainer code runs where it computes.

From the trainer it takes only the model, through a two-name contract the trainer defines
(its "Harness contract" section):

    harness_load(blob: bytes) -> (logits, seq_len)
        the model rebuilt from the artifact's bytes alone (settings from the environment,
        as for training); logits(ids) maps int32 ids (B, seq_len) to float32 next-token
        logits (B, seq_len, vocab), where position t may read ids[:, :t+1] only.

The scoring is split in two processes (issue 15):
  - the trusted scorer (this module's scorer_main, `python -m autogolf.measure.score`)
    never imports the trainer. It reads the validation tokens from the real cache
    (autogolf.data.dataview), builds the byte table from the tokenizer (bytecount),
    computes the cross-entropy (float64 log-softmax), the byte count, the causality probe,
    the artifact-only check and the holdout itself;
  - a child (measure/logits_child.py, started through model_child.confine_child, where the
    sandbox wraps it) imports the trainer, runs harness_load on the artifact bytes it is
    sent, and returns logits for the windows it is sent, over a pipe (measure/wire.py).
    The trusted side checks every reply (shape, float32, finite) before using it. Whatever
    the trainer's code patches in the child (numpy, builtins, the scorer's modules) can
    only change the logits, which are then scored here, and must agree with the trainer's
    own printed val_bpb.
Both run in empty temporary folders, without DATA_PATH, OUT_DIR or RUN_ID, after the raw
weights are deleted: the artifact's bytes, handed over, are the only model there is.

Artifact-only check: harness_load given half the artifact's bytes must fail or give other
logits; a loader that ignores its bytes (raw weights read from disk) gives the same ones.

Causality probe (measure/causality.py): drawn at random per run -- 8 windows of the
selection, each with a cut, the cuts covering both parities and every class mod 3, one
near the start and one near the end; the tail after each cut replaced by another window's
tokens. The logits at and before the cut must not move. The draw (seed, windows, cuts) is
in the ledger (harness_score.probe_detail.draw); it costs one forward batch of 8 windows.

Holdout: the hidden holdout slice is scored the same way (ledger only, never a METRIC) for
every run that could be kept: it passed the probe and agrees with its trainer, and the
HARNESS's own selection val_bpb is not worse than the best kept comparable run's
(autogolf/judge/verdict.is_kept) by the minimum improvement or more -- within that margin
a faster step can still be kept -- or there is no kept comparable run yet (the baseline).
AUTOGOLF_HOLDOUT=every asks for it on every run; a failed run still gets none. The VERDICT
refuses a keep whose selection gain the holdout contradicts (judge/verdict.holdout_check).

A run is integrity_failed (exit 4, never ok) when the harness's val_bpb and the trainer's
differ by more than TOLERANCE_BPB, when the probe fails, when the artifact cannot be scored
or the child sends garbage. TOLERANCE_BPB = 1e-4: both sides compute the same float32 model
over the same windows and batches, so they agree to a few 1e-6 (measured: 6e-7 smoke on
FineWeb fixtures, 3.1e-6 baseline model on breadth's slice; see README); a byte count off
by one per token moves val_bpb by ~30%, a loss scaled by 0.99 by 1%. It is 1/20 of the
0.002 minimum improvement. (Raw weights scored instead of the artifact can differ by less,
as int8 rounding moved a 4-step smoke model by 5e-5: the artifact-only check catches that.)

CLI (the process run.py starts):  python -m autogolf.measure.score --trainer T --artifact A
    --dataset-dir D --tokenizer TOK --selection START:STOP [--holdout START:STOP
    --trainer-bpb X [--holdout-below Y]] --out JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autogolf import settings
from autogolf.data.dataview import read_val_range
from autogolf.measure import causality
from autogolf.measure.bytecount import byte_table, count_bytes
from autogolf.measure.model_child import ChildError, ModelChild
from autogolf.textutil import one_line

TOLERANCE_BPB = 1e-4
PROBE_TOLERANCE = causality.TOLERANCE
SCRUBBED_ENV = ("DATA_PATH", "OUT_DIR", "RUN_ID")


# --------------------------------------------------------------------------- scorer process (trusted)

def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return log_norm - picked


def windows_of(tokens: np.ndarray, seq_len: int) -> int:
    return (tokens.size - 1) // seq_len


def score_tokens(logits_fn, seq_len: int, tokens: np.ndarray, table, batch_seqs: int,
                 keep: dict | None = None) -> dict:
    """Mean NLL (nats/token) and bits per byte over non-overlapping seq_len windows.
    keep: {window index: None} whose logits are stored in it (the probe's unchanged rows)."""
    windows = windows_of(tokens, seq_len)
    if windows <= 0:
        raise RuntimeError(f"slice of {tokens.size} tokens is shorter than one window of {seq_len}")
    nll = nbytes = 0.0
    for first in range(0, windows, batch_seqs):
        last = min(first + batch_seqs, windows)
        chunk = tokens[first * seq_len:last * seq_len + 1].astype(np.int32)
        x, y = chunk[:-1].reshape(-1, seq_len), chunk[1:].reshape(-1, seq_len)
        logits = logits_fn(x)
        nll += float(_log_softmax_nll(logits, y).sum())
        nbytes += float(count_bytes(x, y, table).sum())
        for w in (keep or {}):
            if first <= w < last:
                keep[w] = logits[w - first].copy()
    tokens_scored = windows * seq_len
    val_loss = nll / tokens_scored
    return {"val_loss": val_loss, "val_bpb": nll / math.log(2.0) / nbytes,
            "tokens": tokens_scored, "bytes": int(nbytes)}


def artifact_dependence(child: ModelChild, blob: bytes, base: np.ndarray, ids: np.ndarray) -> dict:
    """The artifact's bytes must be the model's only source: a loader given half of them
    must fail or give another model. One that gives the same logits reads its weights from
    somewhere else (the raw weights, a copy on disk)."""
    try:
        slot, _ = child.load(blob[:len(blob) // 2])
        diff = float(np.abs(child.logits(slot, ids[None, :]) - base[None]).max())
    except ChildError as e:  # any failure on a broken artifact is the right answer
        return {"passed": True, "half_artifact": f"refused ({one_line(str(e), 160)})"}
    return {"passed": diff > 0.0, "half_artifact": f"loaded; logits differ by up to {diff:.3g}"}


def _span(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    a, b = text.split(":")
    return int(a), int(b)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autogolf.measure.score",
                                     description="Score an artifact with the harness's own code (run.py starts this).")
    parser.add_argument("--trainer", type=Path, required=True, help="the trainer file defining harness_load")
    parser.add_argument("--artifact", type=Path, required=True, help="the exported artifact (its bytes are the model)")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="the real cache folder (not the run's view)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the SentencePiece model of the cache")
    parser.add_argument("--selection", required=True, help="START:STOP validation tokens the trainer scored")
    parser.add_argument("--holdout", default=None, help="START:STOP validation tokens of the hidden holdout")
    parser.add_argument("--trainer-bpb", type=float, default=None,
                        help="the trainer's val_bpb: the holdout is scored only when the run passes integrity")
    parser.add_argument("--holdout-below", type=float, default=None,
                        help="score the holdout only when the harness's selection val_bpb is below this "
                             "(the best kept run + the minimum improvement; absent: always)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per forward batch (memory only)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result as JSON")
    return parser


def _probe(child: ModelChild, selection: np.ndarray, seq_len: int, vocab: int, kept: dict, plan: dict) -> dict:
    def window(w: int) -> np.ndarray:
        return selection[w * seq_len:(w + 1) * seq_len].astype(np.int32)

    probed = child.logits(0, causality.spliced(plan, window, vocab))
    return causality.check(plan, kept, probed)


def _score_all(args, child: ModelChild, table, vocab: int, out: dict) -> None:
    """Selection, random probe, holdout (when the run could be kept), artifact check."""
    t = time.monotonic()
    blob = args.artifact.read_bytes()
    _, seq_len = child.load(blob)
    out["seq_len"] = seq_len
    batch = max(args.batch_tokens // seq_len, 1)
    out["seconds"]["load"] = time.monotonic() - t
    selection = read_val_range(args.dataset_dir, *_span(args.selection))
    windows = windows_of(selection, seq_len)  # none: score_tokens says the slice is too short
    plan = causality.draw(windows, seq_len) if windows > 0 else {"windows": [], "donors": [], "cuts": [], "seed": None}
    kept = {w: None for w in plan["windows"]}
    t = time.monotonic()
    out["selection"] = score_tokens(lambda x: child.logits(0, x), seq_len, selection, table, batch, keep=kept)
    out["seconds"]["selection"] = time.monotonic() - t
    t = time.monotonic()
    out["probe"] = _probe(child, selection, seq_len, vocab, kept, plan)
    out["seconds"]["probe"] = time.monotonic() - t
    # the holdout for every run that could be kept: it agrees with its trainer, passed the
    # probe, and the harness's own selection score is not worse than the best kept run's
    below = args.holdout_below
    if args.holdout and args.trainer_bpb is not None and judge_scores(out, args.trainer_bpb) is None \
            and (below is None or out["selection"]["val_bpb"] < below):
        t = time.monotonic()
        out["holdout"] = score_tokens(lambda x: child.logits(0, x), seq_len,
                                      read_val_range(args.dataset_dir, *_span(args.holdout)), table, batch)
        out["seconds"]["holdout"] = time.monotonic() - t
    elif args.holdout and below is not None and "holdout" not in out:
        out["holdout_skipped"] = out["selection"]["val_bpb"]
    t = time.monotonic()
    first = plan["windows"][0]
    out["artifact_only"] = artifact_dependence(child, blob, kept[first],
                                               selection[first * seq_len:(first + 1) * seq_len].astype(np.int32))
    out["seconds"]["artifact_only"] = time.monotonic() - t


def scorer_main(argv: list[str] | None = None) -> int:
    """The trusted scorer: it never imports the trainer. A child process (model_child.py)
    runs harness_load and returns logits over a pipe; everything computed from them --
    NLL, byte counts, the probe, the holdout -- is computed here."""
    args = _parser().parse_args(argv)
    import sentencepiece as spm

    t0 = time.monotonic()
    out: dict = {"seconds": {}}
    scratch = Path(tempfile.mkdtemp(prefix="autogolf-model-"))
    # the child first: its interpreter and the trainer's imports start while the byte table builds
    child = ModelChild(args.trainer, dict(os.environ), scratch)
    try:
        sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
        table, vocab = byte_table(sp), int(sp.vocab_size())
        child.expect_vocab(vocab)
        _score_all(args, child, table, vocab, out)
    except ChildError as e:
        out["error"] = str(e)
    finally:
        child.close()  # its whole session ends before the result is written
        shutil.rmtree(scratch, ignore_errors=True)
    out["seconds"]["total"] = time.monotonic() - t0
    args.out.write_text(json.dumps(out), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- harness side

def scorer_command(trainer: Path, artifact: Path, dataset_dir: Path, tokenizer: Path, view: dict,
                   batch_tokens: int, out: Path, trainer_bpb: float | None,
                   holdout_below: float | None = None) -> list[str]:
    sel = view["selection"]
    cmd = [sys.executable, "-m", "autogolf.measure.score", "--trainer", str(trainer), "--artifact", str(artifact),
           "--dataset-dir", str(Path(dataset_dir).resolve()), "--tokenizer", str(Path(tokenizer).resolve()),
           "--selection", f"{sel['start']}:{sel['stop']}", "--batch-tokens", str(batch_tokens), "--out", str(out)]
    if view.get("holdout") and trainer_bpb is not None:  # without the trainer's number, no integrity: no holdout
        cmd += ["--holdout", f"{view['holdout']['start']}:{view['holdout']['stop']}",
                "--trainer-bpb", repr(float(trainer_bpb))]
        if holdout_below is not None:
            cmd += ["--holdout-below", repr(float(holdout_below))]
    return cmd


def scorer_env(env: dict, repo_root: Path) -> dict:
    clean = {k: v for k, v in env.items() if k not in SCRUBBED_ENV}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root), env.get("PYTHONPATH", "")) if p)
    return clean


def judge_scores(result: dict, trainer_bpb: float | None) -> str | None:
    """The probe and the agreement with the trainer: the one-line reason, or None."""
    probe = result["probe"]
    if not probe["passed"]:
        return (f"causality probe failed: changing tokens after position t moved the logits at or "
                f"before t by {probe['max_abs_diff_before_cut']:.3g} (> {PROBE_TOLERANCE}) at cut(s) "
                f"{probe['failing_cuts']} of {probe['draw']['cuts']} (drawn at random, seed "
                f"{probe['draw']['seed']}); the model reads tokens it is predicting")
    sel = result["selection"]
    diff = abs(sel["val_bpb"] - trainer_bpb) if trainer_bpb is not None else math.inf
    if not diff <= TOLERANCE_BPB:
        return (f"the harness scored the artifact at val_bpb {sel['val_bpb']:.8f} but the trainer "
                f"printed {trainer_bpb:.8f} (|diff| {diff:.2e} > tolerance {TOLERANCE_BPB:g}); the "
                f"trainer's metric, byte count or export/reload disagrees with its artifact")
    return None


def judge(result: dict | None, error: str | None, trainer_bpb: float | None) -> tuple[dict, str | None]:
    """(row["harness_score"], the one-line reason the run failed integrity, or None)."""
    score: dict = {"tolerance": TOLERANCE_BPB, "trainer_val_bpb": trainer_bpb}
    error = error or (result or {}).get("error")
    if result is not None and "seconds" in result:
        score["phase_seconds"] = {k: round(v, 3) for k, v in result["seconds"].items()}
    if result is None or error or "artifact_only" not in result:
        score.update(probe="not_run", error=error)
        return score, f"the harness could not score the artifact: {error}"
    sel = result["selection"]
    score.update(val_bpb=sel["val_bpb"], val_loss=sel["val_loss"], tokens=sel["tokens"], bytes=sel["bytes"],
                 seq_len=result["seq_len"], probe="passed" if result["probe"]["passed"] else "failed",
                 probe_detail=result["probe"], artifact_only=result["artifact_only"])
    if not result["artifact_only"]["passed"]:
        return score, ("the artifact is not the model's only source: harness_load given half of its bytes "
                       "built the same model (it reads weights from elsewhere, e.g. the raw weights)")
    reason = judge_scores(result, trainer_bpb)
    if trainer_bpb is not None:
        score["abs_diff"] = abs(sel["val_bpb"] - trainer_bpb)
    return score, reason


def holdout_record(result: dict | None, view: dict, failure: str | None = None) -> dict | None:
    if failure is not None and view:  # whatever was asked: a failed run has no holdout
        return {"val_bpb": None, "slice": "not scored: the run failed the harness's integrity check, "
                                          "so it cannot be kept"}
    if result is not None and "holdout_skipped" in result:
        return {"val_bpb": None, "slice": (
            f"not scored: the harness's selection val_bpb {result['holdout_skipped']:.6f} is worse than the "
            f"best kept comparable run by the minimum improvement or more, so it cannot be kept "
            f"(AUTOGOLF_HOLDOUT=every scores every run that passes integrity)")}
    if result is None or "holdout" not in result:
        return {"val_bpb": None, "slice": view.get("holdout_note")} if view else None
    h, slice_ = result["holdout"], view["holdout"]
    return {"val_bpb": h["val_bpb"], "val_loss": h["val_loss"], "tokens": h["tokens"],
            "slice": f"validation tokens [{slice_['start']:,}, {slice_['stop']:,}) of {view['val_total_tokens']:,}: "
                     f"{view['holdout_note']}", "seconds": round(result["seconds"]["holdout"], 3)}


def run_scorer(run, cmd: list[str], env: dict, console: Path, out: Path, timeout: float) -> tuple[dict | None, str | None]:
    """Start the scorer with `run(cmd, env, console, timeout, cwd)` (the orchestrator's process
    runner: timeout, process-tree kill) in an empty temporary folder; (result, error)."""
    work = Path(tempfile.mkdtemp(prefix="autogolf-score-"))
    try:
        outcome = run(cmd, env, console, timeout, work)
        if outcome["timed_out"]:
            return None, f"scoring exceeded {timeout:g} s"
        if outcome["returncode"] != 0 or not out.is_file():
            lines = [l for l in console.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
            return None, f"scorer exited {outcome['returncode']}: {(lines or ['no output'])[-1].strip()[:300]}"
        return json.loads(out.read_text(encoding="utf-8")), None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        out.unlink(missing_ok=True)


def _batch_tokens(env: dict) -> int:
    """The trainer's evaluation batch (VAL_BATCH_SIZE / GRAD_ACCUM_STEPS), so both sides
    run the same shapes; only memory and rounding depend on it."""
    try:
        return max(int(env.get("VAL_BATCH_SIZE", 524288)) // max(int(env.get("GRAD_ACCUM_STEPS", 8)), 1), 1)
    except ValueError:
        return 8192


def holdout_threshold(best_kept: float | None, margin: float) -> float | None:
    """The harness's selection val_bpb under which a run could still be kept (and so gets
    its holdout scored): the best kept comparable run's + `margin` (the minimum improvement:
    within it the VERDICT can still keep a faster step). None: no kept run yet (the
    baseline), or AUTOGOLF_HOLDOUT=every -- every run that passes integrity."""
    if best_kept is None or settings.get("AUTOGOLF_HOLDOUT") == "every":
        return None
    return best_kept + margin


def score_run(run, *, trainer: Path, artifact: Path, dataset_dir: Path, tokenizer: Path, view: dict,
              env: dict, repo_root: Path, console: Path, timeout: float, trainer_bpb: float | None,
              best_before: float | None, keep_margin: float = 0.0) -> tuple[dict, dict | None, str | None]:
    """Score a finished run: (row["harness_score"], row["holdout"], integrity failure or None).
    best_before: the best val_bpb of the kept comparable runs (None: none yet). Whether the
    run could be kept is decided in the scorer, on the harness's own selection score."""
    start = time.monotonic()
    if not artifact.is_file():
        result, error = None, f"the artifact {artifact} is missing"
    else:
        out = Path(tempfile.mkdtemp(prefix="autogolf-score-out-")) / "score.json"
        cmd = scorer_command(trainer, artifact, dataset_dir, tokenizer, view, _batch_tokens(env), out, trainer_bpb,
                             holdout_threshold(best_before, keep_margin))
        try:
            result, error = run_scorer(run, cmd, scorer_env(env, repo_root), console, out, timeout)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
    score, reason = judge(result, error, trainer_bpb)
    score["seconds"] = round(time.monotonic() - start, 3)  # the whole scoring step, process start included
    return score, holdout_record(result, view, reason), reason


if __name__ == "__main__":
    sys.exit(scorer_main())
