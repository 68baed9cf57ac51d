"""The loop's tmux session and its supervisor, with real tmux and real processes. The agent is a
stand-in command (AUTOGOLF_AGENT_CMD): these tests are about keeping an agent alive, not pi."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent_helpers import clean_env, events, kill_tmux_server, loop, status, tmux
from autoresearch_helpers import wait_for
from autogolf.run.runlock import RunLock, lock_is_free

pytestmark = pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                                reason="tmux is not installed (scripts/setup.sh installs it on Debian)")

# Prints its pid, then records every line typed into its pane (the supervisor's nudges).
STAND_IN = 'echo "agent up $$"; while read -r line; do echo "$line" >> logs/typed.txt; done'
FAST = {"AUTOGOLF_POLL_SECONDS": "0.3", "AUTOGOLF_BACKOFF_SECONDS": "0.5", "AUTOGOLF_BACKOFF_MAX_SECONDS": "2",
        "AUTOGOLF_HEALTHY_SECONDS": "1", "AUTOGOLF_NUDGE_SECONDS": "600", "AUTOGOLF_BREAKER_RESTARTS": "20",
        "AUTOGOLF_BREAKER_WINDOW_SECONDS": "600"}


@pytest.fixture
def env(tmp_path, project):
    env = clean_env(tmp_path / "home", AUTOGOLF_AGENT_CMD=STAND_IN, **FAST)
    yield env
    loop(project, env, "stop", "--no-wait")
    kill_tmux_server(env)


def agent_pids(env: dict) -> list[int]:
    """Live agent processes: in every window named agent, the agent the pane's script runs
    (scripts/run-pi-autoresearch.sh stays as its parent to write down its exit status)."""
    out = tmux(env, "list-panes", "-a", "-F", "#{window_name} #{pane_dead} #{pane_pid}")
    pids = []
    for name, dead, pid in (l.split() for l in out.stdout.splitlines()):
        if name == "agent" and dead == "0":
            with contextlib.suppress(psutil.Error):
                pids += [c.pid for c in psutil.Process(int(pid)).children()][:1]
    return pids


def one_agent(env: dict, seconds: float = 30) -> int:
    pids = wait_for(lambda: agent_pids(env) if len(agent_pids(env)) == 1 else None, seconds, "one live agent")
    return pids[0]


def sessions(env: dict) -> list[str]:
    out = tmux(env, "list-sessions", "-F", "#{session_name}")
    return out.stdout.split() if out.returncode == 0 else []


def test_agent_killed_five_times_is_restarted_each_time(project, env):
    start = loop(project, env, "start")
    assert start.returncode == 0, start.stdout + start.stderr
    assert "running in tmux session" in start.stdout
    pid = one_agent(env)
    for n in range(5):
        time.sleep(1.2)  # up longer than AUTOGOLF_HEALTHY_SECONDS: each failure starts afresh
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: [p for p in agent_pids(env) if p != pid], 15, f"restart {n + 1}")
        assert time.monotonic() - killed_at < 15
        pid = new[0]
    log = events(project)
    assert sum(" agent_start restart: agent exited" in line for line in log) == 5, log
    assert "restarts 5" in status(project, env)


def test_breaker_trips_and_status_says_why(project, env):
    env.update(AUTOGOLF_AGENT_CMD="echo crashing; exit 1", AUTOGOLF_BREAKER_RESTARTS="3",
               AUTOGOLF_HEALTHY_SECONDS="600")
    assert loop(project, env, "start").returncode == 0
    wait_for(lambda: any("breaker_tripped" in l for l in events(project)), 60, "the breaker")
    wait_for(lambda: not sessions(env), 30, "the loop to stop")
    screen = status(project, env)
    assert re.search(r"breaker  TRIPPED at \S+: 4 restarts within 600 s \(limit 3\); last: agent exited \(status 1\)",
                     screen), screen
    assert "supervisor not running" in screen
    backoffs = [float(m[1]) for l in events(project) if (m := re.search(r"restart_scheduled .* in_s=([\d.]+)", l))]
    assert backoffs[:4] == [0.5, 1.0, 2.0, 2.0]  # exponential, capped at AUTOGOLF_BACKOFF_MAX_SECONDS
    # starting again is a person's decision: it resets the breaker
    env["AUTOGOLF_AGENT_CMD"] = STAND_IN
    assert loop(project, env, "start").returncode == 0
    one_agent(env)
    assert "breaker  ok" in status(project, env)


def test_supervisor_killed_then_started_again_adopts_the_same_agent(project, env):
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(supervisor) or psutil.Process(supervisor).status() == "zombie",
             10, "the supervisor to die")
    again = loop(project, env, "start")
    assert again.returncode == 0, again.stdout
    new_supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    assert new_supervisor != supervisor and psutil.pid_exists(new_supervisor)
    time.sleep(2)
    assert agent_pids(env) == [agent]  # still exactly the one agent
    assert sessions(env) == [sessions(env)[0]] and len(sessions(env)) == 1


def test_two_starts_at_once_give_one_session(project, env):
    procs = [subprocess.Popen([sys.executable, "-m", "autogolf.agent.loop", "start"], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("already running" in o for o in outs) == 1, outs
    assert len(sessions(env)) == 1
    one_agent(env)
    time.sleep(1.5)
    assert len(agent_pids(env)) == 1
    supervisors = [p for p in psutil.process_iter(["cmdline"])
                   if "autogolf.agent.supervisor" in " ".join(p.info["cmdline"] or []) and str(project) in
                   (p.cwd() if p.is_running() else "")]
    assert len(supervisors) == 1


def test_no_restart_while_a_benchmark_holds_the_run_lock(project, env):
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    lock = RunLock("bench-under-test", Path(env["AUTOGOLF_LOCK_PATH"]))
    lock.acquire()
    lock.set_deadline(time.time() + 600)
    try:
        os.kill(agent, signal.SIGKILL)
        time.sleep(6)  # many backoffs' worth
        assert agent_pids(env) == []
        assert "waiting  benchmark bench-under-test holds the run lock" in status(project, env)
    finally:
        lock.release()
    wait_for(lambda: [p for p in agent_pids(env) if p != agent], 15, "the restart once the lock is free")


def test_a_benchmark_past_its_hard_timeout_no_longer_protects_the_agent(project, env):
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    lock = RunLock("stuck-bench", Path(env["AUTOGOLF_LOCK_PATH"]))
    lock.acquire()
    lock.set_deadline(time.time() - 1)
    try:
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: [p for p in agent_pids(env) if p != agent], 15, "the restart")
        assert any("after a benchmark timeout" in line for line in events(project))
    finally:
        lock.release()


def test_idle_agent_is_nudged(project, env):
    env["AUTOGOLF_NUDGE_SECONDS"] = "2"
    assert loop(project, env, "start").returncode == 0
    one_agent(env)
    typed = project / "logs" / "typed.txt"
    wait_for(lambda: typed.is_file() and "Continue the autoresearch loop" in typed.read_text(), 30, "a nudge")
    assert any(" nudge no output and no benchmark for" in line for line in events(project))


def test_stop_leaves_no_process_no_session_no_lock(project, env):
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    out = loop(project, env, "stop")
    assert out.returncode == 0, out.stdout
    assert "tmux session" in out.stdout and "is gone" in out.stdout
    assert sessions(env) == []
    for pid in (agent, supervisor):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert lock_is_free(project / "logs" / "agent" / "supervisor.lock")
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))
    assert any("session_stop" in line for line in events(project))
    assert "not running" in status(project, env)


def test_stop_lets_a_running_benchmark_finish(project, env, tmp_path):
    """The benchmark is a real process holding the run lock (until a flag file appears); stop
    ends the agent, the supervisor and the session, then waits for the benchmark."""
    flag = tmp_path / "finish-now"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from autogolf.run.runlock import RunLock\n"
        "lock = RunLock('long-bench', Path(sys.argv[1])); lock.acquire(); print('held', flush=True)\n"
        "while not Path(sys.argv[2]).exists(): time.sleep(0.1)\n"
        "lock.release(); print('done', flush=True)"), env["AUTOGOLF_LOCK_PATH"], str(flag)],
        cwd=project, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert loop(project, env, "start").returncode == 0
        one_agent(env)
        stop = subprocess.Popen([sys.executable, "-m", "autogolf.agent.loop", "stop"], cwd=project, env=env,
                                stdout=subprocess.PIPE, text=True)
        lines = []
        for line in stop.stdout:
            lines.append(line)
            if "waiting for it to finish" in line:
                break
        assert "benchmark run long-bench is still running: waiting for it to finish" in lines[-1], lines
        assert sessions(env) == []  # the loop is gone while the benchmark still runs
        assert holder.poll() is None
        flag.touch()
        rest = stop.communicate(timeout=30)[0]
        assert stop.returncode == 0 and "benchmark run long-bench finished" in rest
    finally:  # never leave the stand-in benchmark behind, whatever failed
        flag.touch()
    assert holder.wait(timeout=30) == 0 and holder.stdout.read().strip() == "done"


def _failing_turn(error: str, then: str = "sleep 600") -> str:
    """A stand-in that ends its turn the way pi does on a provider fault: an assistant message
    with stopReason "error" (stamped now, in ms) in its session file; then `then`."""
    return ("mkdir -p logs/agent/pi-sessions/p && python3 -c 'import json, sys, time; print(json.dumps("
            "{\"type\": \"message\", \"message\": {\"role\": \"assistant\", \"stopReason\": \"error\", "
            "\"timestamp\": int(time.time() * 1000), \"errorMessage\": sys.argv[1]}}))' "
            f"'{error}' >> logs/agent/pi-sessions/p/s.jsonl; echo failed; {then}")


def _starts(project: Path, what: str) -> list[float]:
    """The epoch seconds of each agent_start event whose reason starts with `what`."""
    out = []
    for line in events(project):
        if f" agent_start {what}" in line:
            out.append(time.mktime(time.strptime(line.split()[0][:19], "%Y-%m-%dT%H:%M:%S")))
    return out


def test_a_rate_limit_is_probed_with_a_growing_wait_and_never_trips_the_breaker(project, env):
    env.update(AUTOGOLF_AGENT_CMD=_failing_turn("429 Too Many Requests: rate limit reached"),
               AUTOGOLF_ERROR_GRACE_SECONDS="30", AUTOGOLF_RATE_LIMIT_WAIT_SECONDS="2",
               AUTOGOLF_BREAKER_RESTARTS="1")
    assert loop(project, env, "start").returncode == 0
    wait_for(lambda: any("restart_scheduled provider rate limit" in l for l in events(project)), 30, "a wait")
    screen = status(project, env)
    assert re.search(r"waiting  for the provider's rate limit, next try at \d\d:\d\d:\d\d \(since \d\d:\d\d:\d\d",
                     screen), screen
    wait_for(lambda: len(_starts(project, "restart: provider rate limit")) >= 4, 60, "four probes")
    log = events(project)
    waits = [float(m[1]) for l in log if (m := re.search(r"restart_scheduled provider rate limit: 429 .* in_s=([\d.]+) "
                                                          r"counted=False", l))]
    # no quiet grace (30 s here) and no fixed 300 s: 2 s after the fault, then 2, 3, 4.5 s after
    # each probe's start (pi's own failing reply in between does not push the next probe back)
    probes = _starts(project, "restart: provider rate limit")
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert 1 <= gaps[0] <= 4 and 1 <= gaps[1] <= 4.5 and 2 <= gaps[2] <= 5.5, (gaps, waits, log)
    assert waits[0] <= 2.0 and len(waits) >= 4, waits
    assert not any("breaker_tripped" in l for l in log)
    assert "breaker  ok (0 of 1 counted restarts" in status(project, env)
    assert len([l for l in log if " provider_fault rate_limit: 429" in l]) == 1  # one fault, many probes


def test_a_rate_limit_with_retry_after_is_retried_then(project, env):
    env.update(AUTOGOLF_AGENT_CMD=_failing_turn("429 Rate limit reached. Please try again in 4s."),
               AUTOGOLF_RATE_LIMIT_WAIT_SECONDS="30")
    assert loop(project, env, "start").returncode == 0
    wait_for(lambda: _starts(project, "restart: provider rate limit"), 30, "the retry")
    failed = (project / "logs" / "agent" / "pi-sessions" / "p" / "s.jsonl").read_text().splitlines()[0]
    failed_at = json.loads(failed)["message"]["timestamp"] / 1000
    retried = _starts(project, "restart: provider rate limit")[0]
    assert 3 <= retried - failed_at <= 7, retried - failed_at  # its 4 s, not our 30 s
    assert any("restart_scheduled provider rate limit" in l and "retry_after=4.0" in l for l in events(project))


def test_pi_answered_on_its_own_cancels_the_probe(project, env):
    """pi's own retry got through before our probe: the probe is cancelled, pi is left alone."""
    answered = ("python3 -c 'import json, time; print(json.dumps({\"type\": \"message\", \"message\": "
                "{\"role\": \"assistant\", \"stopReason\": \"stop\", \"timestamp\": int(time.time() * 1000)}}))' "
                ">> logs/agent/pi-sessions/p/s.jsonl; sleep 600")
    env.update(AUTOGOLF_AGENT_CMD=_failing_turn("Connection error.: connect ECONNREFUSED 127.0.0.1:9",
                                                then=f"sleep 2; {answered}"),
               AUTOGOLF_RATE_LIMIT_WAIT_SECONDS="20")
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    wait_for(lambda: any("restart_cancelled pi got an answer on its own" in l for l in events(project)), 30,
             "the cancellation")
    log = events(project)
    assert any("restart_scheduled provider unreachable: Connection error" in l for l in log), log
    assert any("provider_back unreachable over after" in l for l in log), log
    assert agent_pids(env) == [agent] and "waiting  for the provider" not in status(project, env)


