"""Sizing a token-budget profile (breadth) to the machine it runs on, by measurement.

Why: a fixed token budget with a fixed timeout fits one machine on one day. MKL on a 2-core
x86_64 box swings between about 100 and 370 GFLOP/s from day to day, and a laptop CPU is
slower still, so breadth's 36 steps took 450 s one day and 496 s (killed at 540 s) the next.

How (every number below comes from the harness's own clock, never from the trainer's log):
  1. The probe. On a machine with no recorded sizing for the profile, the first run of it
     (or `just calibrate --quick`, which re-sizes on purpose) runs the baseline trainer --
     the version HEAD holds -- for 1 warm-up step and PROBE_STEPS timed steps at a batch of
     PROBE_BATCH_TOKENS, with the profile's own validation slice. The harness stamps each
     `step:` line as it arrives: the time between the first and the last step line gives
     the training throughput (tokens per second), and the rest of the process's lifetime
     (start-up, compile warm-up, both evaluations, export) is the fixed cost.
  2. The choice. The ladder is the profile's `[sizing]` table in profiles.toml: the budget is
     the largest rung whose predicted training time (tokens / throughput) fits the target
     (breadth: 240 s of training). With none fitting, the smallest rung, and the run says so.
  3. The record. logs/machine.json, per profile: the probe (throughput, fixed cost, sgemm
     GFLOP/s, its own cost, the date and the trainer's sha256) and the choice. A choice by
     `just calibrate` (rank fidelity measured against a longer run) takes precedence over
     the probe's, which only fits the clock. The first finished run of the probed trainer
     at the chosen budget records its measured trainer time ("measured" below).
  4. The hard timeout: timeout_margin x the expected trainer time (the measured one when
     there is one for this budget, else the probe's prediction times probe_allowance: on
     a 2-core CPU a probe at 4,096 tokens per step under-predicted the training of a rung
     of 1,024-token steps by 21% one time and 68% another, since the optimizer's cost per
     step does not shrink with the batch), times the machine's
     slowdown since it was measured (sgemm GFLOP/s then over now, at least 1, at most
     MAX_SLOWDOWN), and never under min_timeout_seconds. AUTOGOLF_TIMEOUT overrides it.
  5. pi's timeout: pi-autoresearch kills run_experiment after 600 s unless the agent passes
     timeout_seconds. The harness allows the trainer and then its own scorer up to the hard
     timeout each, so the VERDICT line tells the agent pi_timeout(): twice that plus the
     kill grace and a minute of bookkeeping.
Runs are compared only within one budget (verdict.comparison_key), so a new choice starts a
new baseline; the VERDICT, `just status` and `just report` say when the choice changed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from autogolf.textutil import say

PROBE_STEPS = 3  # timed steps after the warm-up: two intervals between step lines
PROBE_BATCH_TOKENS = 4096  # mid-ladder batch: per-step fixed costs neither dominate nor vanish
MAX_SLOWDOWN = 4.0  # the timeout stretches for a slower day by at most this factor
STEP_LINE = re.compile(r"^step:(\d+)/(\d+) train_loss:")
DEFAULTS = {"target_train_seconds": 240.0, "timeout_margin": 2.0, "min_timeout_seconds": 120.0,
            "probe_allowance": 1.75}


class SizingError(ValueError):
    """A malformed [sizing] table; the message says what to fix."""


@dataclass
class Rules:
    """A profile's [sizing] table (profiles.toml)."""
    ladder: tuple[int, ...]
    target_train_seconds: float
    timeout_margin: float
    min_timeout_seconds: float
    probe_allowance: float = 1.75  # until measured: the probe's prediction may be this much low

    @classmethod
    def from_table(cls, table: dict, where: str) -> "Rules":
        try:
            ladder = tuple(sorted({int(t) for t in table["ladder"]}))
            values = {k: float(table.get(k, d)) for k, d in DEFAULTS.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise SizingError(f"{where}: [sizing] needs a ladder of token counts ({e})") from e
        if not ladder or ladder[0] <= 0 or values["timeout_margin"] < 1 or values["target_train_seconds"] <= 0 \
                or values["probe_allowance"] < 1:
            raise SizingError(f"{where}: [sizing] needs positive rungs, a positive target, "
                              f"timeout_margin >= 1 and probe_allowance >= 1")
        return cls(ladder=ladder, **values)


# --------------------------------------------------------------------------- the probe

@dataclass
class StepClock:
    """When each `step:i/N train_loss:` line reached the harness (monotonic seconds since
    the trainer started). Fed line by line from the trainer's output stream."""
    started: float
    steps: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, i, N)

    def feed(self, line: str, now: float) -> bool:
        match = STEP_LINE.match(line)
        if not match:
            return False
        self.steps.append((now - self.started, int(match.group(1)), int(match.group(2))))
        return True

    def step_seconds(self) -> float | None:
        """Seconds per step between the first and the last step line seen (None before two)."""
        if len(self.steps) < 2:
            return None
        (t0, i0, _), (t1, i1, _) = self.steps[0], self.steps[-1]
        return (t1 - t0) / (i1 - i0) if i1 > i0 and t1 > t0 else None


def probe_settings(resolved: dict) -> dict:
    """The probe's trainer environment: the profile's (validation slice, evaluation batch,
    one microbatch per step) with a short step-count budget instead of its token budget."""
    env = dict(resolved)
    env.update(TRAIN_BUDGET_TOKENS="0", MAX_WALLCLOCK_SECONDS="0", ITERATIONS=str(PROBE_STEPS),
               TRAIN_BATCH_TOKENS=str(PROBE_BATCH_TOKENS), WARMUP_STEPS="1", TRAIN_LOG_EVERY="1",
               VAL_LOSS_EVERY="0")
    return env


