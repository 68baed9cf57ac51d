"""Benchmark what the sandbox costs a run: process start-up plain and under each mechanism
that works here (autogolf/sandbox.py), the harness's integrity hashes (taken twice per run),
and all of it as a share of a breadth run. Not a test: it only prints.

    .venv/bin/python scripts/bench_sandbox.py [--repeat 15] [--breadth-seconds 300]

The start-up cost is paid once per trainer process (twice for a run whose scorer's child is
sandboxed too); a breadth run's wall time is read from the ledger's latest ok breadth run
when there is one, else --breadth-seconds (breadth aims at ~4-6 minutes here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autogolf import kernelcache, paths, sandbox  # noqa: E402
from autogolf.judge import integrity, ledger  # noqa: E402

PROGRAMS = {"python -c pass": "pass", "import mlx.core": "import mlx.core"}


def timed(argv: list[str], env: dict, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


def breadth_wall(default: float) -> tuple[float, str]:
    rows = [r for r in ledger.runs(ledger.default_path(paths.REPO_ROOT))
            if r.get("profile") == "breadth" and r.get("status") == "ok" and r.get("wall_seconds")]
    if rows:
        return float(rows[-1]["wall_seconds"]), f"the ledger's latest ok breadth run {rows[-1]['run_id']}"
    return default, "--breadth-seconds (no ok breadth run in this ledger)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--breadth-seconds", type=float, default=300.0)
    args = parser.parse_args()
    wall, source = breadth_wall(args.breadth_seconds)
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    mechanisms = ["plain"] + [m for m in sandbox.MECHANISMS if not sandbox.problem(m)]
    print(f"median of {args.repeat} starts (min in brackets); breadth run = {wall:.0f} s ({source})")
    try:
        for label, code in PROGRAMS.items():
            base = None
            for mech in mechanisms:
                argv, env = [sys.executable, "-c", code], dict(os.environ)
                if mech != "plain":
                    argv, env = sandbox.wrap(argv, env, sandbox.Jail(reads=[], writes=[work]), kind=mech)
                times = timed(argv, env, args.repeat)
                med = statistics.median(times)
                base = med if mech == "plain" else base
                extra = "" if mech == "plain" else \
                    f"  +{(med - base) * 1000:6.1f} ms = {100 * (med - base) / wall:.3f}% of breadth"
                print(f"{label:<16} {mech:<9} {med * 1000:7.1f} ms ({min(times) * 1000:6.1f}){extra}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for mech in mechanisms[1:]:  # each run checks once that its mechanism starts (cached after)
        t = time.perf_counter()
        sandbox.problem.__wrapped__(mech)
        once = time.perf_counter() - t
        print(f"mechanism check   {mech:<9} {once * 1000:7.1f} ms once per run = {100 * once / wall:.3f}% of breadth")
    seed_dir = Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    try:
        t = time.perf_counter()
        count = kernelcache.seed(seed_dir)
        seeded = time.perf_counter() - t
        t = time.perf_counter()
        kernelcache.harvest(seed_dir)  # nothing new: the cost of the look
        looked = time.perf_counter() - t
    finally:
        shutil.rmtree(seed_dir, ignore_errors=True)
    print(f"kernel cache: seeding {count} kernels {seeded * 1000:.1f} ms, harvest {looked * 1000:.1f} ms "
          f"= {100 * (seeded + looked) / wall:.3f}% of breadth")
    times = []
    for _ in range(5):
        t = time.perf_counter()
        snap = integrity.snapshot(paths.REPO_ROOT, paths.TRAINER)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"integrity snapshot: {len(snap)} files in {med * 1000:.1f} ms; twice per run = "
          f"{100 * 2 * med / wall:.3f}% of breadth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
