"""`just status`: one screen that says how the night is going, whether or not the loop runs.

    python -m autogolf.agent.status [--runs N]

- The agent: alive or not, pid, uptime, restarts, the circuit breaker (from tmux and the
  supervisor's logs/agent/state.json), what the loop waits for and until when (a provider's
  rate limit, a restart), and the last supervisor event; a dead supervisor, with the fix.
- The benchmark running now (whoever holds the machine's run lock): run, profile, step of
  steps, tok/s, ETA, read live from its console log; a trainer silent for longer than its
  stall limit is shown as stalled, with the time left to its hard timeout.
- The last runs from the ledger, and the best kept val_bpb per profile, dataset and budget
  (kept: autogolf/judge/verdict.is_kept, as the VERDICT, `just report` and `just ledger`). A run that did not finish ok shows its status
  and no val_bpb: an integrity_failed run's number is the trainer's, which the harness
  rejected, and must not read like a result.
- The guard (agent/guard, autogolf/agent/gate.py): its decisions and blocks by kind, from
  logs/agent/guard.jsonl.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import psutil

from autogolf import settings
from autogolf.judge import ledger
from autogolf.measure import logparse
from autogolf.run import budget, profiles, sizing
from autogolf.agent import gate, gate_command, session
from autogolf.judge import verdict


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def supervisor_line(state: dict, sess) -> str:
    if session.supervisor_running():
        return f"supervisor running; restarts {state.get('restarts_total', 0)}"
    window = session.find_window(sess, session.SUPERVISOR_WINDOW)
    pane = window.active_pane if window is not None else None
    if pane is not None and pane.pane_dead != "1":
        # its window's restart loop is between two supervisors
        return (f"supervisor not running: its window starts a new one within seconds "
                f"(`just autoresearch` restarts it now); restarts {state.get('restarts_total', 0)}")
    return f"supervisor not running: `just autoresearch` restarts it; restarts {state.get('restarts_total', 0)}"


def breaker_line(state: dict) -> str:
    breaker = state.get("breaker") or {}
    if breaker.get("state") == "tripped":
        return (f"breaker  TRIPPED at {breaker.get('at')}: {breaker.get('reason')}; "
                f"fix the cause, then `just autoresearch` starts afresh")
    config = state.get("config") or {}
    window, limit = config.get("breaker_window"), config.get("breaker_restarts")
    if not (window and limit):
        return "breaker  ok"
    counted = sum(1 for r in state.get("restarts") or []
                  if r.get("counted") and time.time() - float(r.get("at", 0)) <= float(window))
    return f"breaker  ok ({counted} of {limit} counted restarts in the last {float(window):.0f} s)"


def waiting_line(state: dict) -> str | None:
    """What the loop waits for and until when, from the supervisor's state."""
    pending = state.get("next_restart") or {}
    fault = state.get("provider_wait") or {}
    if not pending.get("at"):
        return None
    at = _clock(float(pending["at"]))
    since = f"since {_clock(float(fault['since']))}" if fault.get("since") else ""
    told = f"its Retry-After {pending['retry_after']:.0f} s" if pending.get("retry_after") is not None else ""
    extra = "; ".join(x for x in (since, told, f"try {pending['probe']}" if pending.get("probe") else "") if x)
    if pending.get("kind") == "rate_limit":
        return f"waiting  for the provider's rate limit, next try at {at}" + (f" ({extra})" if extra else "")
    if pending.get("kind") == "unreachable":
        return f"waiting  for the provider (unreachable), next try at {at}" + (f" ({extra})" if extra else "")
    return f"waiting  to restart the agent at {at}: {pending.get('reason', '?')[:120]}"


def agent_lines() -> list[str]:
    state = session.read_state()
    sess = session.find_session(session.tmux_server())
    window = session.find_window(sess, session.AGENT_WINDOW)
    lines = [f"loop     tmux session {session.session_name()}: "
             + ("running" if sess is not None else "not running (start it with `just autoresearch`)")]
    if window is not None:
        pane = window.active_pane
        pane.refresh()
        if pane.pane_dead == "1":
            lines.append(f"agent    DEAD (exit status {pane.pane_dead_status}); the supervisor restarts it")
        else:
            try:
                uptime = time.time() - psutil.Process(int(pane.pane_pid)).create_time()
                lines.append(f"agent    alive, pid {pane.pane_pid}, up {_duration(uptime)}")
            except (psutil.Error, TypeError, ValueError):
                lines.append(f"agent    pane {pane.pane_id}: process not found")
    elif sess is not None:
        lines.append("agent    no agent window yet")
    lines.append(supervisor_line(state, sess))
    lines.append(breaker_line(state))
    if sess is not None and (waiting := waiting_line(state)):
        lines.append(waiting)
    if state.get("deferred"):
        lines.append(f"waiting  {state['deferred']}: no restart or nudge until it ends")
    if state.get("last_event"):
        lines.append(f"last     {state['last_event'][:150]}")
    return lines


