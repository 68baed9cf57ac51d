"""The supervisor: keeps the agent window of this repository's tmux session alive all night.

    bash scripts/tmux-pi-autoresearch.sh      (the supervisor window; `just autoresearch` starts it)

The supervisor window runs it in a restart loop (simpler than the supervisor itself): a killed
or crashed supervisor is replaced within seconds, and the replacement logs that its
predecessor died, with the exit status, and carries on from logs/agent/state.json.

Every AUTOGOLF_POLL_SECONDS it looks at the agent window, through libtmux:
- The agent exited or its pane died: restart it (resuming pi's session with a message that
  carries the loop on), after an exponential backoff: AUTOGOLF_BACKOFF_SECONDS doubling per
  consecutive failure up to AUTOGOLF_BACKOFF_MAX_SECONDS. An agent that stayed up for
  AUTOGOLF_HEALTHY_SECONDS resets the count.
- pi's last reply is an error (read from its session file). A provider fault (a rate limit,
  or the provider unreachable) is waited out without counting against the breaker: until the
  provider's Retry-After when the error gives one, else with probes (a restart of pi) that
  start AUTOGOLF_RATE_LIMIT_WAIT_SECONDS after the fault and grow by half each time up to
  AUTOGOLF_RATE_LIMIT_MAX_WAIT_SECONDS. The probes are counted from the previous probe, not
  from pi's own retries, and a pending probe is cancelled when pi gets an answer on its own.
  Other errors restart once pi has been quiet for AUTOGOLF_ERROR_GRACE_SECONDS.
- No output from the agent and no benchmark for AUTOGOLF_NUDGE_SECONDS: a nudge, typed into
  the agent's pane.
- Circuit breaker: more than AUTOGOLF_BREAKER_RESTARTS counted restarts within
  AUTOGOLF_BREAKER_WINDOW_SECONDS stop the loop (the agent is ended, the supervisor exits);
  `just status` says why; `just autoresearch` starts afresh. The restart history lives in the
  state file, so a replacement supervisor counts the restarts before it.
- What the loop waits for and until when (a restart, a provider fault) is in the state file's
  `next_restart` and `provider_wait`, which `just status` shows.
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
from datetime import datetime
from pathlib import Path

import psutil

from autogolf import settings
from autogolf.agent import launch, session

RATE_LIMIT = re.compile(r"rate.?limit|\b429\b|too many requests|quota|overloaded|\b529\b", re.I)
# The provider could not be reached or answered with a transient server error: waited out like a
# rate limit (a long outage must never trip the breaker), not restarted as a crash.
UNREACHABLE = re.compile(r"connection (?:error|refused|reset|closed|lost)|ECONNREFUSED|ECONNRESET|ETIMEDOUT|"
                         r"ENOTFOUND|EAI_AGAIN|fetch failed|socket hang up|network.?error|"
                         r"\b50[234]\b|service.?unavailable", re.I)
PROVIDER_FAULTS = ("rate_limit", "unreachable")
# How providers say when to come back, in the error text pi records: a Retry-After header
# quoted, "try again in 20s", or pi's own "Server requested 45s retry delay".
RETRY_AFTER = re.compile(r"retry[- _]after(?P<ms>[- _]ms)?\W{0,4}(?P<a>\d+(?:\.\d+)?)\s*(?P<ua>ms|s|sec|seconds?)?\b"
                         r"|try again in\s*(?P<b>\d+(?:\.\d+)?)\s*(?P<ub>ms|s|sec|seconds?|m|min|minutes?)?\b"
                         r"|requested\s*(?P<c>\d+(?:\.\d+)?)\s*s\s*retry delay", re.I)
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
    rate_limit_max_wait: float = float(settings.default("AUTOGOLF_RATE_LIMIT_MAX_WAIT_SECONDS"))
    breaker_restarts: int = int(settings.default("AUTOGOLF_BREAKER_RESTARTS"))
    breaker_window: float = float(settings.default("AUTOGOLF_BREAKER_WINDOW_SECONDS"))
    agent_cmd: str = "bash scripts/run-pi-autoresearch.sh"

    ENV = {"poll": "AUTOGOLF_POLL_SECONDS", "backoff": "AUTOGOLF_BACKOFF_SECONDS",
           "backoff_max": "AUTOGOLF_BACKOFF_MAX_SECONDS", "healthy": "AUTOGOLF_HEALTHY_SECONDS",
           "nudge_after": "AUTOGOLF_NUDGE_SECONDS", "error_grace": "AUTOGOLF_ERROR_GRACE_SECONDS",
           "rate_limit_wait": "AUTOGOLF_RATE_LIMIT_WAIT_SECONDS",
           "rate_limit_max_wait": "AUTOGOLF_RATE_LIMIT_MAX_WAIT_SECONDS",
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
    restart_kind: str = ""      # "rate_limit" / "unreachable" (a probe), else a plain restart


# --------------------------------------------------------------------------- pi's own state

@dataclass
class Reply:
    """pi's last reply, from its session file."""
    error: str | None = None    # its errorMessage when it failed
    at: float = 0.0             # when it was written (epoch seconds); 0 when there is none
    mtime: float = 0.0          # the session file's mtime (any activity)


