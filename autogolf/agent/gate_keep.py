"""The guard's rule for pi-autoresearch's `log_experiment`: a keep is the harness's call.

pi-autoresearch 1.6.0 records whatever the agent says: a keep after a run the harness
rejected (integrity_failed, no checks) was committed, and the metric is the number the agent
typed. So:
  keep      allowed only when the latest finished run in the ledger (logs/runs.jsonl) is
            honest -- status ok, its checks passed (a `checks` record, written only after
            a passing benchmark), no overrides -- and its VERDICT is keep, and the trainer
            in the working tree is the one that run measured (else the commit would hold
            code nobody measured). Otherwise blocked, quoting the VERDICT line and what is
            missing.
            A run is logged once: a keep of a run the guard already let through a
            log_experiment for (keep or discard, by the journal logs/agent/guard.jsonl) is
            refused, so one vouched-for run cannot be kept twice (a second keep would commit
            whatever the working tree holds by then under the first run's number).
  others    discard, crash and checks_failed are always allowed: they revert, which is
            never the dangerous direction.
Whatever the status, the metric recorded is the ledger's val_bpb for that run (the median
for REPEATS, as printed), and known secondary metrics take the ledger's values too, so
pi-autoresearch's log and widget show the harness's numbers, never the agent's. A run that
did not end ok is recorded with metric 0: the number its trainer printed was rejected.
"""

from __future__ import annotations

import math
from pathlib import Path

from autogolf.fsutil import file_sha256
from autogolf.judge import ledger, repeats, verdict
from autogolf.paths import TRAINER_RELPATH

ALWAYS_ALLOWED = ("discard", "crash", "checks_failed")


def latest_finished(runs: list[dict]) -> tuple[dict | None, dict | None]:
    """(the latest run that has ended, a run still going after it, if any)."""
    running = None
    for run in reversed(runs):
        if run.get("status") == "running":
            running = running or run
            continue
        return run, running
    return None, running


def printed_metrics(run: dict) -> dict:
    """The metrics as the run printed them: for repeats, val_bpb is the group's median."""
    return repeats.apply_to_metrics(run.get("metrics") or {}, run.get("repeats"))


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def what_is_missing(run: dict, runs: list[dict], root: Path) -> list[str]:
    """Every reason this run cannot be kept, in words; empty when it can."""
    missing = []
    call = (run.get("verdict") or {}).get("call")
    status = run.get("status")
    if status != "ok":
        missing.append(f"the run ended {status} ({str(run.get('exit_reason') or '')[:160]}), not ok")
    members = [r for r in runs if verdict.group_id(r) == verdict.group_id(run)]
    outcomes = [(m.get("checks") or {}).get("passed") for m in members]
    if False in outcomes:
        missing.append("its checks failed (autoresearch.checks.sh)")
    elif True not in outcomes:
        missing.append("its checks never ran (pi-autoresearch runs them only after a passing benchmark)")
    overrides = sorted({k for m in members for k in (m.get("overrides") or {})})
    if overrides:
        missing.append(f"it ran with overrides ({', '.join(overrides)})")
    if call != "keep":
        missing.append(f"its VERDICT is {call or 'missing'}, not keep")
    measured = (run.get("trainer") or {}).get("sha256")
    trainer = root / TRAINER_RELPATH
    now = file_sha256(trainer) if trainer.is_file() else None
    if measured and now != measured:
        missing.append(f"{TRAINER_RELPATH} changed since that run measured it")
    return missing


def _rewrite(tool_input: dict, run: dict | None) -> tuple[dict, str]:
    """The input with the ledger's numbers in place of the agent's; a note of what changed."""
    if run is None:
        return dict(tool_input), ""
    # a run that did not end ok has no result: its number, if the trainer printed one, is
    # what the harness rejected, so pi's log gets 0 (its own "no metric") instead
    shown = printed_metrics(run) if run.get("status") == "ok" else {"val_bpb": 0.0}
    value = _finite(shown.get("val_bpb"))
    new_input = dict(tool_input)
    notes = []
    if value is not None:
        if tool_input.get("metric") != value:
            notes.append(f"metric {tool_input.get('metric')!r} -> {value} (ledger, run {run.get('run_id')})")
        new_input["metric"] = value
    typed = tool_input.get("metrics")
    if isinstance(typed, dict):
        fixed = {name: (_finite(shown.get(name)) if _finite(shown.get(name)) is not None else v)
                 for name, v in typed.items()}
        if fixed != typed:
            notes.append("secondary metrics from the ledger")
        new_input["metrics"] = fixed
    return new_input, "; ".join(notes)


def already_logged(run: dict | None, journal: list[dict]) -> dict | None:
    """The guard's earlier let-through log_experiment of this run, if any."""
    if run is None:
        return None
    return next((r for r in journal if r.get("tool") == "log_experiment" and r.get("allowed") is True
                 and r.get("run_id") == run.get("run_id")), None)


def decide(tool_input: dict, root: Path, runs: list[dict] | None = None, journal: list[dict] = ()) -> dict:
    """The decision; `journal` is the guard's earlier decisions (gate.read_journal)."""
    runs = ledger.runs(ledger.default_path(root)) if runs is None else runs
    run, running = latest_finished(runs)
    status = tool_input.get("status")
    new_input, note = _rewrite(tool_input, run)
    run_id = {"run_id": run.get("run_id")} if run is not None else {}
    if status in ALWAYS_ALLOWED:
        return {"allow": True, "reason": f"{status} is always allowed" + (f"; {note}" if note else ""),
                "input": new_input, **run_id}
    return {**_decide_keep(status, run, running, runs, journal, root, new_input, note), **run_id}


def _decide_keep(status, run, running, runs, journal, root: Path, new_input: dict, note: str) -> dict:
    if status != "keep":
        return {"allow": False, "reason": f"log_experiment status {status!r} is not one of keep, "
                                          f"{', '.join(ALWAYS_ALLOWED)}"}
    if running is not None:
        return {"allow": False, "reason": f"keep refused: run {running.get('run_id')} is still running; "
                                          f"log after it ends, on its VERDICT"}
    if run is None:
        return {"allow": False, "reason": "keep refused: the ledger (logs/runs.jsonl) has no finished "
                                          "run; run the benchmark with run_experiment first"}
    earlier = already_logged(run, journal)
    if earlier is not None:
        return {"allow": False, "reason": (
            f"keep refused: run {run.get('run_id')} was already logged ({earlier.get('what')} at "
            f"{earlier.get('at')}); a run is logged once. Change the trainer and run the benchmark again.")}
    line = verdict.format_line(run["verdict"]) if (run.get("verdict") or {}).get("call") else "no VERDICT"
    missing = what_is_missing(run, runs, root)
    if missing:
        return {"allow": False, "reason": (
            f"keep refused: the harness does not vouch for run {run.get('run_id')}. Its verdict: "
            f"`{line}`. Missing: {'; '.join(missing)}. Log it as discard (or checks_failed / crash): "
            f"only a VERDICT keep of an honest run is kept.")}
    return {"allow": True, "reason": f"keep of run {run.get('run_id')} on `{line[:120]}`"
                                     + (f"; {note}" if note else ""), "input": new_input}
