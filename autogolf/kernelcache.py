"""MLX's compiled CPU kernels, kept warm across sandboxed runs.

MLX on the CPU compiles each fused kernel with the system's C++ compiler the first time it
meets it and keeps the library in $TMPDIR/mlx/<version>/cpu/lib<name>.so. A sandboxed trainer
gets a fresh, empty TMPDIR per run, so without help every run would compile every kernel
again: measured here, a smoke trainer took 90 s with an empty cache and 5 s with a warm one
(45 kernels, 2 shared cores under load). So the harness keeps the kernels itself, in
~/.cache/autogolf/mlx-kernels/, out of the trainer's reach:

  seed(tmpdir)     copies them into a run's TMPDIR before it starts (copies, never links:
                   a link would let the trainer write into the harness's cache);
  harvest(tmpdir)  after the run, takes back only new files that look like MLX kernels --
                   `lib<name>.so`, an ELF shared object, at most MAX_KERNEL_BYTES -- and at
                   most MAX_NEW_PER_RUN of them, into a cache of at most MAX_CACHED files.

What this does not close: the bytes of a harvested kernel are the trainer's, so a trainer
could pass a bounded amount of data (MAX_NEW_PER_RUN x MAX_KERNEL_BYTES per run) to later
trainers dressed as kernels. README "The sandbox" lists it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

MAX_KERNEL_BYTES = 64 * 1024  # real ones are 15-20 KB
MAX_NEW_PER_RUN = 128  # a run compiles ~45-60
MAX_CACHED = 4096
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")
_KERNEL = re.compile(r"^lib[A-Za-z0-9_]+\.so$")


def cache_dir() -> Path:
    return Path.home() / ".cache" / "autogolf" / "mlx-kernels"


def _kernels(root: Path) -> dict[str, Path]:
    """{"<version>/<name>": path} of the kernel files below root/<version>/cpu/."""
    out = {}
    try:
        versions = [v for v in root.iterdir() if _VERSION.match(v.name) and v.is_dir() and not v.is_symlink()]
    except OSError:
        return out
    for version in versions:
        cpu = version / "cpu"
        try:
            entries = list(os.scandir(cpu))
        except OSError:
            continue
        for e in entries:
            if _KERNEL.match(e.name) and e.is_file(follow_symlinks=False):
                out[f"{version.name}/{e.name}"] = Path(e.path)
    return out


def seed(tmpdir: Path, cache: Path | None = None) -> int:
    """Copy the cached kernels into tmpdir/mlx/; returns how many."""
    count = 0
    for key, src in _kernels(cache or cache_dir()).items():
        version, name = key.split("/")
        dst = Path(tmpdir) / "mlx" / version / "cpu" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, dst)
            count += 1
        except OSError:
            continue
    return count


def _looks_like_kernel(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_KERNEL_BYTES:
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def harvest(tmpdir: Path, cache: Path | None = None) -> dict:
    """Take the run's new kernels into the cache (see the module doc for the limits)."""
    cache = cache or cache_dir()
    have = _kernels(cache)
    new = {k: p for k, p in _kernels(Path(tmpdir) / "mlx").items() if k not in have}
    taken, refused = 0, 0
    for key, src in sorted(new.items()):
        if taken >= MAX_NEW_PER_RUN or len(have) + taken >= MAX_CACHED or not _looks_like_kernel(src):
            refused += 1
            continue
        version, name = key.split("/")
        dst = cache / version / "cpu" / name
        tmp = dst.with_name(f".partial-{os.getpid()}-{taken}")  # kernel names run near NAME_MAX
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except OSError:  # a cache that cannot take it costs a compile later, never the run
            tmp.unlink(missing_ok=True)
            refused += 1
            continue
        taken += 1
    return {"cached": len(have) + taken, "new": taken, "refused": refused}