def _entry_time(entry: dict, message: dict, fallback: float) -> float:
    stamp = message.get("timestamp")
    if isinstance(stamp, (int, float)):
        return stamp / 1000 if stamp > 1e11 else float(stamp)
    try:
        return datetime.fromisoformat(str(entry.get("timestamp")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return fallback


def pi_last_reply(session_dir: Path = launch.SESSION_DIR) -> Reply:
    """pi's last assistant message: did it fail, and when. User messages after it (a re-prompt,
    the supervisor's resume message) do not hide a failure: nothing has answered them yet."""
    files = sorted(session_dir.glob("**/*.jsonl"), key=lambda p: p.stat().st_mtime) if session_dir.is_dir() else []
    if not files:
        return Reply()
    path = files[-1]
    mtime = path.stat().st_mtime
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 262_144))
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("message") if entry.get("type") == "message" else None
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if message.get("stopReason") == "aborted":
            continue  # cut short (pi was ended mid-reply): says nothing about the provider
        at = _entry_time(entry, message, mtime)
        if message.get("stopReason") == "error":
            return Reply(str(message.get("errorMessage") or "unknown error"), at, mtime)
        return Reply(None, at, mtime)
    return Reply(None, 0.0, mtime)


def pi_last_error(session_dir: Path = launch.SESSION_DIR) -> tuple[str | None, float]:
    """(errorMessage of pi's last reply if it failed, the session file's mtime)."""
    reply = pi_last_reply(session_dir)
    return reply.error, reply.mtime


def fault_kind(error: str) -> str:
    """rate_limit, unreachable (both the provider's, waited out), or error (ours or pi's)."""
    if RATE_LIMIT.search(error):
        return "rate_limit"
    if UNREACHABLE.search(error):
        return "unreachable"
    return "error"


def retry_after_seconds(error: str) -> float | None:
    """The wait the provider asked for, when the error text carries one."""
    match = RETRY_AFTER.search(error)
    if not match:
        return None
    if match["a"]:
        value, unit = float(match["a"]), ("ms" if match["ms"] else (match["ua"] or "s"))
    elif match["b"]:
        value, unit = float(match["b"]), match["ub"] or "s"
    else:
        value, unit = float(match["c"]), "s"
    unit = unit.lower()
    return value / 1000 if unit == "ms" else value * 60 if unit.startswith("m") else value


def describe_exit(raw: str | None) -> str:
    """A shell's exit status in words: 137 is "exit status 137 (SIGKILL)"."""
    try:
        code = int(raw or "")
    except ValueError:
        return "exit status unknown"
    if code > 128:
        try:
            return f"exit status {code} ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit status {code}"


