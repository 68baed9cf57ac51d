"""Start the agent: check its prerequisites, then exec pi (or AUTOGOLF_AGENT_CMD) in this pane.

    bash scripts/run-pi-autoresearch.sh            first start, or resume when a session exists
    bash scripts/run-pi-autoresearch.sh --check    only check the prerequisites

First start: pi gets `/autoresearch <goal>` (the `Goal:` line of autoresearch.md) as its first
message, which switches pi-autoresearch on and starts the loop. Restart (pi-autoresearch's log
.auto/log.jsonl has a session): `pi -c` resumes the last pi session of this project WITH a
message that carries the loop on; a resume without one leaves pi idle.

pi runs with `--session-dir logs/agent/pi-sessions` (so the supervisor can read its state) and
loads the extensions by path, which needs no project trust: `-e agent/node_modules/pi-autoresearch`,
then `-e agent/guard/index.ts`, autogolf's guard (after it, so its checks see every tool call
pi-autoresearch registered; the rules are autogolf/agent/gate*.py). pi never starts without
the guard: a missing guard, or a gate that does not answer, is a missing prerequisite. Provider and model: pi's own configuration (~/.pi/agent, or PI_CODING_AGENT_DIR), a key
in the environment, or AUTOGOLF_PI_PROVIDER / AUTOGOLF_PI_MODEL. AUTOGOLF_PI_ARGS adds flags.

AUTOGOLF_AGENT_CMD runs another CLI agent instead (through `bash -c`): it gets the same message
in $AUTOGOLF_AGENT_MESSAGE and AUTOGOLF_AGENT_RESUME=1 on a restart.

Either agent runs with AUTOGOLF_LOOP=1, the loop's marker: a benchmark it starts restores
harness files that differ from HEAD before it runs (autogolf/run/orchestrator.py), where a
run started by hand refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from autogolf import settings
from autogolf.agent import install
from autogolf.paths import REPO_ROOT

AUTO_DIR = REPO_ROOT / ".auto"
SESSION_DIR = REPO_ROOT / "logs" / "agent" / "pi-sessions"
EXTENSION_DIR = install.AGENT_DIR / "node_modules" / "pi-autoresearch"
PI_BIN = install.AGENT_DIR / "node_modules" / ".bin" / "pi"
GUARD = install.AGENT_DIR / "guard" / "index.ts"
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY",
                 "GROQ_API_KEY", "XAI_API_KEY", "MISTRAL_API_KEY", "CEREBRAS_API_KEY",
                 "DEEPSEEK_API_KEY", "AZURE_OPENAI_API_KEY", "AWS_BEARER_TOKEN_BEDROCK")
# The shims that make pi-autoresearch 1.6 run our flat files (it ignores them once .auto/ exists).
SHIMS = {"measure.sh": "autoresearch.sh", "checks.sh": "autoresearch.checks.sh",
         "prompt.md": "autoresearch.md", "ideas.md": "autoresearch.ideas.md"}
RESUME_MESSAGE = ("You were restarted by the autogolf supervisor. Continue the autoresearch loop "
                  "where it stopped: read .auto/log.jsonl and autoresearch.ideas.md, pick the next "
                  "idea, then run_experiment and log_experiment. Do not stop to ask questions.")
GENERIC_MESSAGE = ("Read autoresearch.md and follow it: loop forever over small changes to "
                   "benchmark/train_gpt_mlx.py, each measured with `bash autoresearch.sh`; keep a "
                   "change (git commit) only when the VERDICT/summary says it improved, else "
                   "revert it with `git checkout -- benchmark/`.")


def goal() -> str:
    """The `Goal:` line of autoresearch.md, the kickoff's argument."""
    text = (REPO_ROOT / "autoresearch.md").read_text(encoding="utf-8")
    match = re.search(r"^Goal:\s*(.+)$", text, re.M)
    return match[1].strip() if match else "lower val_bpb of benchmark/train_gpt_mlx.py"


def pi_agent_dir() -> Path:
    return Path(os.environ.get("PI_CODING_AGENT_DIR") or Path.home() / ".pi" / "agent")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def provider_source() -> str | None:
    """Where pi will find a model, or None."""
    if settings.get("AUTOGOLF_PI_PROVIDER") and settings.get("AUTOGOLF_PI_MODEL"):
        return "AUTOGOLF_PI_PROVIDER/AUTOGOLF_PI_MODEL"
    for key in PROVIDER_KEYS:
        if os.environ.get(key):
            return f"${key}"
    agent_dir = pi_agent_dir()
    pi_settings = _json(agent_dir / "settings.json") or {}
    if pi_settings.get("defaultProvider") and pi_settings.get("defaultModel"):
        return f"{agent_dir}/settings.json ({pi_settings['defaultProvider']}/{pi_settings['defaultModel']})"
    if _json(agent_dir / "auth.json"):
        return f"{agent_dir}/auth.json"
    models = _json(agent_dir / "models.json") or {}
    if models.get("providers"):
        return f"{agent_dir}/models.json"
    return None


def shim_problems() -> list[str]:
    problems = []
    for name, target in SHIMS.items():
        shim = AUTO_DIR / name
        if not shim.exists():
            problems.append(f".auto/{name} is missing (it makes pi-autoresearch use {target}); "
                            f"restore it with `git checkout -- .auto`")
        elif name.endswith(".sh") and target not in shim.read_text(encoding="utf-8", errors="replace"):
            problems.append(f".auto/{name} does not run {target}; restore it with `git checkout -- .auto`")
        elif name.endswith(".md") and shim.resolve() != (REPO_ROOT / target).resolve():
            problems.append(f".auto/{name} does not point at {target}; restore it with `git checkout -- .auto`")
    return problems


