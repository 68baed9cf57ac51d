"""The scorer's untrusted half: the only process that runs the trainer's code at scoring time.

    python -m autogolf.measure.logits_child --trainer T

It imports the trainer, builds models from the artifact bytes the trusted side sends
(harness_load), and answers each window batch with float32 logits, over the pipes of
measure/wire.py (stdin/stdout at start; both are moved to private descriptors before the
trainer is imported, so whatever the trainer prints goes to stderr and cannot forge a
frame). It computes nothing the harness reports: no loss, no byte count, no probe verdict.
Whatever the trainer's code changes in this process (numpy, builtins, these functions)
changes only the logits it sends, which the trusted side checks and scores itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from autogolf.measure import wire


def _private_pipes() -> tuple[int, int]:
    """Keep the request and reply pipes on fresh descriptors; stdin becomes /dev/null and
    stdout a copy of stderr, so prints cannot interleave with the replies."""
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    return rfd, wfd


def _load_trainer(trainer: Path):
    spec = importlib.util.spec_from_file_location("scored_trainer", trainer)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)  # its `if __name__ == "__main__"` keeps it from training
    if not callable(getattr(module, "harness_load", None)):
        raise RuntimeError(f"{trainer} defines no harness_load(blob) -> (logits, seq_len); restore the "
                           f"trainer's 'Harness contract' section")
    return module.harness_load


def _serve(rfd: int, wfd: int, load) -> None:
    models: list = []
    while True:
        op = wire.read_exact(rfd, 1)
        if op == b"Q":
            return
        try:
            if op == b"L":
                blob = wire.read_exact(rfd, wire.read_u64(rfd))
                fn, seq_len = load(blob)
                models.append(fn)
                wire.write_all(wfd, b"K", wire.u64(len(models) - 1, int(seq_len)))
            elif op == b"F":
                slot, rows, cols = (wire.read_u64(rfd) for _ in range(3))
                ids = np.frombuffer(wire.read_exact(rfd, rows * cols * 4), dtype="<i4").reshape(rows, cols)
                out = np.ascontiguousarray(np.array(models[slot](ids.copy()), dtype="<f4"))
                shape = out.shape if out.ndim == 3 else (rows, cols, 0)
                wire.write_all(wfd, b"A", wire.u64(*shape), out if out.ndim == 3 else b"")
            else:
                raise wire.WireError(f"unknown request {op!r}")
        except wire.WireError:
            raise
        except Exception as e:  # noqa: BLE001 -- the trusted side decides what a failure means
            wire.send_error(wfd, f"{type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.measure.logits_child",
                                     description="Serve the trainer's logits to the trusted scorer (measure/score.py).")
    parser.add_argument("--trainer", type=Path, required=True, help="the trainer file defining harness_load")
    args = parser.parse_args(argv)
    rfd, wfd = _private_pipes()
    try:
        load = _load_trainer(args.trainer)
    except Exception as e:  # noqa: BLE001 -- reported to the trusted side as the load's answer
        op = wire.read_exact(rfd, 1)
        if op == b"L":
            wire.read_exact(rfd, wire.read_u64(rfd))
        wire.send_error(wfd, f"importing the trainer failed: {type(e).__name__}: {e}")
        return 1
    _serve(rfd, wfd, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