def test_a_killed_supervisor_is_replaced_by_its_window_and_says_so(project, env):
    assert loop(project, env, "start").returncode == 0
    agent = one_agent(env)
    lock = project / "logs" / "agent" / "supervisor.lock"
    for n in range(2):
        supervisor = int(lock.read_text().split()[0])
        killed_at = time.monotonic()
        os.kill(supervisor, signal.SIGKILL)
        new = wait_for(lambda: (lambda pid: pid if pid != supervisor and psutil.pid_exists(pid) and
                                not lock_is_free(lock) else None)(int(lock.read_text().split()[0] or 0)),
                       15, f"replacement {n + 1}")
        assert time.monotonic() - killed_at < 15
        assert new != supervisor
    died = [l for l in events(project) if " supervisor_died " in l]
    assert len(died) == 2 and all("died without stopping (exit status 137 (SIGKILL)); replaced by pid" in l
                                  for l in died), died
    time.sleep(1.5)
    assert agent_pids(env) == [agent]  # adopted, not restarted
    assert "supervisor running" in status(project, env)


def test_status_says_how_to_restart_a_dead_supervisor(project, env):
    assert loop(project, env, "start").returncode == 0
    one_agent(env)
    out = tmux(env, "list-panes", "-a", "-F", "#{window_name} #{pane_pid}")
    window_shell = next(int(pid) for name, pid in (l.split() for l in out.stdout.splitlines()) if name == "supervisor")
    supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    os.kill(window_shell, signal.SIGKILL)  # the restart loop first (the window dies with it)
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: lock_is_free(project / "logs" / "agent" / "supervisor.lock"), 10, "the supervisor to die")
    assert "supervisor not running: `just autoresearch` restarts it" in status(project, env)
    assert loop(project, env, "start").returncode == 0
    assert "supervisor running" in status(project, env)


