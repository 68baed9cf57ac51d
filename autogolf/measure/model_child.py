"""The trusted scorer's handle on the child that runs the trainer's model (logits_child.py).

The trusted side starts the child, sends it the artifact's bytes and window batches, and
checks every reply before using it: a frame of the expected kind, exactly the expected
shape (rows, seq_len, vocab) with one vocab for the whole run and at least the tokenizer's,
float32, every value finite. Anything else ends the scoring with a clear reason (the run
is integrity_failed), never with the trainer's numbers.

The child is launched through confine_child(), the one place that confines it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from autogolf import sandbox
from autogolf.proc import die_with_parent
from autogolf.measure import wire

def max_vocab(tokenizer_vocab: int) -> int:
    """The widest logits accepted: a model may pad its vocabulary (to a multiple of 64 or
    128, say), never by more than this; it also bounds what one reply may make us read."""
    return max(2 * tokenizer_vocab, tokenizer_vocab + 1024)


class ChildError(RuntimeError):
    """The child failed, or sent something that is not a valid answer; the message says which."""


def confine_child(argv: list[str], env: dict[str, str], reads: list[Path],
                  writes: list[Path]) -> tuple[list[str], dict[str, str]]:
    """The child's command and environment, confined by the trainer's own sandbox
    (autogolf/sandbox.py): it reads `reads` (the trainer file), the Python environment and
    the harness package, writes only `writes` (its scratch folder, which holds its private
    HOME and TMPDIR), and has no network. The artifact's bytes reach it over the pipe, so
    neither the cache, the holdout nor the ledger is in its reach."""
    return sandbox.wrap(argv, env, sandbox.Jail(reads=list(reads), writes=list(writes), network="none"))


class ModelChild:
    """One child process; load() models from artifact bytes, logits() for window batches."""

    def __init__(self, trainer: Path, env: dict[str, str], scratch: Path, vocab: int | None = None):
        argv = [sys.executable, "-m", "autogolf.measure.logits_child", "--trainer", str(trainer)]
        argv, env = confine_child(argv, env, reads=[Path(trainer)], writes=[Path(scratch)])
        self.min_vocab, self.vocab = None, None
        if vocab is not None:
            self.expect_vocab(vocab)
        # its own session, so close() ends everything it started; on Linux the kernel also
        # kills it when the trusted scorer dies (the orchestrator's timeout kills the scorer)
        self.proc = subprocess.Popen(argv, env=env, cwd=scratch, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=die_with_parent(os.getpid()))
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        wire.widen(self.rfd)

    def expect_vocab(self, vocab: int) -> None:
        """The tokenizer's vocabulary: logits must be at least this wide (before logits())."""
        self.min_vocab = int(vocab)

    def _reply(self, expect: bytes, failed: str = "the trainer's model failed") -> None:
        try:
            op = wire.read_exact(self.rfd, 1)
            if op == b"E":
                raise ChildError(f"{failed}: {wire.read_error(self.rfd)}")
        except wire.WireError as e:
            raise ChildError(f"the model's process ended or broke the protocol ({e}; "
                             f"exit status {self.proc.poll()})") from None
        if op != expect:
            raise ChildError(f"the model's process sent a {op!r} frame where {expect!r} was due")

    def _send(self, *parts) -> None:
        try:
            wire.write_all(self.wfd, *parts)
        except (BrokenPipeError, OSError) as e:
            raise ChildError(f"the model's process is gone ({e}; exit status {self.proc.poll()})") from None

    def load(self, blob: bytes) -> tuple[int, int]:
        """(slot, seq_len) of the model harness_load built from `blob`."""
        self._send(b"L", wire.u64(len(blob)), blob)
        # the usual cause: an export format changed in main() (a ported record's, say) and not in
        # harness_load, which must read the artifact's bytes as main() writes them
        self._reply(b"K", "the trainer's harness_load could not rebuild the model from the artifact (it must "
                          "read the bytes as main() writes them: change it with the export format)")
        slot, seq_len = wire.read_u64(self.rfd), wire.read_u64(self.rfd)
        if not 1 <= seq_len <= 1 << 20:
            raise ChildError(f"harness_load returned seq_len {seq_len}, not a window length")
        return int(slot), int(seq_len)

    def logits(self, slot: int, ids: np.ndarray) -> np.ndarray:
        """float32 (rows, cols, vocab), checked before a single value is used."""
        self._send(*wire.ids_frame(slot, ids))
        self._reply(b"A")
        shape = tuple(wire.read_u64(self.rfd) for _ in range(3))
        vocab = shape[2]
        if shape[:2] != tuple(ids.shape) or not self.min_vocab <= vocab <= max_vocab(self.min_vocab) \
                or (self.vocab is not None and vocab != self.vocab):
            raise ChildError(f"harness_load's logits have shape {shape}, expected {tuple(ids.shape)} + "
                             f"(vocab,) with {self.min_vocab} <= vocab <= {max_vocab(self.min_vocab)}"
                             + (f" and = {self.vocab} as before" if self.vocab else ""))
        self.vocab = vocab
        out = np.empty(shape, dtype="<f4")
        try:
            wire.read_into(self.rfd, out)
        except wire.WireError as e:
            raise ChildError(f"the model's process ended in the middle of its logits ({e})") from None
        if not np.isfinite(out).all():
            raise ChildError("harness_load's logits hold non-finite values (nan or inf)")
        return out

    def close(self) -> None:
        """Ask it to quit, then end its whole session: nothing of it outlives the scoring."""
        try:
            wire.write_all(self.wfd, b"Q")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
