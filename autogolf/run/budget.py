"""The training budget of a run: what a profile fixes, and where the value came from.

A budget is one of (the first that is set and positive wins, as in the trainer):
  tokens   TRAIN_BUDGET_TOKENS: train on this many tokens, whatever the batch per step
           (breadth: deterministic, and the verdict charges for compute through tok_s)
  seconds  MAX_WALLCLOCK_SECONDS: train for this long (confirm, full: as the challenge does)
  steps    ITERATIONS (smoke)

Breadth's token budget is sized to the machine (sizing.py): the first breadth run on a
machine with no record probes the baseline trainer's throughput and picks a rung of the
profile's ladder. The choice lives in the machine file, logs/machine.json (git-ignored, like
every harness output; so an agent's discard never deletes it and it never travels in a
commit). Precedence, first wins: the environment (an override, shown as such), a choice
`just calibrate` measured for rank fidelity, the probe's choice, the profile's own value.
Every ledger row records the budget and its source in row["budget"].
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from autogolf.fsutil import atomic_write
from autogolf.run.profiles import Profile, ProfileError

MACHINE_RELPATH = Path("logs") / "machine.json"
BUDGET_VARS = (("TRAIN_BUDGET_TOKENS", "tokens"), ("MAX_WALLCLOCK_SECONDS", "seconds"),
               ("ITERATIONS", "steps"))


def machine_path(repo_root: Path) -> Path:
    return Path(repo_root) / MACHINE_RELPATH


def read_machine_file(path: Path) -> dict | None:
    """The machine file, or None when there is none or it was written on another host."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("profiles"), dict):
            raise ValueError("no profiles table")
    except (OSError, ValueError, AttributeError) as e:
        raise ProfileError(f"{path}: unreadable machine file ({e}); delete it or rerun "
                           f"`just calibrate`") from e
    return data if data.get("host") == socket.gethostname() else None


def write_machine_choice(path: Path, profile: str, tokens: int, finding: dict) -> dict:
    """Record `tokens` as `profile`'s TRAIN_BUDGET_TOKENS on this machine, keeping the rest."""
    try:
        data = read_machine_file(path) or {}
    except ProfileError:
        data = {}
    data.setdefault("profiles", {})[profile] = {"TRAIN_BUDGET_TOKENS": int(tokens)}
    data.update(host=socket.gethostname(), written_by="just calibrate",
                at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    data.setdefault("findings", {})[profile] = finding
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return data


def sizing_record(machine: dict | None, profile: str) -> dict | None:
    """The probe's record for `profile` on this machine (None: never sized here)."""
    record = ((machine or {}).get("sizing") or {}).get(profile)
    return record if isinstance(record, dict) and isinstance(record.get("probe"), dict) else None


def write_sizing(path: Path, profile: str, record: dict) -> dict:
    """Store the probe's record for `profile`, keeping everything else in the file. The
    previous choice is kept in the record's history, so a change can be told."""
    try:
        data = read_machine_file(path) or {}
    except ProfileError:
        data = {}
    old = sizing_record(data, profile)
    history = list((old or {}).get("history") or [])
    if old:
        history.append({"tokens": old.get("tokens"), "at": old["probe"].get("at"),
                        "train_tok_s": old["probe"].get("train_tok_s")})
    record = dict(record, history=history[-20:])
    data.setdefault("sizing", {})[profile] = record
    data.setdefault("profiles", {})
    data["host"] = socket.gethostname()
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return record


def record_measured(path: Path, profile: str, tokens: int, trainer_sha: str, trainer_s: float,
                    run_id: str, sgemm_gflops: float | None) -> bool:
    """The first finished run of the probed (baseline) trainer at the chosen budget: its
    trainer time, measured by the harness, becomes the expected duration. Returns whether
    it was recorded (only once per choice, and only for that trainer)."""
    try:
        data = read_machine_file(path)
    except ProfileError:
        return False
    record = sizing_record(data, profile)
    if not record or record.get("tokens") != tokens or record["probe"].get("trainer_sha256") != trainer_sha \
            or (record.get("measured") or {}).get("tokens") == tokens:
        return False
    record["measured"] = {"tokens": tokens, "trainer_s": round(trainer_s, 3), "run_id": run_id,
                          "sgemm_gflops": sgemm_gflops, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return True


def apply(profile: Profile, environ: dict, repo_root: Path) -> dict:
    """Put the machine file's budget into `profile` (unless the environment sets one) and
    return the run's budget: {"kind", "value", "source"}."""
    path = machine_path(repo_root)
    machine = read_machine_file(path)
    chosen = ((machine or {}).get("profiles") or {}).get(profile.name) or {}
    source = "profile"
    sized = sizing_record(machine, profile.name)
    if sized and not chosen and "TRAIN_BUDGET_TOKENS" in profile.env:
        _set(profile, environ, "TRAIN_BUDGET_TOKENS", str(sized["tokens"]))
        source = (f"{MACHINE_RELPATH} (probe {sized['probe'].get('at', '?')[:10]}: "
                  f"{sized['probe'].get('train_tok_s', 0):.0f} tok/s)")
    for name, value in chosen.items():
        if name not in profile.env:
            continue  # a machine file never adds a knob the profile does not fix
        _set(profile, environ, name, str(value))
        source = f"{MACHINE_RELPATH} (just calibrate, {machine.get('at', '?')})"
    for name, kind in BUDGET_VARS:
        raw = profile.resolved.get(name, environ.get(name))
        try:
            value = float(raw) if raw is not None else 0.0
        except ValueError:
            raise ProfileError(f"{name}={raw!r} is not a number; fix that variable") from None
        if value > 0:
            if name in profile.overrides or name not in profile.env:
                source = "environment (override)"
            return {"kind": kind, "value": int(value) if value.is_integer() else value,
                    "variable": name, "source": source}
    return {"kind": "trainer default", "value": None, "variable": None, "source": "trainer"}


def _set(profile: Profile, environ: dict, name: str, value: str) -> None:
    """The machine's value for a profile variable; the environment still wins (an override)."""
    profile.env[name] = value
    profile.overrides.pop(name, None)
    if name in environ and environ[name] != value:
        profile.overrides[name] = environ[name]
    profile.resolved[name] = environ.get(name, value)
