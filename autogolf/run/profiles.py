"""Benchmark profiles: named sets of trainer environment variables, kept as DATA in
`autogolf/run/profiles.toml` (protected by the checks, so the agent cannot quietly widen a budget).

A profile fixes the measuring budget -- training wall clock, validation subset, batch and
logging cadence -- not the recipe: model and optimizer knobs stay with the trainer, where
the agent edits them. Any variable can still be overridden from the environment
(`PROFILE=confirm MAX_WALLCLOCK_SECONDS=900 bash autoresearch.sh`): the environment wins,
and the run's summary line and ledger row name every override.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from autogolf.run.sizing import Rules, SizingError
from autogolf.settings import SettingError

PROFILES_FILE = Path(__file__).with_name("profiles.toml")
DEFAULT_PROFILE = "breadth"


class ProfileError(SettingError):
    """An unknown profile or a malformed profiles file; the message says which and how to fix."""


@dataclass
class Profile:
    name: str
    description: str
    timeout_seconds: float  # hard limit for the whole trainer process (AUTOGOLF_TIMEOUT wins)
    env: dict[str, str]  # the profile's own values
    holdout_tokens: int = 0  # hidden holdout the harness scores (autogolf/data/dataview.py)
    sizing: Rules | None = None  # sized to the machine: ladder, target, timeout margin (sizing.py)
    # A wall-clock budget's allowance: a trainer process that lives longer than the budget +
    # this (start-up, the step in flight at the cap, both evaluations, the export) is
    # over_budget (run/outcome.over_budget). None: no such rule (a token or step budget).
    over_budget_allowance_seconds: float | None = None
    resolved: dict[str, str] = field(default_factory=dict)  # after environment overrides
    overrides: dict[str, str] = field(default_factory=dict)  # variables the environment changed


def load_all(path: Path = PROFILES_FILE) -> dict[str, dict]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: cannot read the profiles file ({e}); restore it with "
                           f"`git checkout -- {path.name}`") from e
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError(f"{path}: no [profiles.<name>] tables")
    return profiles


def load(name: str | None = None, environ: dict | None = None, path: Path = PROFILES_FILE) -> Profile:
    """The named profile (default: $PROFILE, else breadth), resolved against `environ`."""
    environ = os.environ if environ is None else environ
    name = name or environ.get("PROFILE") or DEFAULT_PROFILE
    profiles = load_all(path)
    if name not in profiles:
        raise ProfileError(f"PROFILE={name} is not a profile; choose one of "
                           f"{', '.join(sorted(profiles))} (defined in {path})")
    raw = profiles[name]
    try:
        timeout = float(raw["timeout_seconds"])
        holdout = int(raw.get("holdout_tokens", 0))
        allowance = raw.get("over_budget_allowance_seconds")
        allowance = None if allowance is None else float(allowance)
        env = {str(k): _env_value(v) for k, v in raw.get("env", {}).items()}
        sizing = Rules.from_table(raw["sizing"], f"{path}: profile {name}") if "sizing" in raw else None
    except SizingError as e:
        raise ProfileError(str(e)) from e
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"{path}: profile {name} needs timeout_seconds and an env table "
                           f"of scalars ({e})") from e
    profile = Profile(name=name, description=str(raw.get("description", "")).strip(),
                      timeout_seconds=timeout, env=env, holdout_tokens=holdout, sizing=sizing,
                      over_budget_allowance_seconds=allowance)
    for key, value in env.items():
        if key in environ and environ[key] != value:
            profile.overrides[key] = environ[key]
        profile.resolved[key] = environ.get(key, value)
    return profile


def _env_value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError(f"unsupported value {value!r}")
