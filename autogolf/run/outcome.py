"""A run's outcome: its status and one-line reason, its exit code, and the lines it prints.

Statuses and exit codes (autoresearch.sh's exit status):
  ok 0, crash 1, data_error 2, config_error 2, cap_violation 3, integrity_failed 4,
  over_budget 5 (a wall-clock budget's trainer lived past the budget + the profile's
  stated allowance, on the harness's clock: more compute, not a better run),
  harness_error 70, lock_timeout 75, timeout 124, killed 137, interrupted 128+N.
"""

from __future__ import annotations

import signal
import traceback

from autogolf.data.cache import CacheError
from autogolf.data.shards import ShardError
from autogolf.judge import repeats, verdict
from autogolf.measure import metrics
from autogolf.measure.upstream import UPSTREAM_TRAINER_BYTES
from autogolf.run import distributed, sizing
from autogolf.run.runlock import LockTimeout
from autogolf.run.trainer import Interrupted, crash_reason, trainer_error_line
from autogolf.settings import SettingError
from autogolf.textutil import one_line, say

EXIT_CODES = {"ok": 0, "crash": 1, "data_error": 2, "config_error": 2, "cap_violation": 3, "integrity_failed": 4,
              "over_budget": 5, "harness_error": 70,
              "lock_timeout": 75, "timeout": 124, "killed": 137}

# What stopped a run before it had a result, by the exception that said so: each message
# names the file or setting and the fix. Checked in order; anything else is a harness bug.
FAILURE_STATUS = ((LockTimeout, "lock_timeout"), (CacheError, "data_error"), (ShardError, "data_error"),
                  (SettingError, "config_error"), (distributed.LaunchError, "config_error"))