def benchmark_lines() -> list[str]:
    bench = session.benchmark_state()
    if not bench["running"]:
        return ["bench    none running"]
    info = bench["info"]
    run_id = info.get("run_id", "?")
    console = Path(info.get("cwd") or session.REPO_ROOT) / "logs" / f"{run_id}.console.txt"
    parsed = logparse.parse_file(console) if console.is_file() else logparse.ParsedLog()
    profile = next((r.get("profile") for r in ledger.runs(ledger.default_path(Path(info.get("cwd") or session.REPO_ROOT)))
                    if r.get("run_id") == run_id), None) or "?"
    head = f"bench    run {run_id} profile {profile}, pid {info.get('pid')}, since {info.get('started_at', '?')}"
    if bench.get("past_deadline"):
        head += " PAST ITS HARD TIMEOUT"
    lines = [head]
    stalled = stall_line(info, console)
    if stalled:
        lines.append(stalled)
    if parsed.train_steps:
        last = parsed.train_steps[-1]
        remaining = (last.iterations - last.step) * last.step_avg_ms / 1000
        cap = float(parsed.config.get("max_wallclock_seconds", "0") or 0)
        if cap > 0:
            remaining = min(remaining, max(0.0, cap - last.train_time_ms / 1000))
        lines.append(f"         step {last.step}/{last.iterations}, {last.tok_s or '?'} tok/s, "
                     f"{last.step_avg_ms:.0f} ms/step, training ETA {_duration(remaining)} "
                     f"(then validation and export)")
    elif not parsed.val_progress and not stalled:
        lines.append("         starting (no step yet)")
    if parsed.val_progress:
        lines.append(f"         validating: batch {parsed.val_progress[0]}/{parsed.val_progress[1]}")
    return lines


def stall_line(info: dict, console: Path) -> str | None:
    """A trainer that printed nothing for longer than its stall limit (AUTOGOLF_STALL_SECONDS,
    else a quarter of its hard timeout, at least 60 s) is shown as stalled: a hung trainer must
    not look like a slow start."""
    started, hard_at = info.get("trainer_started_at"), info.get("hard_timeout_at")
    if not info.get("trainer_pid") or not isinstance(started, (int, float)):
        return None
    try:
        last_output = max(console.stat().st_mtime, float(started))
    except OSError:
        last_output = float(started)
    raw = settings.get("AUTOGOLF_STALL_SECONDS")  # unset: max(60 s, a quarter of the hard timeout)
    timeout = float(hard_at) - float(started) if isinstance(hard_at, (int, float)) else 0.0
    limit = float(raw) if raw.replace(".", "", 1).isdigit() else max(60.0, timeout / 4)
    silent = time.time() - last_output
    if silent <= limit:
        return None
    left = f"hard timeout in {max(0.0, float(hard_at) - time.time()):.0f} s" if timeout else "no hard timeout known"
    return f"         stalled (no output for {silent:.0f} s; {left})"


def _bpb(run: dict) -> float | None:
    value = (run.get("metrics") or {}).get("val_bpb")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_kept(runs: list[dict], repo: Path) -> dict[tuple, tuple[float, str]]:
    """(profile, dataset, budget) -> (val_bpb, run_id) of the best kept experiment
    (verdict.is_kept: the definition the VERDICT, `just report` and the ledger's marker use;
    for REPEATS the group's median, as the VERDICT compares it)."""
    best: dict[tuple, tuple[float, str]] = {}
    for exp in verdict.kept_experiments(runs, verdict.kept_trainer_hashes(repo)):
        run = exp.members[-1]
        key = (run.get("profile") or "?", (run.get("dataset") or {}).get("name") or "?",
               verdict.budget_text(run))  # never across budgets: they are not comparable
        if key not in best or exp.val_bpb < best[key][0]:
            best[key] = (exp.val_bpb, exp.run_id)
    return best


