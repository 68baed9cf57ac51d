"""The one-trainer-per-machine lock, with real processes holding and dying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from autogolf.run.runlock import LockTimeout, RunLock, lock_is_free
from conftest import REPO

HOLDER = textwrap.dedent("""
    import subprocess, sys, time
    from autogolf.run.runlock import RunLock
    lock = RunLock(run_id=sys.argv[2], path=sys.argv[1], wait_seconds=5).acquire()
    if len(sys.argv) > 3:  # start a 'trainer' that inherits the lock, as run.py does
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 pass_fds=(lock.fd,), start_new_session=True)
        lock.set_trainer_pid(child.pid)
        print(child.pid, flush=True)
    else:
        print("held", flush=True)
    time.sleep(60)
""")


def start_holder(lock_path, run_id, with_trainer=False) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-c", HOLDER, str(lock_path), run_id] + (["trainer"] if with_trainer else [])
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().strip()  # printed only once the lock is held
    assert first, "holder failed to start"
    return proc, first


def kill(proc_or_pid) -> None:
    pid = proc_or_pid if isinstance(proc_or_pid, int) else proc_or_pid.pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not isinstance(proc_or_pid, int):
        proc_or_pid.wait()


def wait_gone(pid: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return  # dead, not yet reaped by its new parent: its files are closed
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def test_second_run_waits_then_refuses_naming_the_holder(tmp_path):
    path = tmp_path / "machine.lock"
    holder, _ = start_holder(path, "first-run")
    try:
        messages = []
        start = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            RunLock(run_id="second", path=path, wait_seconds=1.0, report=messages.append).acquire()
        assert time.monotonic() - start >= 1.0
        assert "first-run" in str(err.value) and str(holder.pid) in str(err.value)
        assert messages and "first-run" in messages[0]  # printed who holds it while waiting
        assert not lock_is_free(path)
    finally:
        kill(holder)
    # the kernel released the dead holder's lock: no stale lock to clean up
    assert lock_is_free(path)
    with RunLock(run_id="third", path=path, wait_seconds=1.0) as lock:
        assert lock.read_holder()["run_id"] == "third"
    assert lock_is_free(path)


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path):
    path = tmp_path / "machine.lock"
    holder, _ = start_holder(path, "short")
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
    lock = RunLock(run_id="waiter", path=path, wait_seconds=20, report=lambda m: None).acquire()
    try:
        assert 0.5 < lock.waited_seconds < 15
    finally:
        lock.release()
        holder.wait()


def test_ordinary_children_do_not_inherit_the_lock(tmp_path):
    path = tmp_path / "machine.lock"
    lock = RunLock(run_id="parent", path=path, wait_seconds=1).acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                             close_fds=False, stdout=subprocess.PIPE, text=True)
    try:
        # Once the child runs its own code, exec has closed its O_CLOEXEC copies. (Right
        # after Popen returns it may not have yet: Linux wakes a vfork parent before it
        # closes the child's close-on-exec files.)
        assert child.stdout.readline() == "up\n"
        lock.release()
        assert lock_is_free(path)  # O_CLOEXEC: the child never had the fd
    finally:
        kill(child)


def test_lingering_trainer_keeps_the_machine_locked(tmp_path):
    """The orchestrator passes the lock fd to its trainer: if the orchestrator is SIGKILLed,
    the orphaned trainer keeps the lock until it ends, so no second trainer can start."""
    path = tmp_path / "machine.lock"
    holder, trainer_pid = start_holder(path, "orchestrator", with_trainer=True)
    trainer_pid = int(trainer_pid)
    try:
        kill(holder)
        assert not lock_is_free(path)
        with pytest.raises(LockTimeout) as err:
            RunLock(run_id="next", path=path, wait_seconds=0.3, report=lambda m: None).acquire()
        assert f"trainer pid {trainer_pid} still holds the lock" in str(err.value)
    finally:
        kill(trainer_pid)
    wait_gone(trainer_pid)
    assert lock_is_free(path)
