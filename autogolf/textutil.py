"""Small text helpers shared by the CLIs: prefixed progress lines and one-line summaries."""

from __future__ import annotations

from typing import Callable


def say(msg: str) -> None:
    """One line to stdout, flushed at once: the lines interleave with a child's output."""
    print(msg, flush=True)


def sayer(prefix: str) -> Callable[[str], None]:
    """A `say` whose every line starts with `prefix` ("bootstrap: "), so a reader of mixed
    output knows which tool spoke."""
    def say_with_prefix(msg: str) -> None:
        say(f"{prefix}{msg}")
    return say_with_prefix


def one_line(text: object, limit: int = 600) -> str:
    """`text` with all whitespace runs collapsed to one space, cut to `limit` characters:
    what fits on a summary or ledger line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
