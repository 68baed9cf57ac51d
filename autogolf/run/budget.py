"""The training budget of a run: what a profile fixes, and where the value came from.

A budget is one of (the first that is set and positive wins, as in the trainer):
  tokens   TRAIN_BUDGET_TOKENS: train on this many tokens, whatever the batch per step
           (breadth: deterministic, and the verdict charges for compute through tok_s)
  seconds  MAX_WALLCLOCK_SECONDS: train for this long (confirm, full: as the challenge does)
  steps    ITERATIONS (smoke)

Breadth's token budget comes from the profile, unless `just calibrate` measured one for
this machine and wrote it to the machine file, logs/machine.json (git-ignored, like every
harness output; so an agent's discard never deletes it and it never travels in a commit).
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


def apply(profile: Profile, environ: dict, repo_root: Path) -> dict:
    """Put the machine file's budget into `profile` (unless the environment sets one) and
    return the run's budget: {"kind", "value", "source"}."""
    path = machine_path(repo_root)
    machine = read_machine_file(path)
    chosen = ((machine or {}).get("profiles") or {}).get(profile.name) or {}
    source = "profile"
    for name, value in chosen.items():
        if name not in profile.env:
            continue  # a machine file never adds a knob the profile does not fix
        value = str(value)
        profile.env[name] = value
        profile.overrides.pop(name, None)
        if name in environ and environ[name] != value:
            profile.overrides[name] = environ[name]
        profile.resolved[name] = environ.get(name, value)
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
