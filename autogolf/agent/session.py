"""What the loop's pieces share: the tmux session's name and server, the state files under
logs/agent/, the event log logs/supervisor.log, and whether a benchmark holds the run lock.

One tmux session per repository checkout, named autogolf-<folder>-<hash of its path>, on the
default tmux server (AUTOGOLF_TMUX_SOCKET names another, as `tmux -L` does: the tests use it).
Windows: "supervisor" (scripts/tmux-pi-autoresearch.sh) and "agent"
(scripts/run-pi-autoresearch.sh, started and restarted by the supervisor).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path

import libtmux

from autogolf import settings
from autogolf.run import runlock
from autogolf.fsutil import atomic_write
from autogolf.paths import REPO_ROOT

STATE_DIR = REPO_ROOT / "logs" / "agent"
STATE_FILE = STATE_DIR / "state.json"
AGENT_EXIT_FILE = STATE_DIR / "agent.exit"  # the agent's exit status, as scripts/run-pi-autoresearch.sh writes it
SUPERVISOR_LOCK = STATE_DIR / "supervisor.lock"
START_LOCK = STATE_DIR / "start.lock"
EVENT_LOG = REPO_ROOT / "logs" / "supervisor.log"
AGENT_WINDOW = "agent"
SUPERVISOR_WINDOW = "supervisor"


def session_name(repo: Path = REPO_ROOT) -> str:
    digest = hashlib.sha1(str(Path(repo).resolve()).encode()).hexdigest()[:6]
    folder = re.sub(r"[^A-Za-z0-9_-]", "_", Path(repo).resolve().name)[:24]
    return f"autogolf-{folder}-{digest}"


def tmux_server() -> libtmux.Server:
    return libtmux.Server(socket_name=settings.get("AUTOGOLF_TMUX_SOCKET") or None)


def find_session(server: libtmux.Server, name: str | None = None):
    name = name or session_name()
    try:
        if not server.is_alive() or not server.has_session(name):
            return None
        return server.sessions.get(session_name=name, default=None)
    except Exception:  # libtmux raises several kinds when the server is gone
        return None


def find_window(session, name: str, strict: bool = False):
    """The session's window of that name, or None. strict: a tmux error raises instead of
    reading as "no such window" (the supervisor must not start a second agent on a hiccup)."""
    if session is None:
        return None
    try:
        return session.windows.get(window_name=name, default=None)
    except Exception:
        if strict:
            raise
        return None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- state and events

def read_state() -> dict:
    try:
        state = json.loads(STATE_FILE.read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(state: dict) -> None:
    atomic_write(STATE_FILE, (json.dumps(state, indent=1, default=str) + "\n").encode())


def log_event(event: str, reason: str = "", **fields) -> str:
    """One line per event in logs/supervisor.log: time, event, reason (then key=value facts)."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    line = f"{now_iso()} {event} {' '.join(reason.split()) or '-'}{(' ' + extra) if extra else ''}"
    EVENT_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(EVENT_LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return line


def try_lock(path: Path) -> int | None:
    """A held flock on path (the fd), or None when someone else holds it. The kernel drops
    it when the holder dies, so a kill -9 never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def supervisor_running() -> bool:
    return not runlock.lock_is_free(SUPERVISOR_LOCK)


# --------------------------------------------------------------------------- the benchmark

def benchmark_state() -> dict:
    """Is a benchmark holding the machine's run lock, and is it past its hard timeout?"""
    path = runlock.default_lock_path()
    if runlock.lock_is_free(path):
        return {"running": False}
    info = runlock.RunLock("-", path).read_holder() or {}
    deadline = info.get("deadline")
    past = isinstance(deadline, (int, float)) and time.time() > deadline
    return {"running": True, "past_deadline": past, "info": info}
