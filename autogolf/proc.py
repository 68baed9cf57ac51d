"""Process helpers shared by the stages that start children (run/trainer.py, measure/model_child.py)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def die_with_parent(parent_pid: int):
    """A Popen preexec_fn for Linux: the kernel SIGKILLs the child the moment its parent dies,
    even by SIGKILL (PR_SET_PDEATHSIG), so no child outlives the process that must record or
    check it. None elsewhere (macOS has no such call: the run lock and the sandbox's process
    rules apply there)."""
    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return setup if sys.platform.startswith("linux") else None
