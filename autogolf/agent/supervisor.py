"""The supervisor: keeps the agent window of this repository's tmux session alive all night.

    bash scripts/tmux-pi-autoresearch.sh      (the supervisor window; `just autoresearch` starts it)

Every AUTOGOLF_POLL_SECONDS it looks at the agent window, through libtmux:
- The agent exited or its pane died: restart it (resuming pi's session with a message that
  carries the loop on), after an exponential backoff: AUTOGOLF_BACKOFF_SECONDS doubling per
  consecutive failure up to AUTOGOLF_BACKOFF_MAX_SECONDS. An agent that stayed up for
  AUTOGOLF_HEALTHY_SECONDS resets the count.
- pi's last reply is an error (read from its session file): a provider rate limit waits
  AUTOGOLF_RATE_LIMIT_WAIT_SECONDS and restarts without counting against the breaker; other
  errors (the provider unreachable, a crash) restart once pi has been quiet for
  AUTOGOLF_ERROR_GRACE_SECONDS.
- No output from the agent and no benchmark for AUTOGOLF_NUDGE_SECONDS: a nudge, typed into
  the agent's pane.
- Circuit breaker: more than AUTOGOLF_BREAKER_RESTARTS counted restarts within
  AUTOGOLF_BREAKER_WINDOW_SECONDS stop the loop (the agent is ended, the supervisor exits);
  `just status` says why; `just autoresearch` starts afresh.
- While a benchmark holds the machine's run lock and is not past its hard timeout, the agent is
  never restarted or nudged: that would kill or disturb the measurement.
Exactly one supervisor per repository: an flock on logs/agent/supervisor.lock, released by
the kernel when its holder dies. Every event is one line in logs/supervisor.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from autogolf import settings
from autogolf.agent import launch, session

RATE_LIMIT = re.compile(r"rate.?limit|\b429\b|too many requests|quota|overloaded|\b529\b", re.I)
SESSION_MISSES = 5
NUDGE_MESSAGE = ("autogolf supervisor: no output and no benchmark for {minutes:.0f} min. Continue "
                 "the autoresearch loop now: pick the next idea from autoresearch.ideas.md, then "
                 "run_experiment and log_experiment.")


@dataclass
class Config:
    # The defaults are declared once, in autogolf/settings.py, with the variables below.
    poll: float = float(settings.default("AUTOGOLF_POLL_SECONDS"))
    backoff: float = float(settings.default("AUTOGOLF_BACKOFF_SECONDS"))
    backoff_max: float = float(settings.default("AUTOGOLF_BACKOFF_MAX_SECONDS"))
    healthy: float = float(settings.default("AUTOGOLF_HEALTHY_SECONDS"))
    nudge_after: float = float(settings.default("AUTOGOLF_NUDGE_SECONDS"))
    error_grace: float = float(settings.default("AUTOGOLF_ERROR_GRACE_SECONDS"))
    rate_limit_wait: float = float(settings.default("AUTOGOLF_RATE_LIMIT_WAIT_SECONDS"))
    breaker_restarts: int = int(settings.default("AUTOGOLF_BREAKER_RESTARTS"))
    breaker_window: float = float(settings.default("AUTOGOLF_BREAKER_WINDOW_SECONDS"))
    agent_cmd: str = "bash scripts/run-pi-autoresearch.sh"

    ENV = {"poll": "AUTOGOLF_POLL_SECONDS", "backoff": "AUTOGOLF_BACKOFF_SECONDS",
           "backoff_max": "AUTOGOLF_BACKOFF_MAX_SECONDS", "healthy": "AUTOGOLF_HEALTHY_SECONDS",
           "nudge_after": "AUTOGOLF_NUDGE_SECONDS", "error_grace": "AUTOGOLF_ERROR_GRACE_SECONDS",
           "rate_limit_wait": "AUTOGOLF_RATE_LIMIT_WAIT_SECONDS",
           "breaker_restarts": "AUTOGOLF_BREAKER_RESTARTS", "breaker_window": "AUTOGOLF_BREAKER_WINDOW_SECONDS"}

    @classmethod
    def from_env(cls) -> "Config":
        cfg = cls()
        for name, var in cls.ENV.items():
            raw = settings.get(var)  # unset: the default declared in settings.py
            kind = type(getattr(cfg, name))
            try:
                value = kind(raw)
            except ValueError:
                raise SystemExit(f"supervisor: {var}={raw!r} is not a number") from None
            if value <= 0:
                raise SystemExit(f"supervisor: {var} must be positive (got {raw})")
            setattr(cfg, name, value)
        return cfg


@dataclass
class AgentWatch:
    """What the supervisor knows about the current agent process."""
    started: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    last_fingerprint: str = ""
    last_nudge: float = 0.0
    failures: int = 0           # consecutive, for the backoff
    restart_at: float | None = None
    restart_reason: str = ""
    counted: bool = True        # does the pending restart count against the breaker?


# --------------------------------------------------------------------------- pi's own state

def pi_last_error(session_dir: Path = launch.SESSION_DIR) -> tuple[str | None, float]:
    """(errorMessage of pi's last reply if that reply failed, the session file's mtime)."""
    files = sorted(session_dir.glob("**/*.jsonl"), key=lambda p: p.stat().st_mtime) if session_dir.is_dir() else []
    if not files:
        return None, 0.0
    path = files[-1]
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 262_144))
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("type") != "message":
            continue
        message = entry.get("message") or {}
        if message.get("role") == "assistant" and message.get("stopReason") == "error":
            return str(message.get("errorMessage") or "unknown error"), path.stat().st_mtime
        return None, path.stat().st_mtime
    return None, path.stat().st_mtime


# --------------------------------------------------------------------------- the supervisor

class Supervisor:
    def __init__(self, cfg: Config, session_name: str | None = None):
        self.cfg = cfg
        self.name = session_name or session.session_name()
        self.server = session.tmux_server()
        self.watch = AgentWatch()
        self.restarts: list[dict] = []
        self.stop_signal: int | None = None
        self.misses = 0  # consecutive looks that did not find the session
        self.state = {"supervisor_pid": os.getpid(), "started_at": session.now_iso(),
                      "session": self.name, "breaker": {"state": "ok"}, "restarts_total": 0,
                      "config": {k: getattr(cfg, k) for k in Config.ENV}}

    # -- bookkeeping
    def event(self, event: str, reason: str = "", **fields) -> None:
        line = session.log_event(event, reason, **fields)
        print(line, flush=True)
        self.state["last_event"] = line
        self.save()

    def save(self) -> None:
        self.state["restarts"] = self.restarts[-50:]
        self.state["updated_at"] = session.now_iso()
        session.write_state(self.state)

    # -- the agent window
    def agent_pane(self):
        """(session, agent pane); (session, None) when there is no agent window; (None, None)
        when the session is missing or tmux did not answer."""
        sess = session.find_session(self.server, self.name)
        try:
            window = session.find_window(sess, session.AGENT_WINDOW, strict=True)
            if window is None:
                return sess, None
            pane = window.active_pane
            pane.refresh()
        except Exception:
            return None, None
        return sess, pane

    def start_agent(self, sess, reason: str, pane=None) -> None:
        """A new agent window, or a respawn of `pane`; pi resumes when it has a session."""
        cmd = self.cfg.agent_cmd
        if pane is None:
            window = sess.new_window(window_name=session.AGENT_WINDOW, window_shell=cmd,
                                     start_directory=str(session.REPO_ROOT), attach=False)
            window.set_option("remain-on-exit", "on")  # a dead pane keeps its exit status
            pane = window.active_pane
        else:
            self.kill_agent_tree(pane)
            pane.respawn(shell=cmd, start_directory=str(session.REPO_ROOT), kill=True)
        pane.refresh()
        self.watch = AgentWatch(failures=self.watch.failures)
        self.state["agent"] = {"pid": int(pane.pane_pid or 0), "started_at": session.now_iso(),
                               "pane": pane.pane_id}
        self.event("agent_start", reason, pid=pane.pane_pid, resume=launch.has_session())

    def kill_agent_tree(self, pane, keep: set[int] = frozenset()) -> None:
        """End the agent's processes, sparing `keep` (a benchmark that may finish)."""
        try:
            root = psutil.Process(int(pane.pane_pid))
            procs = [root] + root.children(recursive=True)
        except (psutil.Error, TypeError, ValueError):
            return
        procs = [p for p in procs if p.pid not in keep]
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass

    def end_agent_window(self, pane) -> None:
        """The loop stops: the agent's processes and its window go (the session ends with
        the supervisor's window)."""
        self.kill_agent_tree(pane)
        try:
            pane.window.kill()
        except Exception:
            pass

    # -- decisions
    def schedule_restart(self, reason: str, wait: float | None = None, counted: bool = True) -> None:
        if self.watch.restart_at is not None:
            return
        if wait is None:
            wait = min(self.cfg.backoff_max, self.cfg.backoff * (2 ** self.watch.failures))
        self.watch.restart_at = time.time() + wait
        self.watch.restart_reason = reason
        self.watch.counted = counted
        self.event("restart_scheduled", reason, in_s=f"{wait:.1f}", counted=counted)

    def breaker_tripped(self) -> bool:
        now = time.time()
        recent = [r for r in self.restarts if r["counted"] and now - r["at"] <= self.cfg.breaker_window]
        if len(recent) <= self.cfg.breaker_restarts:
            return False
        reason = (f"{len(recent)} restarts within {self.cfg.breaker_window:.0f} s (limit "
                  f"{self.cfg.breaker_restarts}); last: {self.restarts[-1]['reason']}")
        self.state["breaker"] = {"state": "tripped", "at": session.now_iso(), "reason": reason}
        self.event("breaker_tripped", reason)
        return True

    def do_restart(self, sess, pane) -> bool:
        """Restart now. False when the breaker tripped instead."""
        watch = self.watch
        self.restarts.append({"at": time.time(), "reason": watch.restart_reason, "counted": watch.counted})
        self.state["restarts_total"] = self.state.get("restarts_total", 0) + 1
        if watch.counted and self.breaker_tripped():
            return False
        watch.failures += 1
        watch.restart_at = None
        self.start_agent(sess, f"restart: {watch.restart_reason}", pane)
        return True

    def observe(self, pane) -> None:
        """Track the agent's output, pi's error state, and idleness."""
        watch, now = self.watch, time.time()
        try:
            screen = "\n".join(pane.capture_pane() or [])
        except Exception:
            screen = ""
        error, mtime = pi_last_error()
        if mtime < watch.started:
            error = None  # a reply from before this agent started is not its error
        fingerprint = hashlib.sha1(f"{screen}\0{mtime}".encode()).hexdigest()
        if fingerprint != watch.last_fingerprint:
            watch.last_fingerprint, watch.last_activity = fingerprint, now
        if watch.failures and now - watch.started > self.cfg.healthy:
            watch.failures = 0  # it has been up long enough: the next failure starts afresh
        quiet = now - watch.last_activity
        if error and quiet >= self.cfg.error_grace:
            if RATE_LIMIT.search(error):
                self.schedule_restart(f"provider rate limit: {error[:160]}", wait=self.cfg.rate_limit_wait,
                                      counted=False)
            else:
                self.schedule_restart(f"pi stopped on an error: {error[:160]}")
        elif quiet >= self.cfg.nudge_after and now - watch.last_nudge >= self.cfg.nudge_after:
            watch.last_nudge = now
            pane.send_keys(NUDGE_MESSAGE.format(minutes=quiet / 60), enter=False, literal=True)
            pane.send_keys("Enter", enter=False)
            self.event("nudge", f"no output and no benchmark for {quiet:.0f} s")

    def tick(self) -> bool:
        """One look at the agent. False when the loop must end."""
        sess, pane = self.agent_pane()
        if sess is None:
            # tmux can fail to answer on a loaded machine: only a session missing on several
            # looks in a row is gone (a supervisor that quit on one miss would end the night)
            self.misses += 1
            if self.misses < SESSION_MISSES:
                return True
            self.event("session_gone", f"tmux session {self.name} missing on {self.misses} looks in a row")
            return False
        self.misses = 0
        if pane is None:  # no agent window at all: starting one disturbs no measurement
            self.start_agent(sess, "no agent window")
            return True
        bench = session.benchmark_state()
        if bench["running"] and not bench["past_deadline"]:
            # A measurement is running: leave the agent alone, and count it as activity.
            self.watch.last_activity = time.time()
            if self.watch.restart_at is not None or pane.pane_dead == "1":
                self.state["deferred"] = f"benchmark {bench['info'].get('run_id', '?')} holds the run lock"
            return True
        self.state.pop("deferred", None)
        if pane.pane_dead == "1":
            status = pane.pane_dead_status or "?"
            self.schedule_restart(f"agent exited (status {status})"
                                  + (" after a benchmark timeout" if bench.get("past_deadline") else ""))
        elif self.watch.restart_at is None:
            self.observe(pane)
        if self.watch.restart_at is not None and time.time() >= self.watch.restart_at:
            if not self.do_restart(sess, pane):
                self.end_agent_window(pane)
                return False
        return True

    def run(self) -> int:
        fd = session.try_lock(session.SUPERVISOR_LOCK)
        if fd is None:
            print(f"supervisor: another supervisor already runs for {session.REPO_ROOT} "
                  f"(lock {session.SUPERVISOR_LOCK}); exiting", flush=True)
            return 0
        previous = session.read_state()
        self.state["restarts_total"] = 0 if previous.get("breaker", {}).get("state") == "tripped" \
            else previous.get("restarts_total", 0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: setattr(self, "stop_signal", signum))
        self.event("supervisor_start", f"session {self.name}", pid=os.getpid())
        code = 0
        try:
            while self.stop_signal is None:
                if not self.tick():
                    code = 3 if self.state["breaker"]["state"] == "tripped" else 0
                    break
                self.save()
                time.sleep(self.cfg.poll)
            if self.stop_signal is not None:
                self.event("supervisor_stop", f"signal {signal.Signals(self.stop_signal).name}")
        finally:
            self.state["supervisor_pid"] = None
            self.state["stopped_at"] = session.now_iso()
            self.save()
            os.close(fd)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.supervisor",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", default=None, help="tmux session name (default: this checkout's)")
    parser.parse_args(argv)
    cfg = Config.from_env()
    return Supervisor(cfg, parser.parse_args(argv).session).run()


if __name__ == "__main__":
    sys.exit(main())
