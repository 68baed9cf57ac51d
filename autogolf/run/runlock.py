"""One trainer per machine: a kernel file lock (flock) that every benchmark run takes.

Two trainers on one 2-core machine halve each other's speed and make every timing-based
result (wall-clock-capped training!) meaningless, so a second run waits for the first,
up to AUTOGOLF_LOCK_WAIT_SECONDS (default 900), printing who holds the lock, then refuses.

Where: AUTOGOLF_LOCK_PATH, else /tmp/autogolf-<uid>.lock. Deliberately NOT inside the
repository, so two checkouts (or worktrees) of the project on one machine share it.

Why flock: the kernel releases it when the last process holding the open file goes away,
so a crashed or SIGKILLed holder can never leave a stale lock, and no pid-file guessing is
needed. The file's content (pid, run id, start time, trainer pid) is only information
for the humans and runs that wait.

Inheritance (a deliberate choice): the lock fd is opened O_CLOEXEC, so ordinary children
never get it, but the orchestrator passes it to the trainer on purpose (`pass_fds`). A
trainer that outlives its orchestrator therefore keeps the machine locked until it ends,
and a new run can never overlap it; the waiting message names the trainer pid to kill.
(On Linux the orchestrator also asks the kernel to SIGKILL the trainer when it dies, so
this is the second line of defence there, and the first on macOS.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from autogolf import settings
from autogolf.fsutil import pid_alive

_POLL_SECONDS = 0.25
_REPORT_EVERY_SECONDS = 30.0


class LockTimeout(RuntimeError):
    """The lock stayed busy for the whole wait. The message names the holder."""


def default_lock_path() -> Path:
    override = settings.get("AUTOGOLF_LOCK_PATH")
    if override:
        return Path(override)
    return Path("/tmp") / f"autogolf-{os.getuid()}.lock"


def default_wait_seconds() -> float:
    raw = settings.get("AUTOGOLF_LOCK_WAIT_SECONDS")
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"AUTOGOLF_LOCK_WAIT_SECONDS={raw!r} is not a number of seconds") from None


def describe_holder(info: dict | None) -> str:
    """One line about whoever holds the lock, from the JSON it wrote."""
    if not info:
        return "a process that has not written its details yet"
    pid = info.get("pid")
    text = (f"run {info.get('run_id', '?')} (pid {pid}, {info.get('cwd', '?')}, "
            f"started {info.get('started_at', '?')})")
    trainer = info.get("trainer_pid")
    if isinstance(pid, int) and not pid_alive(pid):
        if trainer:
            text += (f"; its orchestrator is gone but trainer pid {trainer} still holds the lock "
                     f"(kill {trainer} if it is stuck)")
    elif trainer:
        text += f", trainer pid {trainer}"
    return text


class RunLock:
    """Context manager: `with RunLock(run_id="..."):` -- waits, then holds the lock."""

    def __init__(self, run_id: str, path: Path | None = None, wait_seconds: float | None = None,
                 report=None):
        self.run_id = run_id
        self.path = Path(path) if path else default_lock_path()
        self.wait_seconds = default_wait_seconds() if wait_seconds is None else wait_seconds
        self.report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.fd: int | None = None
        self.waited_seconds = 0.0
        self.info: dict = {}

    # -- state on disk
    def read_holder(self) -> dict | None:
        try:
            text = self.path.read_text(encoding="utf-8")
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None  # absent, or being rewritten right now

    def _write_info(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def set_trainer_pid(self, pid: int | None) -> None:
        """Record the trainer's pid so waiting runs can say which process holds the lock."""
        if self.fd is not None:
            self.info["trainer_pid"] = pid
            self._write_info()

    def note(self, **fields) -> None:
        """Facts for whoever watches the run (`just status`): when the trainer started and when
        its hard timeout falls."""
        if self.fd is not None:
            self.info.update(fields)
            self._write_info()

    def set_deadline(self, epoch_seconds: float) -> None:
        """When this run is past its hard timeout: until then the agent's supervisor leaves
        the agent alone (a benchmark is running); after it, the run is presumed stuck."""
        if self.fd is not None:
            self.info["deadline"] = round(epoch_seconds, 3)
            self._write_info()

    # -- acquire / release
    def acquire(self, poll=None) -> "RunLock":
        """Wait for the lock. `poll()` is called between attempts; it may raise to abandon
        the wait (the orchestrator uses it to react to SIGTERM while waiting)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        start = time.monotonic()
        next_report = start
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                if poll is not None:
                    poll()
                now = time.monotonic()
                waited = now - start
                if waited >= self.wait_seconds:
                    raise LockTimeout(
                        f"another benchmark holds {self.path}: {describe_holder(self.read_holder())}; "
                        f"gave up after {waited:.0f} s (AUTOGOLF_LOCK_WAIT_SECONDS="
                        f"{self.wait_seconds:g}); one trainer per machine keeps timings honest; "
                        f"wait for it to finish and re-run")
                if now >= next_report:
                    self.report(f"autoresearch: waiting for the machine lock {self.path} held by "
                                f"{describe_holder(self.read_holder())} ({waited:.0f}/"
                                f"{self.wait_seconds:g} s)")
                    next_report = now + _REPORT_EVERY_SECONDS
                time.sleep(_POLL_SECONDS)
        except BaseException:
            self.waited_seconds = time.monotonic() - start
            os.close(fd)
            raise
        self.fd = fd
        self.waited_seconds = time.monotonic() - start
        self.info = {"pid": os.getpid(), "run_id": self.run_id, "host": socket.gethostname(),
                     "cwd": os.getcwd(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "trainer_pid": None}
        self._write_info()
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        # No LOCK_UN: it would drop the lock for every copy of the fd, including a trainer
        # that is somehow still alive. Closing ours leaves the kernel to free the lock when
        # the last copy goes.
        try:
            os.ftruncate(self.fd, 0)  # an empty file = nobody's details
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_is_free(path: Path | None = None) -> bool:
    """True when nobody holds the lock (tries it without waiting and lets go)."""
    path = Path(path) if path else default_lock_path()
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock if we got it
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Show who holds the one-trainer-per-machine lock.")
    parser.add_argument("--path", type=Path, default=None,
                        help="lock file (default: AUTOGOLF_LOCK_PATH or /tmp/autogolf-<uid>.lock)")
    args = parser.parse_args(argv)
    path = args.path or default_lock_path()
    if lock_is_free(path):
        print(f"{path}: free")
        return 0
    print(f"{path}: held by {describe_holder(RunLock('-', path).read_holder())}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