def failure_status(error: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception that ended a run early."""
    if isinstance(error, Interrupted):
        return "interrupted", f"interrupted by {signal.Signals(error.signum).name}"
    for kind, status in FAILURE_STATUS:
        if isinstance(error, kind):
            return status, str(error)
    traceback.print_exception(error)  # a bug in the harness: still record the run
    return "harness_error", f"{type(error).__name__}: {error}"


def trainer_status(outcome: dict, returncode: int, result: metrics.MetricsResult, console_path,
                   timeout_reason: str) -> tuple[str, str]:
    """(status, reason) of a finished trainer, from its exit and its log's metrics; "ok"
    still awaits the harness's own score."""
    if outcome["timed_out"]:
        return "timeout", timeout_reason
    if returncode < 0:
        return "killed", f"trainer was killed by {signal.Signals(-returncode).name}"
    if returncode == 2 and (error := trainer_error_line(console_path)):
        return "config_error", f"trainer refused its settings or data (exit 2): {error}"
    if returncode != 0:
        return "crash", crash_reason(console_path, returncode)
    if not result.ok:
        return "crash", f"trainer exited 0 but {result.reason}"
    total = result.metrics.get("total_bytes")
    if total is not None and total > metrics.ARTIFACT_CAP_BYTES:
        return "cap_violation", (f"artifact is {total:,} bytes, over the "
                                 f"{metrics.ARTIFACT_CAP_BYTES:,}-byte cap")
    if total is None:
        return "crash", "no artifact size in the log (export did not run?)"
    return "ok", ""


def over_budget(budget: dict, allowance: float | None, trainer_s: float) -> str | None:
    """The reason a wall-clock run is over_budget (its trainer process, on the harness's
    clock, outlived the budget + the profile's allowance), or None."""
    if budget.get("kind") != "seconds" or allowance is None or not budget.get("value"):
        return None
    limit = float(budget["value"]) + allowance
    if trainer_s <= limit:
        return None
    return (f"the trainer process ran {trainer_s:.0f} s on the harness's clock, past its "
            f"{float(budget['value']):g} s wall-clock budget + the profile's {allowance:g} s allowance "
            f"({limit:g} s): it used more compute than the budget, whatever its printed clock says")


def exit_code(status: str, row: dict) -> int:
    if status == "interrupted":
        return 128 + int(row.get("signal", signal.SIGTERM))
    return EXIT_CODES.get(status, 1)


def budget_label(row: dict, timeout: float | None, grace: float) -> str:
    """`budget=... timeout=... pi_timeout=...`, on every summary line: how much training the
    run got, where that choice came from (run/budget.py), and the timeouts it ran under."""
    b = row.get("budget") or {}
    if b.get("kind") == "tokens":
        amount = f"{b['value']:,}tok"
    elif b.get("value") is not None:
        amount = f"{b['value']}{'s' if b.get('kind') == 'seconds' else ' steps'}"
    else:
        amount = "trainer-default"
    source = str(b.get("source", "?"))
    where = "probe" if "(probe" in source else "calibrate" if "calibrate" in source else \
        "override" if "override" in source else source
    sized = row.get("sizing") or {}
    if sized.get("state") == "sized":
        where += f" {str(sized.get('probe_at', '?'))[:10]} {sized.get('train_tok_s', 0):.0f}tok/s"
    elif sized.get("state"):
        where += f"; sizing {sized['state'].split(':')[0]}"
    if not timeout:
        return f"budget={amount}({where})"
    return (f"budget={amount}({where}) timeout={timeout:g}s "
            f"pi_timeout={sizing.pi_timeout(timeout, grace)}s")


def print_repeat_line(status: str, row: dict, repeat: dict, val_bpb, budget: str) -> None:
    """One line for a repeat that is not the group's last: the last one prints the rest."""
    say(f"autoresearch: repeat {repeat['index']}/{repeat['of']} (SEED={repeat['seed'] or 'default'}) "
        f"{status} val_bpb={val_bpb} {budget}{sandbox_label(row)} log={row['log_path']}")


def _vs_best(v: dict) -> str:
    if v.get("delta") is None:
        return " (no comparable kept run)"
    # pi-autoresearch does not enforce a minimum improvement; we state it here.
    minimum = verdict.min_improvement()
    word = "improved" if v["delta"] <= -minimum else "not_improved"
    return f" vs_best={v['delta']:+.4f} {word}(min {minimum})"


def restored_label(row: dict) -> str:
    """` restored_from_head=a,b` when the run restored harness files before it started
    (under the loop, run/orchestrator.py), so the agent and its log see it on the summary."""
    record = row.get("restored_from_head") or {}
    names = list(record.get("files") or []) + list(record.get("removed") or [])
    if not names:
        return ""
    shown = ",".join(names[:5]) + (f",+{len(names) - 5}more" if len(names) > 5 else "")
    return f" restored_from_head={shown}"


def _code_label(m: dict) -> str:
    """The trainer's bytes (the artifact's code) against upstream's file at the pinned commit."""
    if "code_bytes" not in m:
        return ""
    extra = m["code_bytes"] - UPSTREAM_TRAINER_BYTES
    return f" code_bytes={m['code_bytes']:,}(upstream {UPSTREAM_TRAINER_BYTES:,}, {extra:+,})"


def sandbox_label(row: dict) -> str:
    """` sandbox=bwrap` (or landlock, seatbelt, none, none(AUTOGOLF_SANDBOX=off)) on every
    line: what confined the trainer; `none` is never kept (judge/verdict.py)."""
    record = row.get("sandbox")
    return f" sandbox={record.get('label', '?')}" if record else ""


def print_summary(status: str, reason: str, row: dict, printed: dict, dataset_label: str,
                  wall: float, train_s: float, trainer_s: float, budget: str) -> None:
    """The METRIC lines (none for an integrity failure: the harness disowns its numbers),
    one summary line, and the VERDICT line last."""
    if row.get("repeats"):
        say(f"autoresearch: {repeats.describe(row['repeats'])}")
    for line in metrics.metric_lines(printed) if status != "integrity_failed" else []:
        say(line)
    profile_name = row["profile"]
    if status == "ok":
        m = printed
        overrides = " overrides=" + ",".join(f"{k}={v}" for k, v in row["overrides"].items()) \
            if row.get("overrides") else ""
        say(f"autoresearch: ok profile={profile_name} dataset={dataset_label} "
            f"val_bpb={m['val_bpb']:.8f}{_vs_best(row['verdict'])} total_bytes={m['total_bytes']:,} "
            f"headroom={m['artifact_headroom_bytes']:,}{_code_label(m)} wall={wall:.1f}s train={train_s:.1f}s "
            f"overhead={m['harness_overhead_pct']:.1f}% (harness {wall - trainer_s:.1f}s)"
            f" harness_score=agrees(|diff|={row['harness_score']['abs_diff']:.1e})"
            f" {budget}{overrides}{restored_label(row)}{sandbox_label(row)} log={row['log_path']}")
    else:
        say(f"autoresearch: {status} profile={profile_name} dataset={dataset_label} "
            f"wall={wall:.1f}s {budget}{restored_label(row)}{sandbox_label(row)} log={row['console_path']} reason: {one_line(reason)}")
    say(verdict.format_line(row["verdict"]))
