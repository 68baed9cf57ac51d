"""scripts/run-pi-autoresearch.sh: each missing prerequisite is named with its fix, and the
command it runs (kickoff on a first start, resume with a message after a restart)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_helpers import PI_INSTALLED, PI_MISSING_REASON, clean_env, scripted_provider


def launch(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/run-pi-autoresearch.sh", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def old_node_first(tmp_path: Path, env: dict) -> dict:
    """A PATH whose only node is too old for pi (a stand-in for the system's Node 20)."""
    bin_dir = tmp_path / "oldnode"
    bin_dir.mkdir()
    (bin_dir / "node").write_text("#!/bin/sh\necho v20.11.0\n")
    (bin_dir / "node").chmod(0o755)
    return dict(env, PATH=f"{bin_dir}:/usr/bin:/bin")


def test_a_fresh_checkout_names_every_missing_prerequisite(tmp_path, project):
    for installed in (project / ".tools", project / "agent" / "node_modules"):  # links to ours
        if installed.is_symlink():
            installed.unlink()
    env = old_node_first(tmp_path, clean_env(tmp_path / "home"))
    out = launch(project, env, "--check")
    assert out.returncode == 2
    missing = [line for line in out.stderr.splitlines() if line.startswith("run-pi-autoresearch: missing:")]
    text = "\n".join(missing)
    assert "pi is not installed in agent/node_modules: run `just setup-agent`" in text
    assert "pi needs Node.js >= 22.19.0 (found v20.11.0): run `just setup-agent`" in text
    assert "pi-autoresearch extension 1.6.0 is not installed" in text
    assert "no model provider for pi" in text and "ANTHROPIC_API_KEY" in text
    assert len(missing) == 4, out.stderr


@pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)
def test_only_the_provider_missing(tmp_path, project):
    out = launch(project, clean_env(tmp_path / "home"), "--check")
    assert out.returncode == 2
    assert out.stderr.count("missing:") == 1 and "no model provider for pi" in out.stderr


@pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)
@pytest.mark.parametrize("source", ["key", "settings", "models", "env_model"])
def test_each_provider_source_is_accepted(tmp_path, project, source):
    home = tmp_path / "home"
    env = clean_env(home)
    agent_dir = home / ".pi" / "agent"
    agent_dir.mkdir(parents=True)
    if source == "key":
        env["ANTHROPIC_API_KEY"] = "sk-test"
    elif source == "settings":
        (agent_dir / "settings.json").write_text(json.dumps({"defaultProvider": "anthropic",
                                                             "defaultModel": "claude-sonnet"}))
    elif source == "models":
        env.update(scripted_provider(tmp_path / "pi-agent", 9))
        env.pop("AUTOGOLF_PI_PROVIDER")
        env.pop("AUTOGOLF_PI_MODEL")
    else:
        env.update(AUTOGOLF_PI_PROVIDER="scripted", AUTOGOLF_PI_MODEL="scripted")
    out = launch(project, env, "--check")
    assert out.returncode == 0, out.stderr
    assert "prerequisites ok" in out.stdout


@pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)
def test_missing_or_altered_shims_are_named(tmp_path, project):
    env = clean_env(tmp_path / "home", ANTHROPIC_API_KEY="sk-test")
    (project / ".auto" / "checks.sh").unlink()
    (project / ".auto" / "measure.sh").write_text("#!/bin/sh\necho METRIC val_bpb=0.1\n")
    out = launch(project, env, "--check")
    assert out.returncode == 2
    assert ".auto/checks.sh is missing (it makes pi-autoresearch use autoresearch.checks.sh)" in out.stderr
    assert ".auto/measure.sh does not run autoresearch.sh" in out.stderr
    assert "git checkout -- .auto" in out.stderr


@pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)
def test_kickoff_first_then_resume_with_a_message(tmp_path, project):
    env = clean_env(tmp_path / "home", ANTHROPIC_API_KEY="sk-test", AUTOGOLF_PI_ARGS="--thinking low")
    first = launch(project, env, "--print-command")
    assert first.returncode == 0, first.stderr
    goal = next(l for l in (project / "autoresearch.md").read_text().splitlines() if l.startswith("Goal:"))
    assert first.stdout.strip().endswith(f"'/autoresearch {goal[5:].strip()}'")
    assert "--session-dir" in first.stdout and "agent/node_modules/pi-autoresearch" in first.stdout
    assert "--thinking low" in first.stdout and "--continue" not in first.stdout
    (project / ".auto" / "log.jsonl").write_text('{"type":"config","name":"golf"}\n')
    again = launch(project, env, "--print-command")
    assert "--continue" in again.stdout and "Continue the autoresearch loop" in again.stdout


def test_another_agent_command(tmp_path, project):
    env = clean_env(tmp_path / "home", AUTOGOLF_AGENT_CMD="no-such-agent --yolo")
    out = launch(project, env, "--check")
    assert out.returncode == 2 and "AUTOGOLF_AGENT_CMD runs 'no-such-agent', which is not on PATH" in out.stderr
    env["AUTOGOLF_AGENT_CMD"] = 'echo "$AUTOGOLF_AGENT_RESUME: $AUTOGOLF_AGENT_MESSAGE"'
    out = launch(project, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("0: Read autoresearch.md and follow it")


def test_no_venv_says_run_setup(tmp_path):
    project = tmp_path / "bare"
    (project / "scripts").mkdir(parents=True)
    shutil.copy2(Path(__file__).resolve().parents[1] / "scripts" / "run-pi-autoresearch.sh", project / "scripts")
    out = launch(project, clean_env(tmp_path / "home"))
    assert out.returncode == 2 and "missing: .venv; run scripts/setup.sh" in out.stderr
