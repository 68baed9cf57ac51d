"""The harness's own byte count for bits per byte, built from the tokenizer itself (never
from the trainer, whose copy the agent may edit).

A target token stands for the UTF-8 bytes of its piece, where each "▁" is a space --
except the leading "▁" of a token right after a boundary token (BOS, control, unknown,
unused), which the decoder drops, as it does at the start of a document. Byte-fallback
pieces ("<0x41>") are one byte; boundary tokens are none. The sum over a document's
tokens equals the UTF-8 length of the decoded text (tests check this on real FineWeb).
"""

from __future__ import annotations

import numpy as np

SPACE_MARK = "\u2581"


def byte_table(sp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token id: (bytes when it follows an ordinary token, 1 where a following boundary
    drops its leading space, 1 where the id is itself a boundary)."""
    n = int(sp.vocab_size())
    full = np.zeros(n, dtype=np.int64)
    leading_space = np.zeros(n, dtype=np.int64)
    boundary = np.zeros(n, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
            continue
        if sp.is_byte(i):
            full[i] = 1
            continue
        piece = sp.id_to_piece(i)
        full[i] = len(piece.replace(SPACE_MARK, " ").encode("utf-8"))
        leading_space[i] = int(piece.startswith(SPACE_MARK))
    return full, leading_space, boundary


def count_bytes(prev: np.ndarray, target: np.ndarray, table) -> np.ndarray:
    """Bytes each target token stands for, given the token before it."""
    full, leading_space, boundary = table
    return full[target] - leading_space[target] * boundary[prev]