def analyse(clock: StepClock, lifetime_s: float, batch_tokens: int = PROBE_BATCH_TOKENS) -> dict:
    """Throughput and fixed cost from a finished probe; raises SizingError when it cannot."""
    step_s = clock.step_seconds()
    if step_s is None:
        raise SizingError(f"the probe saw {len(clock.steps)} step line(s); it needs {PROBE_STEPS} "
                          f"(did the trainer crash? see its console log)")
    fixed_s = max(0.0, lifetime_s - len(clock.steps) * step_s)
    return {"train_tok_s": round(batch_tokens / step_s, 2), "step_s": round(step_s, 4),
            "batch_tokens": batch_tokens, "fixed_s": round(fixed_s, 3),
            "tail_s": round(max(0.0, lifetime_s - clock.steps[-1][0]), 3),
            "lifetime_s": round(lifetime_s, 3)}


# --------------------------------------------------------------------------- the choice

def choose_tokens(rules: Rules, train_tok_s: float) -> dict:
    """The largest rung whose predicted training time fits the target (else the smallest)."""
    predicted = {t: t / train_tok_s for t in rules.ladder}
    fitting = [t for t in rules.ladder if predicted[t] <= rules.target_train_seconds]
    tokens = fitting[-1] if fitting else rules.ladder[0]
    note = "" if fitting else (f"even the smallest rung ({tokens:,} tokens) needs "
                               f"{predicted[tokens]:.0f} s of training, over the "
                               f"{rules.target_train_seconds:.0f} s target: this machine is slow for breadth")
    return {"tokens": tokens, "predicted_train_s": round(predicted[tokens], 1), "note": note}


def predicted_trainer_s(probe: dict, tokens: int) -> float:
    return float(probe["fixed_s"]) + tokens / float(probe["train_tok_s"])


def expected_trainer_s(record: dict, tokens: int, allowance: float = 1.0) -> tuple[float, str]:
    """The expected lifetime of a baseline trainer at `tokens`, and where it comes from:
    measured at this budget, else the probe's prediction times `allowance` (its error)."""
    measured = record.get("measured") or {}
    if measured.get("tokens") == tokens and measured.get("trainer_s"):
        return float(measured["trainer_s"]), f"measured {measured.get('at', '?')[:10]}"
    return (allowance * predicted_trainer_s(record["probe"], tokens),
            f"probe {record['probe'].get('at', '?')[:10]}")


def slowdown(then_gflops: float | None, now_gflops: float | None) -> float:
    """How much slower the machine is than when it was measured (1 when unknown or faster)."""
    if not then_gflops or not now_gflops or now_gflops <= 0:
        return 1.0
    return min(MAX_SLOWDOWN, max(1.0, then_gflops / now_gflops))


def hard_timeout(rules: Rules, expected_s: float, factor: float = 1.0) -> float:
    return float(max(rules.min_timeout_seconds, math.ceil(rules.timeout_margin * expected_s * factor)))


def pi_timeout(timeout_s: float, grace_s: float) -> int:
    """timeout_seconds for pi's run_experiment: the trainer and the scorer may each use the
    hard timeout, plus the kill grace for each and a minute of bookkeeping; rounded up to
    the next 30 s so the number reads well."""
    return int(math.ceil((2 * timeout_s + 2 * grace_s + 60) / 30.0) * 30)


# --------------------------------------------------------------------------- projection

def project(clock: StepClock, now_s: float, tail_s: float) -> float | None:
    """Projected trainer lifetime from the steps seen so far: the remaining steps at the
    average step time so far, plus the evaluations and export (the probe's tail)."""
    step_s = clock.step_seconds()
    if step_s is None:
        return None
    _, done, total = clock.steps[-1]
    return now_s + max(0, total - done) * step_s + tail_s


def warning_line(projected_s: float, timeout_s: float, clock: StepClock) -> str:
    _, done, total = clock.steps[-1]
    return (f"autoresearch: warning: projected trainer time {projected_s:.0f} s exceeds the "
            f"{timeout_s:.0f} s hard timeout ({projected_s / timeout_s:.1f}x; step {done}/{total} at "
            f"{clock.step_seconds():.2f} s/step): this run will end as timeout unless it speeds up")


def miss_note(projected_s: float | None, timeout_s: float) -> str:
    """How far a timed-out run was from finishing, for its summary line."""
    if projected_s is None:
        return "no training step finished before the timeout, so no projection"
    return (f"it needed about {projected_s:.0f} s, {projected_s - timeout_s:+.0f} s "
            f"({projected_s / timeout_s:.1f}x) over the {timeout_s:.0f} s timeout")


class Projection:
    """Watches the trainer's step lines (harness clock) and projects its lifetime: a run
    heading past its hard timeout says so at once, and a timed-out run says by how much."""

    def __init__(self, timeout_s: float, tail_s: float):
        self.timeout_s, self.tail_s = timeout_s, tail_s
        self.clock = StepClock(started=0.0)
        self.projected: float | None = None
        self.warned = False

    def __call__(self, line: str, now_s: float) -> None:
        if not self.clock.feed(line, now_s):
            return
        self.projected = project(self.clock, now_s, self.tail_s)
        if self.projected is not None and self.projected > self.timeout_s and not self.warned:
            self.warned = True
            say(warning_line(self.projected, self.timeout_s, self.clock))

    def at_kill(self, lifetime_s: float) -> float | None:
        """The projection when the trainer was killed: a stall since the last step counts."""
        late = project(self.clock, lifetime_s, self.tail_s)
        known = [p for p in (self.projected, late) if p is not None]
        return max(known) if known else None
