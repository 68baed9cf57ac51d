"""The pipe protocol between the trusted scorer and the child that runs the trainer's model.

The child (measure/logits_child.py) imports the trainer and calls its harness_load; the
trusted side (measure/score.py) never does. They talk over two pipes, in frames:

  request  b"L" + u64 n + n bytes           load a model from these artifact bytes
           b"F" + u64 slot + u64 rows + u64 cols + rows*cols int32 ids   logits for ids
           b"Q"                             quit
  reply    b"K" + u64 slot + u64 seq_len    (to L) the model's slot and window length
           b"A" + u64 rows + u64 cols + u64 vocab + rows*cols*vocab float32 (little endian)
           b"E" + u64 n + n bytes of UTF-8  the child's error, one line

Everything here is plain bytes: a reply can only be a frame the trusted side parses and
checks itself (shape, dtype, finite values), never an object it would execute.
"""

from __future__ import annotations

import struct

import numpy as np

U64 = struct.Struct("<Q")
MAX_ERROR_BYTES = 4096


class WireError(Exception):
    """The other side sent something that is not a valid frame, or closed the pipe."""


def read_exact(fd: int, n: int) -> bytes:
    import os

    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise WireError(f"the pipe closed after {n - left} of {n} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_into(fd: int, buffer) -> None:
    """Fill `buffer` (a writable buffer: a numpy array's memory) from the pipe, without the
    copies of read_exact; large replies (the logits) come this way."""
    import os

    view = memoryview(buffer).cast("B")
    done = 0
    while done < view.nbytes:
        n = os.readv(fd, [view[done:]])
        if n == 0:
            raise WireError(f"the pipe closed after {done} of {view.nbytes} bytes")
        done += n


def widen(fd: int) -> None:
    """A 1 MiB pipe buffer where Linux allows it (fewer wake-ups per batch of logits)."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # another platform or a lower limit: the default buffer works, only slower


def write_all(fd: int, *parts) -> None:
    import os

    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            written = os.write(fd, view)
            view = view[written:]


def read_u64(fd: int) -> int:
    return U64.unpack(read_exact(fd, 8))[0]


def u64(*values: int) -> bytes:
    return b"".join(U64.pack(int(v)) for v in values)


def send_error(fd: int, message: str) -> None:
    data = message.encode("utf-8", errors="replace")[:MAX_ERROR_BYTES]
    write_all(fd, b"E", u64(len(data)), data)


def read_error(fd: int) -> str:
    n = read_u64(fd)
    if n > MAX_ERROR_BYTES:
        raise WireError(f"an error frame of {n} bytes (at most {MAX_ERROR_BYTES})")
    return read_exact(fd, n).decode("utf-8", errors="replace")


def ids_frame(slot: int, ids: np.ndarray) -> tuple[bytes, bytes]:
    ids = np.ascontiguousarray(ids, dtype="<i4")
    return b"F" + u64(slot, *ids.shape), ids.tobytes()
