"""What the split scorer costs against the in-process scorer it replaced, on a real run's artifact.

Takes a finished run from the ledger (its artifact, settings, data view and the trainer's
val_bpb), and scores the artifact alternately with
  before  the in-process scorer of git revision --before (autogolf/measure/score.py there,
          which imported the trainer and computed everything in one process), and
  after   this checkout's split scorer (a child runs harness_load and sends logits over a
          pipe; the trusted process scores them, draws the random probe, scores the holdout),
--rounds times each, both given the trainer's val_bpb so both score the holdout. Prints each
phase, the medians, and each cost as a share of that run's own wall time (timing.wall_s:
autoresearch.sh start to ledger row, the harness's scoring included).

    PROFILE=breadth bash autoresearch.sh          # a run to measure on (its artifact is kept)
    .venv/bin/python scripts/bench_split_scorer.py --run RUN_ID [--rounds 2] [--before main]
    .venv/bin/python scripts/bench_split_scorer.py --transfer 40 1024 1024 8   # the pipe alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.judge import ledger  # noqa: E402
from autogolf.run.blas import preload_env  # noqa: E402


def the_run(run_id: str) -> dict:
    rows = [r for r in ledger.runs(ledger.default_path(REPO)) if r.get("run_id") == run_id]
    if not rows or rows[-1].get("status") != "ok":
        raise SystemExit(f"{run_id}: no ok run of that id in the ledger")
    row = rows[-1]
    if not row.get("artifact_path") or not (REPO / row["artifact_path"]).is_file():
        raise SystemExit(f"{run_id}: its artifact is gone (storage keeps the last 5 runs' artifacts)")
    return row


def score_once(cmd: list[str], env: dict, cwd: Path, out: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, json.loads(out.read_text())


def commands(row: dict, work: Path, before: str) -> dict[str, list[str]]:
    view, sel = row["data_view"], row["data_view"]["selection"]
    old = work / "old_score.py"
    old.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{before}:autogolf/measure/score.py"],
                                  capture_output=True, text=True, check=True).stdout)
    settings = row["settings"]
    batch = int(settings.get("VAL_BATCH_SIZE", 524288)) // max(int(settings.get("GRAD_ACCUM_STEPS", 8)), 1)
    common = ["--trainer", row["trainer"]["path"], "--artifact", str(REPO / row["artifact_path"]),
              "--dataset-dir", row["dataset"]["dir"], "--tokenizer", row["dataset"]["tokenizer"],
              "--selection", f"{sel['start']}:{sel['stop']}", "--trainer-bpb", repr(row["metrics"]["val_bpb"]),
              "--batch-tokens", str(batch)]
    if view.get("holdout"):
        common += ["--holdout", f"{view['holdout']['start']}:{view['holdout']['stop']}"]
    return {"before": [sys.executable, str(old), *common, "--out", str(work / "before.json")],
            "after": [sys.executable, "-m", "autogolf.measure.score", *common, "--out", str(work / "after.json")]}


STANDIN = """
import numpy as np
def harness_load(blob):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1024, {vocab})).astype(np.float32)
    return (lambda ids: table[np.asarray(ids) % 1024]), {seq}
"""


def transfer(windows: int, seq: int, vocab: int, batch: int) -> None:
    """The pipe's own cost, apart from any model: a stand-in model (a table lookup) of the
    run's shapes answers `windows` windows in batches, once in this process and once from a
    child over the pipe (with the trusted side's checks); the difference is the split's cost."""
    import numpy as np

    from autogolf.measure.model_child import ModelChild

    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    trainer = work / "standin.py"
    trainer.write_text(STANDIN.format(vocab=vocab, seq=seq))
    ids = np.arange(windows * seq, dtype=np.int32).reshape(windows, seq)
    namespace: dict = {}
    exec(trainer.read_text(), namespace)
    fn, _ = namespace["harness_load"](b"")
    t = time.perf_counter()
    for first in range(0, windows, batch):
        np.isfinite(np.ascontiguousarray(fn(ids[first:first + batch]), dtype=np.float32)).all()
    local = time.perf_counter() - t
    child = ModelChild(trainer, dict(os.environ, PYTHONPATH=str(REPO)), work, vocab)
    try:
        slot, _ = child.load(b"x")
        t = time.perf_counter()
        for first in range(0, windows, batch):
            child.logits(slot, ids[first:first + batch])
        piped = time.perf_counter() - t
    finally:
        child.close()
    mb = windows * seq * vocab * 4 / 1e6
    print(f"transfer of {windows} windows x {seq} x {vocab} float32 ({mb:,.0f} MB) in batches of {batch}: "
          f"in-process {local:.2f} s, over the pipe {piped:.2f} s: the split costs {piped - local:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfer", nargs=4, type=int, metavar=("WINDOWS", "SEQ", "VOCAB", "BATCH"),
                        help="only the pipe's cost, with a stand-in model (breadth: 40 1024 1024 8)")
    parser.add_argument("--run", help="run_id of a finished ok run in logs/runs.jsonl")
    parser.add_argument("--rounds", type=int, default=2, help="scorings of each kind, alternating (default 2)")
    parser.add_argument("--before", default="main", help="git revision of the in-process scorer (default main)")
    args = parser.parse_args()
    if args.transfer:
        transfer(*args.transfer)
        return 0
    if not args.run:
        parser.error("--run RUN_ID (or --transfer)")
    row = the_run(args.run)
    work = Path(tempfile.mkdtemp(prefix="bench-split-"))
    env = preload_env(dict(os.environ, **{k: str(v) for k, v in row["settings"].items()}))
    env = {k: v for k, v in env.items() if k not in ("DATA_PATH", "OUT_DIR", "RUN_ID")}
    env["PYTHONPATH"] = str(REPO)
    cmds = commands(row, work, args.before)
    runs: dict[str, list] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for kind in ("before", "after"):
            wall, result = score_once(cmds[kind], env, work, work / f"{kind}.json")
            runs[kind].append((wall, result))
            print(f"{kind}: process {wall:.1f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())
                  + f"; val_bpb {result['selection']['val_bpb']:.8f} (trainer {row['metrics']['val_bpb']:.8f})",
                  flush=True)
    report(row, runs)
    return 0


def report(row: dict, runs: dict) -> None:
    run_s = float(row["timing"]["wall_s"])

    def med(kind: str, phase: str | None = None) -> float:
        return statistics.median(w if phase is None else r["seconds"].get(phase, 0.0) for w, r in runs[kind])

    rows = [("whole scoring process, before (in-process)", med("before")),
            ("whole scoring process, after (split)", med("after")),
            ("split: selection phase after - before", med("after", "selection") - med("before", "selection")),
            ("split: load phase after - before", med("after", "load") - med("before", "load")),
            ("probe + artifact check after (random, 8 windows)", med("after", "probe") + med("after", "artifact_only")),
            ("probe + artifact check before (fixed, 1 window)", med("before", "probe")),
            ("holdout after", med("after", "holdout")), ("holdout before", med("before", "holdout")),
            ("added by this change (after - before, whole process)", med("after") - med("before"))]
    print(f"\nrun {row['run_id']} ({row['profile']}): wall {run_s:.0f} s, trainer process "
          f"{row['timing']['trainer_s']:.0f} s; medians of {len(runs['after'])} scorings each:")
    for name, seconds in rows:
        print(f"  {name:54s} {seconds:8.2f} s  {100 * seconds / run_s:6.2f}% of the run")


if __name__ == "__main__":
    sys.exit(main())
