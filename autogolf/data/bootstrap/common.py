"""What every phase of `just bootstrap` shares: its constants, its two errors, its one-line
output and its lock."""

from __future__ import annotations

import fcntl
import re
from contextlib import contextmanager
from pathlib import Path

from autogolf import settings
from autogolf.textutil import sayer
from autogolf.data import cache


DEFAULT_UPSTREAM_URL = settings.default("AUTOGOLF_UPSTREAM_URL")
DEFAULT_TRAIN_SHARDS = 10
# Defaults of upstream's downloader, which reads the same two environment variables.
DEFAULT_HF_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"
VARIANT = "sp1024"
FINEWEB = cache.FINEWEB_DATASET
SYNTH = cache.SYNTH_DATASET
# A hanging network must not hang bootstrap: git over http(s) gives up below 1 kB/s for 60 s,
# and every git command has a hard cap on top.
GIT_LOW_SPEED = ("-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60")
GIT_PROBE_TIMEOUT_S = 120.0
# huggingface_hub leaves `<blob>.<id>.incomplete` behind when killed; one untouched this long
# belongs to a dead download.
STALE_DOWNLOAD_S = 600.0
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


class Unreachable(Exception):
    """The network or an upstream host could not be reached: build the offline default."""


class BootstrapError(Exception):
    """Reachable but broken, or a local problem: stop with a non-zero exit."""


say = sayer("bootstrap: ")


def rel(path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def error_line(text: str, limit: int = 160) -> str:
    """The last meaningful line of a tool's error output, short enough for one status line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else "no error message"
    line = re.sub(r"^(fatal|error):\s*", "", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


@contextmanager
def exclusive_lock(path: Path):
    """One bootstrap at a time per folder: two would download into and link the same files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BootstrapError(f"another bootstrap is running (it holds {path}); wait for it "
                                 f"to finish, then re-run `just bootstrap`") from None
        yield
