"""REPEATS=n: the same code n times with different seeds, reported as one result.

Each repeat is a full run with its own ledger row (row["repeat"] = {group, index, of,
seed}); the first keeps the trainer's own seed (no SEED set, unless the environment sets
one), repeat i sets SEED to that base + i. The last repeat's row also carries
row["repeats"]: every value, the median and the spread. `METRIC val_bpb` is then the
median; `val_bpb_spread` (max - min; 0 for one run) and `repeats` are secondary metrics
and appear on every run, because pi-autoresearch expects a tracked metric to keep
appearing.

On a wall-clock budget the step count differs between repeats; row["repeats"] then says
how much of the spread it explains (r^2 of a straight-line fit of val_bpb on steps).
"""

from __future__ import annotations

import statistics

from autogolf.settings import SettingError

MAX_REPEATS = 20


def count(environ: dict) -> int:
    raw = environ.get("REPEATS", "") or "1"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_REPEATS:
        raise SettingError(f"REPEATS={raw!r} must be a whole number from 1 to {MAX_REPEATS}")
    return n


def plan(n: int, group: str, environ: dict) -> list[dict]:
    """One dict per repeat: run_id, group, index (1-based), of, seed (None = the trainer's)."""
    base = environ.get("SEED")
    try:
        base_seed = int(base) if base else None
    except ValueError:
        raise SettingError(f"SEED={base!r} is not a whole number") from None
    out = []
    for i in range(n):
        seed = (base_seed + i) if base_seed is not None else (i if i else None)
        out.append({"run_id": f"{group}-r{i + 1}", "group": group, "index": i + 1, "of": n,
                    "seed": None if seed is None else str(seed)})
    return out


def _r_squared(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return round(sxy * sxy / (sxx * syy), 4)


def summarize(members: list[dict]) -> dict:
    """row["repeats"] for a group's rows (in order): values, median, spread, steps."""
    values, steps, ids, seeds = [], [], [], []
    for row in members:
        value = (row.get("metrics") or {}).get("val_bpb")
        if row.get("status") == "ok" and isinstance(value, (int, float)):
            values.append(float(value))
            steps.append((row.get("metrics") or {}).get("train_steps"))
        ids.append(row.get("run_id"))
        seeds.append((row.get("repeat") or {}).get("seed"))
    out = {"n": len(members), "ok": len(values), "run_ids": ids, "seeds": seeds, "val_bpb": values,
           "median": statistics.median(values) if values else None,
           "spread": (max(values) - min(values)) if values else None,
           "sd": statistics.stdev(values) if len(values) > 1 else None, "steps": steps}
    if all(isinstance(s, (int, float)) for s in steps) and len(set(steps)) > 1:
        out["steps_r2"] = _r_squared([float(s) for s in steps], values)
    return out


def describe(summary: dict) -> str:
    """One line for the console: the values, and how much the step count explains."""
    values = ", ".join(f"{v:.6f}" for v in summary["val_bpb"])
    text = f"repeats {summary['ok']}/{summary['n']} ok: val_bpb {values}"
    if summary.get("median") is not None:
        text += f"; median {summary['median']:.6f}, spread {summary['spread']:.6f}"
    if summary.get("sd") is not None:
        text += f", sd {summary['sd']:.6f}"
    if summary.get("steps_r2") is not None:
        steps = ", ".join(str(s) for s in summary["steps"])
        text += (f"; steps {steps}: the step count explains {100 * summary['steps_r2']:.0f}% of the "
                 f"variance (r^2 of a straight-line fit)")
    return text


def group_rows(runs: list[dict], group: str) -> list[dict]:
    return [r for r in runs if (r.get("repeat") or {}).get("group") == group]


def apply_to_metrics(metrics: dict, summary: dict | None) -> dict:
    """The metrics to print: val_bpb = the median of the repeats, plus the spread."""
    out = dict(metrics)
    if summary and summary.get("median") is not None and "val_bpb" in out:
        out["val_bpb"] = summary["median"]
        out["val_bpb_spread"] = round(summary["spread"], 8)
        out["repeats"] = summary["ok"]
    elif "val_bpb" in out:
        out["val_bpb_spread"] = 0.0
        out["repeats"] = 1
    return out


def environ_for(repeat: dict | None, environ: dict) -> dict:
    """The trainer environment's per-repeat part."""
    if repeat and repeat.get("seed") is not None:
        return {"SEED": repeat["seed"]}
    return {}