def test_the_breaker_counts_restarts_across_a_supervisor_replacement(project, env):
    env.update(AUTOGOLF_AGENT_CMD="echo crashing; sleep 0.5; exit 1", AUTOGOLF_BREAKER_RESTARTS="3",
               AUTOGOLF_HEALTHY_SECONDS="600", AUTOGOLF_BACKOFF_SECONDS="1.5", AUTOGOLF_BACKOFF_MAX_SECONDS="3")
    assert loop(project, env, "start").returncode == 0
    wait_for(lambda: len(_starts(project, "restart: agent exited")) >= 2, 60, "two restarts")

    def saved_restarts() -> int:  # what a replacement will read: the event log can lead the state file
        try:
            return len(json.loads((project / "logs" / "agent" / "state.json").read_text()).get("restarts") or [])
        except (OSError, ValueError):
            return 0
    wait_for(lambda: saved_restarts() >= 2 or None, 30, "two restarts in the saved state")
    supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: any("breaker_tripped" in l for l in events(project)), 60, "the breaker")
    log = events(project)
    died = next(i for i, l in enumerate(log) if " supervisor_died " in l)
    assert "restarts_carried=" in log[died] and int(log[died].split("restarts_carried=")[1]) >= 2, log[died]
    tripped = next(l for l in log if "breaker_tripped" in l)
    assert "4 restarts within 600 s (limit 3)" in tripped, tripped
    assert log.index(tripped) > died  # the replacement tripped it, counting its predecessor's restarts


