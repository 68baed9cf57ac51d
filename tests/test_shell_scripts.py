"""Every shell script in the repository runs under macOS's /bin/bash 3.2.

No bash 3.2 runs here, so two checks stand in for it: a lint for the constructs bash 3.2
lacks or treats differently (the table below), and `bash --posix -n`, which parses each
script with bash's extensions beyond POSIX restricted. The scripts are every tracked *.sh
and .ci/run, so scripts added later are covered without editing this file. Each rule is
also shown to catch its own example, so the lint cannot pass by matching nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"

# (rule, pattern, an offending line, a line bash 3.2 runs)
RULES = [
    ("empty-array expansion under set -u (bash < 4.4: unbound variable); guard it as "
     '${a[@]+"${a[@]}"} or avoid the array',
     re.compile(rf"\$\{{(?!#){IDENT}\[[@*]\]\}}"), 'uv sync "${extra[@]}"', 'uv sync ${extra[@]+"${extra[@]}"}'),
    ("mapfile/readarray (bash 4)", re.compile(r"\b(mapfile|readarray)\b"),
     "mapfile -t lines < f", "while IFS= read -r line; do :; done < f"),
    ("associative arrays or namerefs (declare -A / -n, bash 4)",
     re.compile(r"\b(declare|local|typeset)\s+-[a-zA-Z]*[An]"), "declare -A seen", "seen=''"),
    ("case modification ${x,,} ${x^^} (bash 4)", re.compile(rf"\$\{{{IDENT}(\[[^]]*\])?(,|\^)"),
     'lower=${name,,}', "lower=$(printf '%s' \"$name\" | tr '[:upper:]' '[:lower:]')"),
    ("&>> and |& redirections (bash 4)", re.compile(r"&>>|\|&"), "cmd |& tee log", "cmd 2>&1 | tee log"),
    ("coproc (bash 4)", re.compile(r"\bcoproc\b"), "coproc worker", "worker &"),
    ("case fall-through ;& and ;;& (bash 4)", re.compile(r";;&|;&\s*$"), "  a) x ;;&", "  a) x ;;"),
    ("[[ -v name ]] (bash 4.2)", re.compile(r"\[\[\s+-v\b"), "[[ -v HOME ]]", '[ -n "${HOME+x}" ]'),
    ("${x@Q} transformations (bash 4.4)", re.compile(rf"\$\{{{IDENT}@[A-Za-z]\}}"), "echo ${x@Q}", 'echo "$x"'),
    ("bash 4/5-only variables without a default (unset in bash 3.2)",
     re.compile(r"\$(BASHPID|EPOCHSECONDS|EPOCHREALTIME|SRANDOM)\b|\$\{(BASHPID|EPOCHSECONDS|EPOCHREALTIME|SRANDOM)\}"),
     "echo $EPOCHSECONDS", 'start="${EPOCHREALTIME:-}"'),
    ("shopt options bash 3.2 lacks", re.compile(r"shopt\s+-s\s+.*\b(globstar|lastpipe|autocd|direxpand|"
                                                r"checkjobs|dirspell|localvar_inherit)\b"),
     "shopt -s globstar", "shopt -s nullglob"),
    ("wait -n (bash 4.3)", re.compile(r"\bwait\s+-n\b"), "wait -n", "wait"),
    ("brace ranges with a step or zero padding {01..10} (bash 4)",
     re.compile(r"\{(-?\d+\.\.-?\d+\.\.-?\d+|0\d+\.\.\d+)\}"), "for i in {1..9..2}; do :; done",
     "for i in 1 3 5 7 9; do :; done"),
]


def shell_scripts() -> list[Path]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True, check=True)
    names = [n for n in out.stdout.split("\0") if n.endswith(".sh") or n == ".ci/run"]
    return [REPO / n for n in sorted(names) if (REPO / n).is_file()]


# the one safe way to expand a possibly empty array under set -u in bash 3.2
GUARDED_ARRAY = re.compile(rf'\$\{{({IDENT})\[@\]\+"\$\{{\1\[@\]\}}"\}}')


def lint(text: str) -> list[str]:
    """'line N: rule' for each forbidden construct outside comments."""
    problems = []
    for n, line in enumerate(text.splitlines(), start=1):
        code = line if line.lstrip().startswith("#!") else re.sub(r"(^|\s)#.*$", "", line)
        code = GUARDED_ARRAY.sub("", code)
        problems += [f"line {n}: {rule}" for rule, rx, _, _ in RULES if rx.search(code)]
    return problems


SCRIPTS = shell_scripts()


def test_the_scripts_are_found():
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"scripts/setup.sh", "autoresearch.sh", ".ci/run"} <= names


@pytest.mark.parametrize("rule,rx,bad,good", RULES, ids=[r[2].split()[0] for r in RULES])
def test_each_rule_catches_its_example(rule, rx, bad, good):
    assert lint(bad) == [f"line 1: {rule}"]
    assert lint(good) == []
    assert lint(f"# {bad}") == []  # comments are not code


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.relative_to(REPO).as_posix() for p in SCRIPTS])
def test_script_is_bash32_safe(path):
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash"), f"{path}: start with #!/usr/bin/env bash"
    assert "set -euo pipefail" in text, f"{path}: set -euo pipefail"
    assert lint(text) == [], f"{path}: {lint(text)}"
    parsed = subprocess.run(["bash", "--posix", "-n", str(path)], capture_output=True, text=True)
    assert parsed.returncode == 0, f"{path}: bash --posix -n: {parsed.stderr}"


def path_without(tool: str, root: Path) -> str:
    """A PATH holding every command of this one except `tool` (symlinks in root)."""
    root.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            link = root / entry.name
            if entry.name != tool and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(root)


@pytest.mark.skipif(shutil.which("uv") is None and not (Path.home() / ".local/bin/uv").exists(),
                    reason="uv is not installed; setup.sh would download it")
def test_setup_runs_without_tmux(tmp_path):
    """scripts/setup.sh completes on a machine without tmux: only the agent-loop recipes
    need it. (Idempotent: on this checkout it syncs the same locked environment.)"""
    env = dict(os.environ, PATH=path_without("tmux", tmp_path / "bin"))
    assert shutil.which("tmux", path=env["PATH"]) is None
    done = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "setup: ready: .venv" in done.stdout
    assert "tmux is not installed" in done.stdout


NVIDIA_SMI_STANDIN = """#!/bin/sh
# stands in for the NVIDIA driver's tool: the header line its plain call prints
[ "$1" = -L ] && { echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"; exit 0; }
echo "| NVIDIA-SMI 580.159.03    Driver Version: 580.159.03    CUDA Version: $STANDIN_CUDA     |"
"""


@pytest.mark.parametrize("driver_cuda, extra", [("12.4", "cuda12"), ("13.0", "cuda13"), ("11.8", None), ("", None)])
def test_setup_picks_the_cuda_wheels_the_driver_supports(tmp_path, driver_cuda, extra):
    """With an NVIDIA driver, setup.sh chooses the CUDA backend and mlx[cuda12] or
    mlx[cuda13] by the driver's CUDA version (dry run: nothing is installed)."""
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(NVIDIA_SMI_STANDIN)
    tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{tool.parent}:{os.environ['PATH']}", STANDIN_CUDA=driver_cuda,
               AUTOGOLF_SETUP_DRY_RUN="1")
    env.pop("AUTOGOLF_BACKEND", None)
    env.pop("AUTOGOLF_CUDA", None)
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    if extra:
        assert out.returncode == 0 and out.stdout.strip() == f"setup: backend: cuda (extra: {extra})", out.stdout
    else:
        assert out.returncode == 1
        assert ("update the driver" if driver_cuda else "set AUTOGOLF_CUDA=12 or 13") in out.stdout
