"""Read a Parameter Golf training log: ours, upstream's MLX log, or upstream's PyTorch log.

Only REAL log lines count. Upstream's MLX script writes its own full source at the top of
its log, and that source holds every log format as an f-string; an agent-edited trainer
could even hold a complete example line in a docstring. Two rules keep those out:

1. If the log has upstream's header (a line of `=`, then `Running Python ...`, ..., a line
   of `=`), everything up to the end of the LAST such header is source and is skipped.
2. Every pattern matches a whole line, from column 0, with concrete numbers (an f-string
   placeholder like `{val_bpb:.4f}` can never match `\\d`).

A line without its trailing newline is a partial write (the trainer died mid-line, or the
file is being written right now) and is ignored, so a truncated `...val_bpb:2.30` can never
become a score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# A float as Python prints it, or a non-finite value (the parser keeps it; metrics.py
# refuses it with a reason).
_F = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?nan|-?inf)"
_F8 = r"(-?\d+\.\d{8}|-?nan|-?inf)"  # the _exact line always prints 8 decimals
_I = r"(\d+)"

TRAIN_STEP = re.compile(rf"^step:{_I}/{_I} train_loss:{_F} train_time:{_I}ms step_avg:{_F}ms"
                        rf"(?: tok_s:{_I})?$")
VAL_STEP = re.compile(rf"^step:{_I}/{_I} val_loss:{_F} val_bpb:{_F} train_time:{_I}ms "
                      rf"step_avg:{_F}ms$")
STOPPING_EARLY = re.compile(rf"^stopping_early: wallclock_cap train_time:{_I}ms step:{_I}/{_I}$")
SERIALIZED = re.compile(rf"^(?:serialized_model_int8_zlib:|Serialized model int8\+zlib: ){_I} bytes"
                        r"(?: \([^{}]*\))?$")
CODE_SIZE = re.compile(rf"^Code size: {_I} bytes$")
TOTAL_SIZE = re.compile(rf"^Total submission size int8\+zlib: {_I} bytes$")
ROUNDTRIP = re.compile(rf"^final_int8_zlib_roundtrip val_loss:{_F} val_bpb:{_F} eval_time:{_I}ms$")
ROUNDTRIP_EXACT = re.compile(rf"^final_int8_zlib_roundtrip_exact val_loss:{_F8} val_bpb:{_F8}$")
VAL_PROGRESS = re.compile(rf"^val_progress:{_I}/{_I}$")
MODEL_PARAMS = re.compile(rf"^model_params:{_I}(?: [^{{}}]*)?$")
TRAIN_LOADER = re.compile(rf"^train_loader:dataset:(\S+) train_shards:{_I}(?:/{_I})?(?: [^{{}}]*)?$")
# The same facts when only part of the train split is present (a partial download).
TRAIN_LOADER_SUBSET = re.compile(rf"^WARNING: train_loader:subset dataset:(\S+) train_shards:{_I}/{_I}"
                                 rf"(?: [^{{}}]*)?$")
VAL_LOADER = re.compile(rf"^val_loader:shards pattern=(\S+) tokens:{_I}(?: [^{{}}]*)?$")
BACKEND = re.compile(r"^backend:([^{}]+)$")
MLX_VERSION = re.compile(r"^mlx_version:([\w.+-]+)$")
RUN_ID = re.compile(r"^run_id:(\S+)$")
# The run-config line: upstream MLX starts it with `iterations:`, PyTorch with
# `train_batch_tokens:`. All `key:value` tokens, no placeholders.
CONFIG_LINE = re.compile(r"^(?:iterations|train_batch_tokens):\d+(?: [a-z_]+:[\w.]+)+$")
KEY_VALUE = re.compile(r"([a-z_]+):([\w.]+)")

HEADER_RULE = re.compile(r"^={20,}$")


@dataclass
class TrainStep:
    step: int
    iterations: int
    train_loss: float
    train_time_ms: int
    step_avg_ms: float
    tok_s: int | None


@dataclass
class ValStep:
    step: int
    iterations: int
    val_loss: float
    val_bpb: float
    train_time_ms: int
    step_avg_ms: float


@dataclass
class ParsedLog:
    path: str | None = None
    train_steps: list[TrainStep] = field(default_factory=list)
    val_steps: list[ValStep] = field(default_factory=list)
    stopping_early: tuple[int, int, int] | None = None  # (train_time_ms, step, iterations)
    config: dict[str, str] = field(default_factory=dict)
    model_params: int | None = None
    train_dataset: str | None = None
    train_shards: int | None = None
    train_shards_expected: int | None = None
    val_pattern: str | None = None
    val_tokens: int | None = None
    serialized_int8_zlib_bytes: int | None = None
    code_bytes: int | None = None
    total_submission_bytes: int | None = None
    roundtrip: tuple[float, float, int] | None = None  # (val_loss, val_bpb, eval_ms), 4 decimals
    roundtrip_exact: tuple[float, float] | None = None  # (val_loss, val_bpb), 8 decimals
    val_progress: tuple[int, int] | None = None
    backend: str | None = None
    mlx_version: str | None = None
    run_id: str | None = None
    kinds: set[str] = field(default_factory=set)  # which kinds of real line were seen
    total_lines: int = 0
    source_lines_skipped: int = 0
    embedded_source_bytes: int | None = None  # size of the source upstream logs at the top
    partial_tail: str = ""  # text after the last newline (a line still being written)
    last_real_line: str = ""

    @property
    def steps_done(self) -> int:
        """Optimizer steps completed, from whichever step-bearing line came last."""
        steps = [s.step for s in self.train_steps] + [v.step for v in self.val_steps]
        if self.stopping_early:
            steps.append(self.stopping_early[1])
        return max(steps, default=0)

    @property
    def train_time_ms(self) -> int | None:
        """Training time the trainer measured (excludes compile warm-up, eval and export)."""
        times = [s.train_time_ms for s in self.train_steps] + [v.train_time_ms for v in self.val_steps]
        if self.stopping_early:
            times.append(self.stopping_early[0])
        return max(times, default=None)

    @property
    def train_batch_tokens(self) -> int | None:
        value = self.config.get("train_batch_tokens")
        return int(value) if value and value.isdigit() else None


def _source_header(lines: list[str]) -> tuple[int, int]:
    """(first line of upstream's `====` / `Running Python` header, first line after it),
    or (0, 0) when there is none. The LAST header wins: header-like text inside the source
    always comes before the real header."""
    found = (0, 0)
    i = 0
    while i < len(lines) - 1:
        if HEADER_RULE.match(lines[i]) and lines[i + 1].startswith("Running Python"):
            j = i + 2
            while j < len(lines) and not HEADER_RULE.match(lines[j]):
                j += 1
            if j < len(lines):
                found = (i, j + 1)
            i = j
        i += 1
    return found


def parse_text(text: str, path: str | None = None) -> ParsedLog:
    log = ParsedLog(path=path)
    pieces = text.replace("\r\n", "\n").split("\n")
    log.partial_tail = pieces.pop()  # "" when the text ends with a newline
    log.total_lines = len(pieces)
    header, start = _source_header(pieces)
    log.source_lines_skipped = start
    if header:
        # The script logged its own source followed by one newline: that text is exactly
        # the code that ran, so its UTF-8 length is the artifact's code size.
        log.embedded_source_bytes = len("\n".join(pieces[:header]).encode("utf-8"))
    for line in pieces[start:]:
        kind = _parse_line(log, line.rstrip())
        if kind:
            log.kinds.add(kind)
            log.last_real_line = line.rstrip()
    return log


def parse_file(path: Path | str) -> ParsedLog:
    path = Path(path)
    # errors="replace": a log cut in the middle of a UTF-8 sequence must still parse.
    return parse_text(path.read_text(encoding="utf-8", errors="replace"), path=str(path))


def _parse_line(log: ParsedLog, line: str) -> str | None:
    if m := TRAIN_STEP.match(line):
        log.train_steps.append(TrainStep(int(m[1]), int(m[2]), float(m[3]), int(m[4]),
                                         float(m[5]), int(m[6]) if m[6] else None))
        return "train_step"
    if m := VAL_PROGRESS.match(line):
        log.val_progress = (int(m[1]), int(m[2]))
        return "val_progress"
    if m := VAL_STEP.match(line):
        log.val_steps.append(ValStep(int(m[1]), int(m[2]), float(m[3]), float(m[4]),
                                     int(m[5]), float(m[6])))
        return "val_step"
    if m := ROUNDTRIP_EXACT.match(line):
        log.roundtrip_exact = (float(m[1]), float(m[2]))
        return "roundtrip_exact"
    if m := ROUNDTRIP.match(line):
        log.roundtrip = (float(m[1]), float(m[2]), int(m[3]))
        return "roundtrip"
    if m := STOPPING_EARLY.match(line):
        log.stopping_early = (int(m[1]), int(m[2]), int(m[3]))
        return "stopping_early"
    if m := SERIALIZED.match(line):
        log.serialized_int8_zlib_bytes = int(m[1])
        return "serialized"
    if m := CODE_SIZE.match(line):
        log.code_bytes = int(m[1])
        return "code_size"
    if m := TOTAL_SIZE.match(line):
        log.total_submission_bytes = int(m[1])
        return "total_size"
    if m := MODEL_PARAMS.match(line):
        log.model_params = int(m[1])
        return "model_params"
    if m := TRAIN_LOADER.match(line) or TRAIN_LOADER_SUBSET.match(line):
        log.train_dataset, log.train_shards = m[1], int(m[2])
        log.train_shards_expected = int(m[3]) if m[3] else None
        return "train_loader"
    if m := VAL_LOADER.match(line):
        log.val_pattern, log.val_tokens = m[1], int(m[2])
        return "val_loader"
    if CONFIG_LINE.match(line):
        log.config.update(KEY_VALUE.findall(line))
        return "config"
    if m := BACKEND.match(line):
        log.backend = m[1].strip()
        return "backend"
    if m := MLX_VERSION.match(line):
        log.mlx_version = m[1]
        return "mlx_version"
    if m := RUN_ID.match(line):
        log.run_id = m[1]
        return "run_id"
    return None
