"""Helpers for the agent-loop tests: a clean environment, a private tmux server, waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from autogolf.agent import launch

from conftest import REPO

PI_INSTALLED = (REPO / "agent" / "node_modules" / ".bin" / "pi").exists()
PI_MISSING_REASON = "pi is not installed here: run `just setup-agent` (`just test` does)"


def clean_env(home: Path, **extra: str) -> dict:
    """The environment of a user with no provider key and no pi configuration, a private tmux
    server (AUTOGOLF_TMUX_SOCKET) and a private benchmark lock."""
    env = {k: v for k, v in os.environ.items()
           if k not in launch.PROVIDER_KEYS and not k.startswith(("AUTOGOLF_", "PI_", "TMUX"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), AUTOGOLF_TMUX_SOCKET=f"agtest-{uuid.uuid4().hex[:8]}",
               AUTOGOLF_LOCK_PATH=str(home / "machine.lock"), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def scripted_provider(agent_dir: Path, port: int) -> dict:
    """pi's configuration for the scripted model server: PI_CODING_AGENT_DIR and the model."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"scripted": {
        "baseUrl": f"http://127.0.0.1:{port}/v1", "api": "openai-completions", "apiKey": "any",
        "models": [{"id": "scripted"}]}}}))
    return {"PI_CODING_AGENT_DIR": str(agent_dir), "AUTOGOLF_PI_PROVIDER": "scripted",
            "AUTOGOLF_PI_MODEL": "scripted"}


def tmux(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", env["AUTOGOLF_TMUX_SOCKET"], *args], capture_output=True,
                          text=True, env=env)


def kill_tmux_server(env: dict) -> None:
    tmux(env, "kill-server")


def loop(project: Path, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autogolf.agent.loop", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def status(project: Path, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "autogolf.agent.status"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def events(project: Path) -> list[str]:
    path = project / "logs" / "supervisor.log"
    return path.read_text().splitlines() if path.is_file() else []
