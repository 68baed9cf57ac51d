"""`just autoresearch`, `just attach`, `just stop`: the detached tmux session that holds the loop.

    python -m autogolf.agent.loop start            one session per checkout; says so if it runs
    python -m autogolf.agent.loop attach
    python -m autogolf.agent.loop stop [--kill-benchmark] [--no-wait]

start: checks tmux and the agent's prerequisites first (each missing one named with its fix),
then, under logs/agent/start.lock (so two concurrent starts give one session), creates the
session with the supervisor window; the supervisor starts the agent window. A session whose
supervisor died (kill -9) gets a new supervisor, which adopts the agent that is still running.
A tripped circuit breaker is reset: starting again is a person's decision.

stop: ends the supervisor, then the agent, then the session. A benchmark that is running is
left to finish and be recorded (stop waits for it, printing progress; --no-wait returns at
once); --kill-benchmark interrupts it instead (its ledger row says interrupted). Nothing is
left behind: no process of the loop, no session, no held lock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil

from pathlib import Path

from autogolf import settings
from autogolf.judge import protected
from autogolf.textutil import sayer
from autogolf.run import runlock
from autogolf.agent import launch, session

PASSED_ENV_PREFIXES = ("AUTOGOLF_", "PI_", "PROFILE", "npm_config_")
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "USER", "DATA_PATH", "TOKENIZER_PATH") + launch.PROVIDER_KEYS


say = sayer("autoresearch: ")


def session_env() -> dict[str, str]:
    """The variables the agent and supervisor need, whatever the tmux server was started with."""
    return {k: v for k, v in os.environ.items()
            if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)}


def tmux_missing_hint() -> str:
    return ("tmux is needed for the agent loop: install it with 'brew install tmux' on macOS, or "
            "your package manager on Linux ('sudo apt-get install tmux'), then re-run")


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def uncommitted_entries() -> list[tuple[str, str]] | None:
    """(XY status, path) of what `git status --porcelain` lists (None outside a git
    checkout). pi-autoresearch's keep commits everything (`git add -A`): a loop started on a
    dirty tree would sweep the user's own work into its first experiment."""
    out = subprocess.run(["git", "-C", str(session.REPO_ROOT), "status", "--porcelain"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return [(line[:2], line[3:]) for line in out.stdout.splitlines() if line.strip()]


def uncommitted_changes() -> list[str] | None:
    entries = uncommitted_entries()
    return None if entries is None else [name for _, name in entries]


def spared_by_discard(name: str) -> bool:
    """pi-autoresearch 1.6.0's discard (`git checkout -- .` and `git clean -fd`) excludes
    `**/autoresearch.*` and `**/.auto/**` (see /work/shared/spec/agent-loop.md): such a path
    is never reverted by it."""
    return any(part == ".auto" or part.startswith("autoresearch.") for part in Path(name.rstrip("/")).parts)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def dirty_tree_message(entries: list[tuple[str, str]], other_agent: bool) -> str:
    """Why a dirty tree is refused, true for every file it names: harness files are restored
    from HEAD by the first benchmark (run/orchestrator.py, under the loop); of the rest,
    pi-autoresearch's discard never reverts autoresearch.* and .auto/, and cannot undo a
    staged change (it checks the working tree out from the index); the others its keep
    commits and its discard reverts."""
    def target(name: str) -> str:  # a rename is listed as "old -> new"
        return name.split(" -> ")[-1]

    harness = [n for _, n in entries if protected.is_harness_path(target(n))]
    rest = [(xy, n) for xy, n in entries if n not in harness]
    spared = [n for _, n in rest if spared_by_discard(target(n))]
    staged = [n for xy, n in rest if n not in spared and xy[0] not in " ?"]
    reverted = [n for _, n in rest if n not in spared and n not in staged]
    parts = [f"the working tree has uncommitted changes ({_listed([n for _, n in entries])})"]
    if harness:
        parts.append(f"the first benchmark would restore the harness files {_listed(harness)} from HEAD")
    if other_agent and rest:
        parts.append(f"the agent (AUTOGOLF_AGENT_CMD) may commit or revert {_listed([n for _, n in rest])}")
    elif not other_agent:
        if reverted:
            parts.append(f"the agent's first keep would commit {_listed(reverted)} and its first discard "
                         f"would revert them (new files deleted)")
        if staged:
            parts.append(f"its first keep would commit {_listed(staged)}, and no discard would undo what "
                         f"is staged there (it checks the working tree out from the index)")
        if spared:
            parts.append(f"its first keep would commit {_listed(spared)} and nothing would revert them "
                         f"(pi-autoresearch's discard spares autoresearch.* and .auto/)")
    return "; ".join(parts) + "; commit or stash them first (AUTOGOLF_ALLOW_DIRTY=1 starts anyway)"


def start() -> int:
    if not shutil.which("tmux"):
        say(tmux_missing_hint())
        return 2
    problems = launch.prerequisites()
    for problem in problems:
        say(f"missing: {problem}")
    if problems:
        return 2
    name = session.session_name()
    fd = None
    deadline = time.monotonic() + 30
    while fd is None:  # two starts at once: the second waits here, then finds the session
        fd = session.try_lock(session.START_LOCK)
        if fd is None:
            if time.monotonic() > deadline:
                say(f"another `just autoresearch` holds {session.START_LOCK}; try again")
                return 75
            time.sleep(0.1)
    try:
        server = session.tmux_server()
        sess = session.find_session(server, name)
        if sess is not None and session.supervisor_running():
            say(f"already running: tmux session {name}; attach with `just attach`, "
                f"see `just status`, stop with `just stop`")
            return 0
        state = session.read_state()
        if state.get("breaker", {}).get("state") == "tripped":
            state["breaker"] = {"state": "ok", "reset_at": session.now_iso()}
            state["restarts"] = []  # the breaker's history (the supervisor reads it) starts afresh
            session.write_state(state)
            session.log_event("breaker_reset", "started again by `just autoresearch`")
        command = "bash scripts/tmux-pi-autoresearch.sh"
        if sess is None:
            entries = uncommitted_entries()
            if entries is None:
                say(f"{session.REPO_ROOT} is not a git checkout: pi-autoresearch keeps and discards "
                    f"experiments with git; clone the repository, then start again")
                return 2
            if entries and settings.get("AUTOGOLF_ALLOW_DIRTY") != "1":
                say(dirty_tree_message(entries, bool(settings.get("AUTOGOLF_AGENT_CMD").strip())))
                return 2
            server.new_session(session_name=name, window_name=session.SUPERVISOR_WINDOW,
                               window_command=command, start_directory=str(session.REPO_ROOT),
                               environment=session_env(), attach=False, x=200, y=50)
            session.log_event("session_start", f"tmux session {name} by `just autoresearch`")
        else:
            window = session.find_window(sess, session.SUPERVISOR_WINDOW)
            if window is None:
                sess.new_window(window_name=session.SUPERVISOR_WINDOW, window_shell=command,
                                start_directory=str(session.REPO_ROOT), attach=False)
            else:
                window.active_pane.respawn(shell=command, start_directory=str(session.REPO_ROOT), kill=True)
            session.log_event("supervisor_replaced", f"session {name} had no live supervisor")
        if not _wait(session.supervisor_running, 20):
            say("the supervisor did not start; see logs/supervisor.log and `just attach`")
            return 1
    finally:
        os.close(fd)
    say(f"running in tmux session {name}: `just attach` to watch, `just status` for a summary, "
        f"`just stop` to end it")
    return 0


def attach() -> int:
    name = session.session_name()
    if session.find_session(session.tmux_server(), name) is None:
        say("no loop is running here; start it with `just autoresearch`")
        return 1
    socket = settings.get("AUTOGOLF_TMUX_SOCKET")
    cmd = ["tmux"] + (["-L", socket] if socket else [])
    cmd += ["switch-client", "-t", name] if os.environ.get("TMUX") else ["attach-session", "-t", name]
    os.execvp(cmd[0], cmd)
    return 70


def _terminate(pids: list[int], grace: float = 10.0, hard: bool = False) -> None:
    """SIGTERM (SIGKILL when hard), wait up to grace, then SIGKILL what is left."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.kill() if hard else p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def stop_supervisor() -> None:
    if not session.supervisor_running():
        return
    try:
        pid = int(session.SUPERVISOR_LOCK.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = session.read_state().get("supervisor_pid")
    if pid:
        _terminate([int(pid)])
    _wait(lambda: not session.supervisor_running(), 10)


def benchmark_tree(bench: dict) -> set[int]:
    pid = (bench.get("info") or {}).get("pid")
    try:
        root = psutil.Process(int(pid))
        return {root.pid} | {p.pid for p in root.children(recursive=True)}
    except (psutil.Error, TypeError, ValueError):
        return set()


def wait_for_benchmark(bench: dict, kill: bool) -> None:
    info = bench.get("info") or {}
    run = info.get("run_id", "?")
    if kill and info.get("pid"):
        say(f"interrupting benchmark run {run} (pid {info['pid']}); its ledger row will say so")
        os.kill(int(info["pid"]), signal.SIGTERM)
    else:
        say(f"benchmark run {run} is still running: waiting for it to finish and be recorded "
            f"(Ctrl-C leaves it running; `just stop --kill-benchmark` ends it)")
    last = time.monotonic()
    while not runlock.lock_is_free(runlock.default_lock_path()):
        if time.monotonic() - last >= 30:
            say(f"still waiting for run {run} ...")
            last = time.monotonic()
        time.sleep(0.5)
    say(f"benchmark run {run} finished")


def stop(kill_benchmark: bool, wait: bool) -> int:
    name = session.session_name()
    stop_supervisor()
    server = session.tmux_server()
    sess = session.find_session(server, name)
    bench = session.benchmark_state()
    spare = benchmark_tree(bench) if bench["running"] and not kill_benchmark else set()
    if sess is not None:
        trees: list[int] = []
        for window in list(sess.windows):
            for pane in window.panes:
                try:
                    root = psutil.Process(int(pane.pane_pid))
                    trees += [root.pid] + [p.pid for p in root.children(recursive=True)]
                except (psutil.Error, TypeError, ValueError):
                    pass
        # Every pane at once, so the grace is paid once, not per pane. With a benchmark to
        # spare, SIGKILL: pi would abort its running tool on SIGTERM, and that tool is the
        # benchmark (pi's session file is append-only: nothing is lost).
        _terminate([pid for pid in trees if pid not in spare], grace=2.0, hard=bool(spare))
        try:
            sess.kill()
        except Exception:
            pass
        session.log_event("session_stop", f"tmux session {name} ended by `just stop`")
        say(f"stopped the agent and the supervisor; tmux session {name} is gone")
    else:
        say("no loop session was running")
    if bench["running"] and (wait or kill_benchmark):
        wait_for_benchmark(bench, kill_benchmark)
    elif bench["running"]:
        say(f"benchmark run {bench['info'].get('run_id', '?')} is still running (pid "
            f"{bench['info'].get('pid')}); it will finish and be recorded in the ledger")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.loop", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start the loop in a detached tmux session (or say it runs)")
    sub.add_parser("attach", help="attach to the loop's tmux session")
    stop_parser = sub.add_parser("stop", help="end the supervisor, the agent and the session")
    stop_parser.add_argument("--kill-benchmark", action="store_true",
                             help="interrupt a running benchmark instead of letting it finish")
    stop_parser.add_argument("--no-wait", action="store_true",
                             help="return at once; a running benchmark finishes on its own")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start()
    if args.command == "attach":
        return attach()
    return stop(args.kill_benchmark, not args.no_wait)


if __name__ == "__main__":
    sys.exit(main())