def test_a_dirty_tree_is_refused_before_the_agent_can_sweep_it_into_an_experiment(project, env):
    (project / "benchmark" / "train_gpt_mlx.py").write_text("# my own unfinished work\n")
    (project / "notes.txt").write_text("mine\n")
    out = loop(project, env, "start")
    assert out.returncode == 2
    assert "uncommitted changes (benchmark/train_gpt_mlx.py, notes.txt)" in out.stdout
    assert "commit or stash them first" in out.stdout and sessions(env) == []


def test_status_shows_a_stalled_trainer_with_its_hard_timeout(project, env, tmp_path):
    """A benchmark whose trainer printed nothing for 95 s (its console log's mtime), 25 s before
    its hard timeout (the run lock says when), is stalled, not "starting"."""
    flag = tmp_path / "finish-now"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; from pathlib import Path; from autogolf.run.runlock import RunLock\n"
        "lock = RunLock('hung-bench', Path(sys.argv[1])); lock.acquire(); now = time.time()\n"
        "lock.set_trainer_pid(os.getpid()); lock.note(trainer_started_at=now - 100, hard_timeout_at=now + 25)\n"
        "console = Path('logs/hung-bench.console.txt'); console.parent.mkdir(exist_ok=True)\n"
        "console.write_text('step:1/4 train_loss:6.9\\n'); os.utime(console, (now - 95, now - 95))\n"
        "print('held', flush=True)\n"
        "while not Path(sys.argv[2]).exists(): time.sleep(0.1)"), env["AUTOGOLF_LOCK_PATH"], str(flag)],
        cwd=project, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        screen = status(project, env)
    finally:
        flag.touch()
        holder.wait(timeout=30)
    assert re.search(r"stalled \(no output for 9[5-9] s; hard timeout in 2[0-5] s\)", screen), screen
    assert "starting (no step yet)" not in screen


def test_a_replacement_supervisor_keeps_a_rate_limit_wait(project, env):
    """The supervisor dies while it waits out a rate limit: its replacement adopts the agent,
    sees the error it stopped on, and retries at the same Retry-After."""
    env.update(AUTOGOLF_AGENT_CMD=_failing_turn("429 Rate limit reached. Please try again in 8s."),
               AUTOGOLF_RATE_LIMIT_WAIT_SECONDS="60")
    assert loop(project, env, "start").returncode == 0
    wait_for(lambda: any("restart_scheduled provider rate limit" in l for l in events(project)), 30, "the wait")
    supervisor = int((project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: _starts(project, "restart: provider rate limit"), 30, "the retry")
    log = events(project)
    died = next(i for i, l in enumerate(log) if " supervisor_died " in l)
    assert any(" agent_adopted agent pid" in l for l in log[died:]), log
    failed = (project / "logs" / "agent" / "pi-sessions" / "p" / "s.jsonl").read_text().splitlines()[0]
    failed_at = json.loads(failed)["message"]["timestamp"] / 1000
    assert 7 <= _starts(project, "restart: provider rate limit")[0] - failed_at <= 12, log
