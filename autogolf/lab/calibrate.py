"""`just calibrate`: how faithfully breadth's token budget ranks ideas on this machine.

It runs K trainer variants (environment overrides of the recipe: depth, width, learning
rate, batch, sequence length, warm-down) at each candidate token budget and at a stronger
reference (a budget several times larger), and prints, per candidate, the Spearman rank
correlation between the candidate's val_bpb and the reference's over the K variants, with
the compute it cost. The choice: the cheapest candidate whose correlation is within 0.1 of
the best candidate's (fidelity per minute of compute: more minutes must buy more than 0.1
of rank correlation). `--write` stores it in the machine file (logs/machine.json, see
budget.py), which every later breadth run uses and records in its ledger row.

The trainer runs are direct (not through autoresearch.sh, so they add no ledger rows and
no verdicts) but take the machine-wide run lock one at a time, like benchmark runs. Each
run's log is in logs/calibrate/. `--tiny` uses a tiny model (smoke's shape) and tiny
budgets: minutes on a loaded 2-core CPU, for a first figure; its budget fits that model,
not the baseline's, so it is not written unless --write is given too.

`--quick` does something else: it re-sizes the profile to this machine by the throughput
probe alone (sizing.py; about a minute), as the first breadth run on a machine does. Use it
after a hardware or BLAS change; a new choice starts a new baseline. A choice this command
made by rank fidelity still takes precedence over the probe's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from autogolf.measure import logparse, metrics
from autogolf.run import profiles
from autogolf.run.blas import preload_env
from autogolf.data.cache import resolve_dataset
from autogolf.run import budget, probe, sizing
from autogolf.run.runlock import RunLock
from autogolf.paths import REPO_ROOT

TRAINER = REPO_ROOT / "benchmark" / "train_gpt_mlx.py"
CLOSE_ENOUGH = 0.1  # rank correlation a larger budget must add to be worth its minutes

# Variants: what the agent changes most (depth, width, learning rates, batch, sequence
# length, schedule). The first is the recipe as it is.
VARIANTS = {
    "baseline": {},
    "deeper": {"NUM_LAYERS": "+1"},
    "wider": {"MODEL_DIM": "x1.5"},
    "low_lr": {"MATRIX_LR": "0.01", "SCALAR_LR": "0.01", "TIED_EMBED_LR": "0.0125"},
    "high_lr": {"MATRIX_LR": "0.12", "SCALAR_LR": "0.12"},
    "bigger_batch": {"BUDGET_MIN_STEPS": "12"},
    "short_seq": {"TRAIN_SEQ_LEN": "x0.5"},
    "short_warmdown": {"WARMDOWN_ITERS": "7"},  # of breadth's 36 steps: about a fifth
}
TINY = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1", "MLP_MULT": "2",
        "TRAIN_SEQ_LEN": "128", "MLX_MAX_MICROBATCH_TOKENS": "2048", "VAL_MAX_TOKENS": "8192",
        "VAL_BATCH_SIZE": "4096"}
TINY_BUDGETS, TINY_REFERENCE = (8192, 16384, 32768), 131072
# Recipe values the relative variants start from when the base does not set them
# (upstream's defaults, as in the trainer).
RECIPE = {"NUM_LAYERS": "9", "MODEL_DIM": "512", "TRAIN_SEQ_LEN": "1024"}


def variant_env(base: dict, change: dict) -> dict:
    """`change` applied to `base`: "+1" adds, "x1.5" scales (rounded to an even number, so
    head dimensions stay even), anything else replaces."""
    env = {}
    for name, value in change.items():
        start = int(base.get(name, RECIPE.get(name, "0")))
        if value.startswith("+"):
            env[name] = str(start + int(value[1:]))
        elif value.startswith("x"):
            env[name] = str(max(2, int(round(start * float(value[1:]) / 2)) * 2))
        else:
            env[name] = value
    return env


def spearman(xs: list[float], ys: list[float]) -> float | None:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):  # ties share the mean rank
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def run_variant(env: dict, run_id: str, out_dir: Path, timeout: float) -> dict:
    """One trainer run under the machine lock: val_bpb, wall seconds, tok_s (None on failure)."""
    env = dict(env, RUN_ID=run_id, OUT_DIR=str(out_dir), PYTHONUNBUFFERED="1")
    lock = RunLock(run_id=run_id, report=lambda msg: print(msg, flush=True))
    lock.acquire()
    try:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(TRAINER)], cwd=REPO_ROOT, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wall = time.monotonic() - start
    finally:
        lock.release()
    (out_dir / f"{run_id}.console.txt").write_bytes(proc.stdout)
    log = out_dir / f"{run_id}.txt"
    result = metrics.compute(logparse.parse_file(log)) if log.is_file() else metrics.MetricsResult()
    return {"run_id": run_id, "returncode": proc.returncode, "wall_s": round(wall, 2),
            "val_bpb": result.metrics.get("val_bpb"), "tok_s": result.metrics.get("tok_s")}


def choose(rows: list[dict]) -> dict | None:
    """The cheapest candidate within CLOSE_ENOUGH of the best correlation (None: none > 0)."""
    scored = [r for r in rows if r["spearman"] is not None and r["spearman"] > 0]
    if not scored:
        return None
    best = max(r["spearman"] for r in scored)
    return min((r for r in scored if r["spearman"] >= best - CLOSE_ENOUGH), key=lambda r: r["minutes"])


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="just calibrate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="breadth", help="the token-budget profile to calibrate (default breadth)")
    parser.add_argument("--budgets", default=None,
                        help="candidate TRAIN_BUDGET_TOKENS, comma separated (default: 1/4, 1/2, 1 and 2 "
                             "times the profile's; with --tiny 8192,16384,32768)")
    parser.add_argument("--reference", type=int, default=None,
                        help="the reference run's TRAIN_BUDGET_TOKENS (default 4x the largest candidate; "
                             "with --tiny 131072)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"variants to run, comma separated, K >= 3 (default all: {','.join(VARIANTS)})")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and tiny budgets (a cheap first figure)")
    parser.add_argument("--write", action="store_true",
                        help="store the chosen budget in logs/machine.json (default without --tiny: yes)")
    parser.add_argument("--dry-run", action="store_true", help="never write the machine file")
    parser.add_argument("--machine-file", type=Path, default=None,
                        help="where --write stores the choice (default logs/machine.json, the file runs read)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per trainer run (default 1800)")
    parser.add_argument("--quick", action="store_true",
                        help="only re-size the profile to this machine with the throughput probe (about a "
                             "minute; writes logs/machine.json): the budget a breadth run gets, and its timeout")
    return parser.parse_args(argv)


def quick(profile: profiles.Profile) -> int:
    """Re-size `profile` with the probe, under the run lock, on the data view a run gets."""
    from autogolf.data import dataview
    from autogolf.run.trainer import StopFlag, run_trainer  # a trainer process as a run starts it

    if profile.sizing is None:
        print(f"calibrate: profile {profile.name} has no [sizing] table in profiles.toml; nothing to size")
        return 2
    lock = RunLock(run_id="calibrate-quick", report=lambda msg: print(msg, flush=True))
    lock.acquire()
    view = REPO_ROOT / "logs" / "views" / f"probe-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        dataset_dir, tokenizer_path, _ = resolve_dataset(REPO_ROOT / "data")
        view_dir, _ = dataview.build_view(dataset_dir, view, int(profile.resolved.get("VAL_MAX_TOKENS", "0")),
                                          profile.holdout_tokens)
        env = preload_env(dict(os.environ, **profile.resolved, DATA_PATH=str(view_dir),
                               TOKENIZER_PATH=str(tokenizer_path)))

        def spawn(cmd, probe_env, console, limit, on_line):
            return run_trainer(cmd, probe_env, console, limit, 10.0, lock, StopFlag(), on_line=on_line)

        record = probe.size(profile, env, REPO_ROOT, spawn, lambda msg: print(msg, flush=True))
    except sizing.SizingError as e:
        print(f"calibrate: the probe failed: {e}")
        return 1
    finally:
        dataview.remove_view(view)
        lock.release()
    old = (record.get("history") or [{}])[-1].get("tokens")
    if old is not None and old != record["tokens"]:
        print(f"calibrate: the choice changed from {old:,} to {record['tokens']:,} tokens: the next run "
              f"of {profile.name} starts a new baseline")
    machine = budget.read_machine_file(budget.machine_path(REPO_ROOT)) or {}
    if (machine.get("profiles") or {}).get(profile.name):
        print(f"calibrate: note: a rank-fidelity choice for {profile.name} is in logs/machine.json and takes "
              f"precedence over the probe's budget (the probe still sets the timeout)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    profile = profiles.load(args.profile, environ={})
    if args.quick:
        return quick(profile)
    if "TRAIN_BUDGET_TOKENS" not in profile.env:
        print(f"calibrate: profile {args.profile} has no token budget (TRAIN_BUDGET_TOKENS); nothing to calibrate")
        return 2
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or len(names) < 3:
        print(f"calibrate: --variants needs at least 3 of {', '.join(VARIANTS)} (unknown: {unknown})")
        return 2
    default_tokens = int(profile.env["TRAIN_BUDGET_TOKENS"])
    if args.budgets:
        try:
            budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
        except ValueError:
            budgets = []
        if not budgets or min(budgets) <= 0:
            print(f"calibrate: --budgets {args.budgets!r} must be positive whole token counts, comma separated")
            return 2
    else:
        budgets = list(TINY_BUDGETS) if args.tiny else [default_tokens // 4, default_tokens // 2,
                                                        default_tokens, default_tokens * 2]
    reference = args.reference or (TINY_REFERENCE if args.tiny else 4 * max(budgets))
    dataset_dir, tokenizer_path, _ = resolve_dataset(REPO_ROOT / "data")
    base = dict(profile.env, **(TINY if args.tiny else {}))
    env = preload_env(dict(os.environ, **base, DATA_PATH=str(dataset_dir), TOKENIZER_PATH=str(tokenizer_path)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = REPO_ROOT / "logs" / "calibrate" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple, dict] = {}
    for name in names:
        for tokens in budgets + [reference]:
            run_env = dict(env, **variant_env(base, VARIANTS[name]), TRAIN_BUDGET_TOKENS=str(tokens))
            r = run_variant(run_env, f"cal-{stamp}-{name}-{tokens}", out_dir, args.timeout)
            results[(name, tokens)] = r
            print(f"calibrate: {name:<15} {tokens:>9} tokens  val_bpb={r['val_bpb']}  {r['wall_s']:.1f}s", flush=True)
    return report(args, names, budgets, reference, results, out_dir)


def report(args, names, budgets, reference, results, out_dir: Path) -> int:
    ok = [n for n in names if all(results[(n, t)]["val_bpb"] is not None for t in budgets + [reference])]
    head = f"{'variant':<15}" + "".join(f"{t:>12}" for t in budgets) + f"{'ref ' + str(reference):>14}"
    print("\n" + head + "\n" + "-" * len(head))
    for n in names:
        vals = [results[(n, t)]["val_bpb"] for t in budgets + [reference]]
        print(f"{n:<15}" + "".join(f"{v:>12.4f}" if v is not None else f"{'failed':>12}" for v in vals[:-1])
              + (f"{vals[-1]:>14.4f}" if vals[-1] is not None else f"{'failed':>14}"))
    rows = []
    ref = [results[(n, reference)]["val_bpb"] for n in ok]
    print(f"\n{'budget':>10}  {'spearman':>8}  {'minutes':>7}  {'rho/min':>7}   (K={len(ok)} variants)")
    for t in budgets:
        rho = spearman([results[(n, t)]["val_bpb"] for n in ok], ref)
        minutes = sum(results[(n, t)]["wall_s"] for n in names) / 60.0
        rows.append({"tokens": t, "spearman": None if rho is None else round(rho, 4), "minutes": round(minutes, 2)})
        print(f"{t:>10}  {('%.3f' % rho) if rho is not None else 'n/a':>8}  {minutes:>7.2f}  "
              f"{(rho / minutes) if rho is not None and minutes else 0:>7.3f}")
    choice = choose(rows)
    finding = {"variants": ok, "reference_tokens": reference, "candidates": rows, "tiny": bool(args.tiny),
               "chosen": choice["tokens"] if choice else None, "logs": str(out_dir.relative_to(REPO_ROOT)),
               "close_enough": CLOSE_ENOUGH, "values": {f"{n}@{t}": results[(n, t)]["val_bpb"]
                                                        for n in names for t in budgets + [reference]}}
    (out_dir / "calibration.json").write_text(json.dumps(finding, indent=2) + "\n")
    if choice is None:
        print("calibrate: no candidate budget ranks the variants like the reference (no positive "
              "correlation); the profile's budget stays. Try larger --budgets.")
        return 1
    print(f"calibrate: chosen TRAIN_BUDGET_TOKENS={choice['tokens']} for {args.profile} "
          f"(spearman {choice['spearman']}, {choice['minutes']} min for K={len(ok)}); "
          f"findings in {out_dir.relative_to(REPO_ROOT)}/calibration.json")
    if (args.write or not args.tiny) and not args.dry_run:
        path = args.machine_file or budget.machine_path(REPO_ROOT)
        budget.write_machine_choice(path, args.profile, choice["tokens"], finding)
        print(f"calibrate: wrote {path}: {args.profile} runs reading it train on {choice['tokens']} "
              f"tokens on this machine (delete it to return to the profile's budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