def _wait_gone(procs: list, timeout: float) -> list:
    """The processes still alive after up to timeout seconds. A zombie counts as gone: the
    pane's process is tmux's child, reaped when tmux gets to it, and waiting for that (as
    psutil.wait_procs does for a process that is not ours) delayed every restart by seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


# --------------------------------------------------------------------------- the supervisor

def dead_pane_status(pane) -> str | None:
    """A dead pane's exit status ("1"), or the signal that ended it ("SIGKILL", as
    describe_exit words it), or None while neither tmux nor the agent's window script
    (session.AGENT_EXIT_FILE) says."""
    if pane.pane_dead_status:
        return pane.pane_dead_status
    signo = getattr(pane, "pane_dead_signal", None)  # a signal leaves no exit status; tmux >= 3.3 names it
    if str(signo or "").isdigit():
        return describe_exit(str(128 + int(signo))).split(" ", 2)[2]
    try:
        code = session.AGENT_EXIT_FILE.read_text().strip()
    except OSError:
        return None
    return describe_exit(code).split(" ", 2)[2] if code.isdigit() else None


class Supervisor:
    def __init__(self, cfg: Config, session_name: str | None = None):
        self.cfg = cfg
        self.name = session_name or session.session_name()
        self.server = session.tmux_server()
        self.watch = AgentWatch()
        self.restarts: list[dict] = []
        self.stop_signal: int | None = None
        self.misses = 0  # consecutive looks that did not find the session
        self.statusless_looks = 0  # consecutive looks at a dead agent pane with no exit status yet
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
        session.AGENT_EXIT_FILE.unlink(missing_ok=True)  # the last agent's; this one writes its own
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
        alive = _wait_gone(procs, 5.0)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass

    def adopt(self) -> None:
        """An agent already running (a replacement supervisor): its replies since it started
        are its own, so an error it stopped on before this supervisor came is still seen."""
        _, pane = self.agent_pane()
        if pane is None or pane.pane_dead == "1":
            return
        try:
            self.watch.started = psutil.Process(int(pane.pane_pid)).create_time()
        except (psutil.Error, TypeError, ValueError):
            return
        self.event("agent_adopted", f"agent pid {pane.pane_pid}, up {time.time() - self.watch.started:.0f} s")

    def end_agent_window(self, pane) -> None:
        """The loop stops: the agent's processes and its window go (the session ends with
        the supervisor's window)."""
        self.kill_agent_tree(pane)
        try:
            pane.window.kill()
        except Exception:
            pass

    # -- decisions
    def schedule_restart(self, reason: str, wait: float | None = None, counted: bool = True,
                         kind: str = "restart", **facts) -> None:
        if self.watch.restart_at is not None:
            return
        if wait is None:
            wait = min(self.cfg.backoff_max, self.cfg.backoff * (2 ** self.watch.failures))
        self.watch.restart_at = time.time() + wait
        self.watch.restart_reason = reason
        self.watch.counted = counted
        self.watch.restart_kind = kind
        # what the loop waits for and until when, for `just status` (and a replacement supervisor)
        self.state["next_restart"] = {"at": round(self.watch.restart_at, 3), "kind": kind,
                                      "reason": reason, **facts}
        self.event("restart_scheduled", reason, in_s=f"{wait:.1f}", counted=counted,
                   at=time.strftime("%H:%M:%S", time.localtime(self.watch.restart_at)), **facts)

    def cancel_restart(self, why: str) -> None:
        self.watch.restart_at = None
        self.state.pop("next_restart", None)
        self.event("restart_cancelled", why)

    def schedule_probe(self, kind: str, error: str, at: float) -> None:
        """A provider fault: the next try at its Retry-After, else at a wait that starts at
        rate_limit_wait and grows by half per probe, counted from the previous probe (pi's own
        retries in between do not push it back)."""
        now = time.time()
        wait = self.state.get("provider_wait")
        if not wait:
            wait = self.state["provider_wait"] = {"kind": kind, "since": round(min(at, now), 3), "probes": 0,
                                                  "last_probe": round(min(at, now), 3), "error": error[:200]}
            self.event("provider_fault", f"{kind}: {error[:160]}")
        wait.update(kind=kind, error=error[:200])
        retry_after = retry_after_seconds(error)
        if retry_after is not None:
            until = min(at, now) + retry_after + 1.0  # a second's margin over the provider's word
        else:
            step = self.cfg.rate_limit_wait * 1.5 ** max(0, wait["probes"] - 1)
            until = wait["last_probe"] + min(self.cfg.rate_limit_max_wait, step)
        until = max(until, now + 1.0)
        what = "provider rate limit" if kind == "rate_limit" else "provider unreachable"
        self.schedule_restart(f"{what}: {error[:160]}", wait=until - now, counted=False, kind=kind,
                              retry_after=retry_after, probe=wait["probes"] + 1)

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
        probe = watch.restart_kind in PROVIDER_FAULTS and self.state.get("provider_wait")
        if not probe:
            watch.failures += 1  # a probe is not the agent's failure: no longer backoff for it
        watch.restart_at = None
        self.state.pop("next_restart", None)
        self.start_agent(sess, f"restart: {watch.restart_reason}", pane)
        if probe:
            # the next wait counts from this probe's start (ending the old agent can take seconds)
            probe["probes"] += 1
            probe["last_probe"] = round(time.time(), 3)
        return True

    def observe(self, pane) -> None:
        """Track the agent's output, pi's error state, and idleness."""
        watch, now = self.watch, time.time()
        try:
            screen = "\n".join(pane.capture_pane() or [])
        except Exception:
            screen = ""
        reply = pi_last_reply()
        fresh = reply.at >= watch.started - 1.0  # a reply from before this agent started is not its own
        error = reply.error if fresh else None
        fingerprint = hashlib.sha1(f"{screen}\0{reply.mtime}".encode()).hexdigest()
        if fingerprint != watch.last_fingerprint:
            watch.last_fingerprint, watch.last_activity = fingerprint, now
        if watch.failures and now - watch.started > self.cfg.healthy:
            watch.failures = 0  # it has been up long enough: the next failure starts afresh
        waiting = self.state.get("provider_wait")
        if waiting and reply.at > waiting["since"] and reply.error is None:
            # the provider answered (pi's own retry, or our probe): the fault is over
            self.state.pop("provider_wait", None)
            self.event("provider_back", f"{waiting['kind']} over after {now - waiting['since']:.0f} s",
                       probes=waiting["probes"])
            if watch.restart_at is not None and watch.restart_kind in PROVIDER_FAULTS:
                self.cancel_restart("pi got an answer on its own")
            return
        if watch.restart_at is not None:
            return  # a probe is pending: only its cancellation above is looked for
        quiet = now - watch.last_activity
        kind = fault_kind(error) if error else ""
        if kind in PROVIDER_FAULTS:
            self.schedule_probe(kind, error, reply.at)
        elif error and quiet >= self.cfg.error_grace:
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
            status = dead_pane_status(pane)
            # Neither tmux (3.3a loses statuses) nor the window script's file says yet (the
            # script itself was killed, say): wait a few looks, so the restart's reason (and the
            # breaker's record) says how the agent ended when it can.
            if status is None and self.statusless_looks < SESSION_MISSES:
                self.statusless_looks += 1
                return True
            self.statusless_looks = 0
            self.schedule_restart(f"agent exited (status {status or '?'})"
                                  + (" after a benchmark timeout" if bench.get("past_deadline") else ""))
        elif self.watch.restart_at is None or self.watch.restart_kind in PROVIDER_FAULTS:
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
        fresh = previous.get("breaker", {}).get("state") == "tripped"
        self.state["restarts_total"] = 0 if fresh else previous.get("restarts_total", 0)
        # The breaker's history outlives this process: a replacement counts the restarts before it.
        self.restarts = [] if fresh else [r for r in previous.get("restarts") or []
                                          if isinstance(r, dict) and isinstance(r.get("at"), (int, float))]
        if not fresh and previous.get("provider_wait"):
            self.state["provider_wait"] = previous["provider_wait"]  # the same fault, the same backoff
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: setattr(self, "stop_signal", signum))
        # AUTOGOLF_SUPERVISOR_EXIT: the predecessor's exit status, set by the window's restart loop (unset: unknown)
        died = previous.get("supervisor_pid")
        if died and died != os.getpid():
            # It never wrote its stop (the state keeps its pid): it was killed or crashed.
            self.event("supervisor_died", f"supervisor pid {died} died without stopping "
                       f"({describe_exit(settings.get('AUTOGOLF_SUPERVISOR_EXIT') or None)}); replaced by pid {os.getpid()}",
                       restarts_carried=len(self.restarts))
        self.event("supervisor_start", f"session {self.name}", pid=os.getpid())
        self.adopt()
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
        except Exception as e:
            # logged where a person looks (the traceback goes only to the window); the window's
            # restart loop starts a replacement, which says this one died
            self.event("supervisor_crash", f"{type(e).__name__}: {e}"[:300])
            raise
        else:
            self.state["supervisor_pid"] = None  # a clean stop: nothing died
        finally:
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
