"""The guard's rule for pi-autoresearch's `run_experiment`: the benchmark and nothing else.

pi-autoresearch 1.6.0 accepts any command that mentions autoresearch.sh, so
`PROFILE=smoke bash autoresearch.sh && echo METRIC val_bpb=0.01` ran and the echoed number
became the metric it told the agent to log. The allowed form is a grammar, not a blacklist:

    [PROFILE=<profile>] [REPEATS=<1..20>] [SEED=<n>] bash autoresearch.sh

(each variable at most once, any order, values from a small character set). Every other
character -- a chain, a pipe, a redirection, a substitution, a quote -- is refused before the
words are even read, so no quoting trick can smuggle a second command through.

The guard also owns the call's `timeout_seconds`: pi-autoresearch kills the benchmark after
600 s unless told otherwise, which would cut off a run the harness means to finish (and
record). The value is the harness's for that profile on this machine: the latest
`verdict.pi_timeout_s` the ledger holds for it, else one computed as the orchestrator would
(run/sizing.py), times REPEATS (pi_timeout_s is per run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from autogolf import settings
from autogolf.judge import ledger
from autogolf.judge.repeats import MAX_REPEATS
from autogolf.run import budget, profiles, sizing

SCRIPT = "autoresearch.sh"
# Before a breadth run has probed this machine the probe itself comes first (about a
# minute), then a run of unknown length: autoresearch.md tells the agent this same number.
UNSIZED_BREADTH_PI_TIMEOUT = 1500
# What each refused character means, so the reason names the trick rather than a byte.
_FORBIDDEN = (("&&", "a chain of commands (`&&`)"), ("||", "a chain of commands (`||`)"),
              (";", "a chain of commands (`;`)"), ("\n", "a second line (a chain of commands)"),
              ("|", "a pipe (`|`)"), ("&", "a background job or chain (`&`)"),
              ("$(", "a command substitution (`$(...)`)"), ("`", "a command substitution (backticks)"),
              ("$", "a variable expansion (`$`)"), (">", "a redirection (`>`)"), ("<", "a redirection (`<`)"),
              ("'", "a quote (`'`)"), ('"', 'a quote (`"`)'), ("\\", "an escape (`\\`)"),
              ("(", "a subshell (`(`)"), ("{", "a group (`{`)"), ("#", "a comment (`#`)"))
_SAFE = re.compile(r"[A-Za-z0-9_.=\- \t]*")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def allowed_form(names: list[str] | None = None) -> str:
    names = names or sorted(profiles.load_all())
    return f"[PROFILE={'|'.join(names)}] [REPEATS=1..{MAX_REPEATS}] [SEED=<n>] bash {SCRIPT}"


@dataclass
class Parsed:
    """A command in the allowed form: its variables (PROFILE defaulted)."""
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def profile(self) -> str:
        return self.variables.get("PROFILE", profiles.DEFAULT_PROFILE)

    @property
    def repeats(self) -> int:
        return int(self.variables.get("REPEATS", "1"))


def _value_problem(name: str, value: str, names: list[str]) -> str | None:
    if name == "PROFILE" and value not in names:
        return f"PROFILE={value} is not a profile ({', '.join(names)})"
    if name == "REPEATS" and not (value.isdigit() and 1 <= int(value) <= MAX_REPEATS):
        return f"REPEATS={value} is not a whole number from 1 to {MAX_REPEATS}"
    if name == "SEED" and not value.isdigit():
        return f"SEED={value} is not a whole number"
    return None


def parse(command: str) -> tuple[Parsed | None, str]:
    """(the parsed command, "") when it is in the allowed form, else (None, what is wrong)."""
    names = sorted(profiles.load_all())
    text = command.strip()
    if not _SAFE.fullmatch(text):
        for token, meaning in _FORBIDDEN:
            if token in text:
                return None, meaning
        odd = next(c for c in text if not _SAFE.fullmatch(c))
        return None, f"a character the benchmark command never needs ({odd!r})"
    words = text.split()
    parsed = Parsed()
    while words and _ASSIGNMENT.match(words[0]):
        name, value = _ASSIGNMENT.match(words.pop(0)).groups()
        if name not in ("PROFILE", "REPEATS", "SEED"):
            return None, f"{name}= is not one of the benchmark's variables (PROFILE, REPEATS, SEED)"
        if name in parsed.variables:
            return None, f"{name}= is set twice"
        problem = _value_problem(name, value, names)
        if problem:
            return None, problem
        parsed.variables[name] = value
    if words != ["bash", SCRIPT]:
        rest = " ".join(words) or "(nothing)"
        if SCRIPT in rest and rest != f"bash {SCRIPT}":
            return None, f"`{rest}` is not exactly `bash {SCRIPT}` (extra words, or another way to run it)"
        return None, f"`{rest}` is not the benchmark"
    return parsed, ""


# --------------------------------------------------------------------------- timeout_seconds

def _grace() -> float:
    raw = settings.get("AUTOGOLF_KILL_GRACE_SECONDS")
    try:
        return float(raw)
    except ValueError:
        return float(settings.default("AUTOGOLF_KILL_GRACE_SECONDS"))


def computed_pi_timeout(name: str, root: Path) -> tuple[int, str]:
    """What the orchestrator would allow a run of profile `name` now, without a ledger
    value: sized profiles from the machine record, others from timeout_seconds."""
    profile = profiles.load(name, environ={})
    override = settings.get("AUTOGOLF_TIMEOUT")  # the orchestrator honours it: so does pi's limit
    if override:
        return sizing.pi_timeout(float(override), _grace()), "AUTOGOLF_TIMEOUT"
    if profile.sizing is None:
        return (sizing.pi_timeout(profile.timeout_seconds, _grace()),
                f"profile {name}: timeout_seconds={profile.timeout_seconds:g}")
    try:
        machine = budget.read_machine_file(budget.machine_path(root))
    except profiles.ProfileError:
        machine = None
    record = budget.sizing_record(machine, name)
    if record is None:
        return UNSIZED_BREADTH_PI_TIMEOUT, f"{name} not yet sized on this machine (the probe runs first)"
    chosen = ((machine or {}).get("profiles") or {}).get(name) or {}
    tokens = int(chosen.get("TRAIN_BUDGET_TOKENS") or record["tokens"])
    expected, basis = sizing.expected_trainer_s(record, tokens, profile.sizing.probe_allowance)
    timeout = sizing.hard_timeout(profile.sizing, expected)
    return sizing.pi_timeout(timeout, _grace()), f"{name} sized: {basis}, hard timeout {timeout:g} s"


def pi_timeout(name: str, root: Path, runs: list[dict] | None = None) -> tuple[int, str]:
    """(timeout_seconds for ONE run of profile `name`, where it came from)."""
    runs = ledger.runs(ledger.default_path(root)) if runs is None else runs
    for run in reversed(runs):
        value = (run.get("verdict") or {}).get("pi_timeout_s")
        if run.get("profile") == name and isinstance(value, (int, float)) and value > 0:
            return int(value), f"the ledger (run {run.get('run_id')})"
    return computed_pi_timeout(name, root)


def decide(tool_input: dict, root: Path, runs: list[dict] | None = None) -> dict:
    """The decision on one run_experiment call: allow (with its timeout set) or block."""
    command = tool_input.get("command")
    if not isinstance(command, str):
        return {"allow": False, "reason": f"run_experiment needs a command: `{allowed_form()}`"}
    parsed, problem = parse(command)
    if parsed is None:
        return {"allow": False, "reason": (
            f"run_experiment runs only the benchmark, in this form: `{allowed_form()}` "
            f"(for example `PROFILE=smoke bash {SCRIPT}`, or `bash {SCRIPT}` for breadth). "
            f"Refused: {problem}. The METRIC lines and the VERDICT come from the harness alone.")}
    seconds, source = pi_timeout(parsed.profile, root, runs)
    total = seconds * parsed.repeats
    new_input = dict(tool_input, command=command.strip(), timeout_seconds=total)
    note = f"timeout_seconds={total} ({source}" + (f", x{parsed.repeats} repeats)" if parsed.repeats > 1 else ")")
    return {"allow": True, "reason": note, "input": new_input}