def prerequisites() -> list[str]:
    """Every missing prerequisite, each with its fix. Empty when the agent can start."""
    custom = settings.get("AUTOGOLF_AGENT_CMD").strip()
    if custom:
        words = shlex.split(custom)
        exe = words[0] if words else ""
        if exe in ("env", "exec") and len(words) > 1:
            exe = words[1]
        if not (shutil.which(exe) or Path(exe).is_file()):
            return [f"AUTOGOLF_AGENT_CMD runs {exe!r}, which is not on PATH"]
        return []
    problems = []
    if not PI_BIN.exists():
        problems.append("pi is not installed in agent/node_modules: run `just setup-agent`")
    node, seen = install.find_node(install.pins()["node_min"])
    if node is None:
        problems.append(f"pi needs Node.js >= {install.pins()['node_min']} (found {seen or 'none'}): "
                        f"run `just setup-agent`")
    if install.installed_version("pi-autoresearch") != install.EXTENSION_VERSION:
        problems.append(f"the pi-autoresearch extension {install.EXTENSION_VERSION} is not installed in "
                        f"agent/node_modules: run `just setup-agent`")
    if provider_source() is None:
        problems.append(f"no model provider for pi: export a key ({', '.join(PROVIDER_KEYS[:4])}, ...), "
                        f"or configure one in {pi_agent_dir()} (`pi` then /login, or models.json), or "
                        f"set AUTOGOLF_PI_PROVIDER and AUTOGOLF_PI_MODEL")
    problems += guard_problems()
    problems += shim_problems()
    return problems


def guard_problems() -> list[str]:
    """The guard is there and its gate answers: without it pi-autoresearch takes the agent's
    word for the command, the keep and the metric (see autogolf/agent/gate.py)."""
    if not GUARD.is_file():
        return [f"the autogolf guard {GUARD.relative_to(REPO_ROOT)} is missing; restore it with "
                f"`git checkout -- agent/guard`"]
    python = REPO_ROOT / ".venv" / "bin" / "python"
    try:
        # a dry question with a read-only answer: an edit of an out-of-scope file, not journaled
        out = subprocess.run([str(python), "-c", "from autogolf.agent import gate; import json, sys; "
                              "json.dump(gate.decide('edit', {'path': 'autoresearch.sh'}, gate.REPO_ROOT), sys.stdout)"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        if json.loads(out.stdout).get("allow") is not False:
            raise ValueError("it allowed an edit of autoresearch.sh")
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return [f"the guard's gate (python -m autogolf.agent.gate) does not answer ({e}); run `just setup`"]
    return []


def has_session() -> bool:
    """True when pi-autoresearch has a session to resume (its log has a config line)."""
    log = AUTO_DIR / "log.jsonl"
    try:
        return any('"type":"config"' in line.replace(" ", "") for line in log.open(encoding="utf-8"))
    except OSError:
        return False


def agent_command(resume: bool) -> tuple[list[str], dict]:
    env = dict(os.environ)
    # the loop's marker: a benchmark the agent starts restores harness files that differ
    # from HEAD instead of refusing (run/orchestrator.py); for every agent, pi or another
    env["AUTOGOLF_LOOP"] = "1"
    custom = settings.get("AUTOGOLF_AGENT_CMD", env).strip()
    if custom:
        env.update(AUTOGOLF_AGENT_MESSAGE=RESUME_MESSAGE if resume else GENERIC_MESSAGE,
                   AUTOGOLF_AGENT_RESUME="1" if resume else "0")
        return ["bash", "-c", custom], env
    SESSION_DIR.mkdir(parents=True, exist_ok=True)
    env["PATH"] = install.agent_path()
    for key, value in (("PI_SKIP_VERSION_CHECK", "1"), ("PI_TELEMETRY", "0"), ("PI_OFFLINE", "1")):
        env.setdefault(key, value)
    cmd = [str(PI_BIN), "--session-dir", str(SESSION_DIR), "-e", str(EXTENSION_DIR), "-e", str(GUARD)]
    if settings.get("AUTOGOLF_PI_PROVIDER", env):
        cmd += ["--provider", settings.get("AUTOGOLF_PI_PROVIDER", env)]
    if settings.get("AUTOGOLF_PI_MODEL", env):
        cmd += ["--model", settings.get("AUTOGOLF_PI_MODEL", env)]
    cmd += shlex.split(settings.get("AUTOGOLF_PI_ARGS", env))
    if resume:
        cmd += ["--continue", RESUME_MESSAGE]
    else:
        cmd += [f"/autoresearch {goal()}"]
    return cmd, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash scripts/run-pi-autoresearch.sh",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the prerequisites, then exit")
    parser.add_argument("--resume", choices=("auto", "yes", "no"), default="auto",
                        help="resume the previous session (auto: when .auto/log.jsonl has one)")
    parser.add_argument("--print-command", action="store_true",
                        help="print the agent command instead of running it")
    args = parser.parse_args(argv)
    problems = prerequisites()
    for problem in problems:
        print(f"run-pi-autoresearch: missing: {problem}", file=sys.stderr)
    if problems:
        return 2
    resume = has_session() if args.resume == "auto" else args.resume == "yes"
    cmd, env = agent_command(resume)
    if args.check or args.print_command:
        print(shlex.join(cmd) if args.print_command else "run-pi-autoresearch: prerequisites ok")
        return 0
    print(f"run-pi-autoresearch: {'resuming' if resume else 'starting'}: {shlex.join(cmd)[:300]}", flush=True)
    os.chdir(REPO_ROOT)
    os.execvpe(cmd[0], cmd, env)
    return 70  # not reached


if __name__ == "__main__":
    sys.exit(main())