def ledger_lines(last: int, path: Path | None = None, repo: Path = session.REPO_ROOT) -> list[str]:
    """The last runs and the best kept run per profile, dataset and budget; `repo` is the
    checkout whose history says which trainer versions were kept."""
    runs = ledger.runs(path or ledger.default_path())
    if not runs:
        return ["ledger   no runs yet (logs/runs.jsonl)"]
    best = best_kept(runs, repo)
    lines = [f"ledger   {len(runs)} runs; last {min(last, len(runs))}:"]
    for run in runs[-last:]:
        status = run.get("status", "?")
        checks = run.get("checks")
        if checks is not None:
            status += " checks:" + ("ok" if checks.get("passed") else "FAILED")
        value = _bpb(run) if run.get("status") == "ok" else None  # only a finished run has a result
        wall = run.get("wall_seconds")
        lines.append(f"  {str(run.get('run_id', '?'))[:32]:<32} {str(run.get('profile', '-')):<8} "
                     f"{status:<22} {(f'{value:.4f}' if value is not None else '-'):>8} "
                     f"{(f'{wall:.0f}s' if isinstance(wall, (int, float)) else '-'):>6}")
    lines.append("best     " + ("; ".join(f"{p} on {d} at {b}: {v:.4f} ({r})"
                                        for (p, d, b), (v, r) in sorted(best.items()))
                              or "no kept run yet (kept: VERDICT keep, checks passed, trainer committed)"))
    lines += sizing_lines(runs)
    return lines


def sizing_lines(runs: list[dict]) -> list[str]:
    """The machine's budget choice per sized profile, and every change of it in the ledger
    (runs before a change are not compared with runs after it)."""
    lines = []
    try:
        machine = budget.read_machine_file(budget.machine_path(session.REPO_ROOT)) or {}
    except profiles.ProfileError as e:
        return [f"sizing   {e}"]
    for name, record in sorted((machine.get("sizing") or {}).items()):
        probe = record.get("probe") or {}
        try:
            rules = profiles.load(name, environ={}).sizing
        except profiles.ProfileError:
            rules = None
        if rules is None or not probe.get("train_tok_s"):
            continue  # a profile no longer sized, or a record without a probe
        # the run's own rule (run/sizing.py), without today's sgemm stretch
        expected, basis = sizing.expected_trainer_s(record, int(record.get("tokens", 0)), rules.probe_allowance)
        timeout = sizing.hard_timeout(rules, expected)
        lines.append(f"sizing   {name}: {record.get('tokens', 0):,} tokens (probe {str(probe.get('at', '?'))[:16]}: "
                     f"{probe.get('train_tok_s', 0):.0f} tok/s, sgemm {probe.get('sgemm_gflops')} GFLOP/s); "
                     f"baseline trainer {expected:.0f} s ({basis.split()[0]}), "
                     f"timeout about {timeout:.0f} s, pi timeout_seconds {sizing.pi_timeout(timeout, 10.0)}")
    # what the guard (agent/guard) sets on run_experiment now: the ledger's latest value per
    # profile, else the harness's computed one (autogolf/agent/gate_command.py)
    guarded = []
    for name in sorted(profiles.load_all()):
        try:
            guarded.append(f"{name} {gate_command.pi_timeout(name, session.REPO_ROOT, runs)[0]}")
        except profiles.ProfileError:
            continue
    if guarded:
        lines.append("pi       timeout_seconds the guard sets on run_experiment: " + ", ".join(guarded))
    for change in verdict.budget_changes(runs)[-3:]:
        lines.append(f"budget   {change['profile']}: changed from {change['from']} to {change['to']} at run "
                     f"{change['run_id']} ({change['source']}): a new baseline, earlier runs not compared")
    return lines


def guard_lines(root: Path = session.REPO_ROOT) -> list[str]:
    """The guard's decisions so far and its blocks by kind (command, keep, scope, shell)."""
    rows = gate.read_journal(root)
    if not rows:
        return ["guard    no decisions yet (logs/agent/guard.jsonl)"]
    blocks = gate.block_counts(root)
    kinds = ", ".join(f"{kind} {blocks.get(kind, 0)}" for kind in sorted(set(gate.KINDS.values()) | set(blocks)))
    last = next((r for r in reversed(rows) if r.get("allowed") is False), None)
    lines = [f"guard    {len(rows)} decisions, {sum(blocks.values())} blocked by kind: {kinds}"]
    if last:
        lines.append(f"         last block {str(last.get('at', '?'))[:19]} {last.get('tool')}: "
                     f"{str(last.get('reason', ''))[:140]}")
    return lines


def render(last: int = 8) -> str:
    return "\n".join(agent_lines() + benchmark_lines() + guard_lines() + ledger_lines(last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.status", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="how many of the last runs to list (default 8)")
    args = parser.parse_args(argv)
    print(render(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
