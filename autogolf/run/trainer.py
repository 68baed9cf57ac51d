"""The trainer process: start it in its own session, stream its output, stop it on a timeout
or a signal, and kill its whole tree.

The orchestrator runs the trainer (and the harness's scorer) through `run_trainer`. Signals
are recorded by a `StopFlag` and acted on at safe points -- while waiting for the lock,
between the run's steps, while waiting for the trainer -- so a signal can never cut a kill,
a ledger write or a lock release in half.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from autogolf.proc import die_with_parent
from autogolf.paths import REPO_ROOT
from autogolf.run.runlock import RunLock

_PROGRESS_QUIET_SECONDS = 10.0  # at most one val_progress line per this many seconds on stdout


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; unwinds to the finalization, which still writes the ledger."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """The first SIGINT/SIGTERM/SIGHUP of this benchmark process. The handler only records
    it; `check()` raises Interrupted where stopping is safe."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        # SIGHUP too: a closed terminal or tmux pane must not orphan a trainer unrecorded.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    def check(self) -> None:
        if self.signal is not None:
            raise Interrupted(self.signal)


@dataclass
class ProcessFacts:
    """One child's pid and lifetime (epoch seconds), for the ledger's timing: filled in even
    when the child was interrupted, so the row still says what ran."""
    pid: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    seconds: float = 0.0


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the trainer's process group and every descendant (some may have left the
    group), wait up to `grace` seconds, then SIGKILL whatever is left. Reaps the trainer."""
    others = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in others:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGKILL:
            break
        try:  # a stopped (hung) trainer gets the SIGTERM now, not a grace later as a SIGKILL
            os.killpg(proc.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + grace
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is not None and not alive:
            break
    proc.wait()


def _stream(proc: subprocess.Popen, console_path: Path, state: dict, on_line=None) -> None:
    """Copy the trainer's output to the console file; echo it to stdout with a prefix (so
    nothing the trainer prints can pose as a METRIC line), val_progress thinned out.
    `on_line(line, seconds since the trainer started)` sees every line as it arrives: the
    harness's own clock for the sizing probe and the timeout projection (run/sizing.py)."""
    last_progress = 0.0
    started = time.monotonic()
    with open(console_path, "wb") as console:
        for raw in iter(proc.stdout.readline, b""):
            console.write(raw)
            console.flush()
            line = raw.decode("utf-8", errors="replace").rstrip()
            state["last_line"] = line or state.get("last_line", "")
            if on_line is not None:
                on_line(line, time.monotonic() - started)
            if line.startswith("val_progress:"):
                now = time.monotonic()
                if now - last_progress < _PROGRESS_QUIET_SECONDS:
                    continue
                last_progress = now
            if state.get("echo", True):
                try:
                    print(f"  | {line}", flush=True)
                except (OSError, ValueError):
                    state["echo"] = False  # stdout went away (reader killed): keep logging


def _wait(proc: subprocess.Popen, timeout: float, grace: float, stop: StopFlag, start: float) -> bool:
    """Wait for the trainer; kill its tree on a signal or past `timeout`. True: timed out."""
    while True:
        try:
            proc.wait(timeout=0.2)
            return False
        except subprocess.TimeoutExpired:
            if stop.signal is not None:
                kill_tree(proc, grace)
                return False
            if time.monotonic() - start > timeout:
                kill_tree(proc, grace)
                return True


def run_trainer(cmd: list[str], env: dict, console_path: Path, timeout: float, grace: float,
                lock: RunLock, stop: StopFlag, facts: ProcessFacts | None = None,
                cwd: Path = REPO_ROOT, on_line=None) -> dict:
    """Run the trainer to completion, timeout or interruption. Returns returncode,
    timed_out, trainer_s; raises Interrupted (after the tree is dead) on SIGINT/SIGTERM.
    `facts` (the caller's) gets the pid and lifetime whichever way it ends."""
    facts = ProcessFacts() if facts is None else facts
    console_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    started_at = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True,  # its own group: we kill it as a whole
                            pass_fds=(lock.fd,),  # a lingering trainer keeps the machine locked
                            preexec_fn=die_with_parent(os.getpid()))
    lock.set_trainer_pid(proc.pid)
    lock.note(trainer_started_at=round(started_at, 3), hard_timeout_at=round(started_at + timeout, 3))
    state: dict = {}
    reader = threading.Thread(target=_stream, args=(proc, console_path, state, on_line), daemon=True)
    reader.start()
    timed_out = False
    try:
        timed_out = _wait(proc, timeout, grace, stop, start)
    finally:
        # Anything the trainer left behind in its group (it exited, or was killed -9 by
        # someone else while a child of its lived on) goes too: one trainer per machine.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        reader.join(timeout=5.0)
        lock.set_trainer_pid(None)
        facts.pid, facts.started_at, facts.ended_at = proc.pid, started_at, time.time()
        facts.seconds = time.monotonic() - start
    stop.check()  # interrupted: the tree is dead; unwind to the ledger row
    return {"returncode": proc.returncode, "timed_out": timed_out, "pid": proc.pid,
            "trainer_s": time.monotonic() - start, "last_line": state.get("last_line", ""),
            "started_at": started_at, "ended_at": time.time()}


def read_text(path: Path) -> str:
    """A console file's text, or "" when there is none."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def crash_reason(console_path: Path, returncode: int) -> str:
    """The exception line of a Python traceback in the console output, else its last line."""
    lines = read_text(console_path).splitlines()[-200:]
    lines = [l.strip() for l in lines if l.strip()]
    exc = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", l)]
    detail = exc[-1] if exc else (lines[-1] if lines else "no output")
    return f"trainer exited with code {returncode}: {detail}"


def trainer_error_line(console_path: Path) -> str | None:
    """The trainer's own one-line `error: ...` for a bad setting or bad data (it exits 2)."""
    lines = read_text(console_path).splitlines()
    errors = [l.strip()[len("error:"):].strip() for l in lines if l.strip().startswith("error:")]
    return errors[-1] if errors else None
