"""The guard's rules (autogolf/agent/gate*.py), on real files in a temporary project: no
processes, no pi. The extension (agent/guard/index.ts) only carries calls to these rules;
tests/test_guard_e2e.py runs it inside the real pi."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from autogolf import sandbox

from autogolf.agent import gate, gate_command, gate_keep, gate_paths, gate_shell
from autogolf.fsutil import file_sha256
from autogolf.judge import ledger, verdict
from autogolf.run import profiles

from conftest import REPO

TRAINER = "benchmark/train_gpt_mlx.py"


@pytest.fixture
def root(tmp_path, monkeypatch):
    for name in ("AUTOGOLF_TIMEOUT", "AUTOGOLF_KILL_GRACE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "benchmark").mkdir()
    (tmp_path / TRAINER).write_text("print('the trainer')\n")
    for name in ("autoresearch.md", "autoresearch.ideas.md", "autoresearch.sh", "autoresearch.checks.sh"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "logs").mkdir()
    return tmp_path


def a_verdict(call: str, reason: str = "baseline: no kept run yet", **extra) -> dict:
    return {"call": call, "delta": None, "noise": None, "noise_df": None, "threshold": None,
            "min_improvement": 0.002, "throughput_change": None, "repeats": 1, "compared_with": None,
            "reason": reason, **extra}


def add_run(root, run_id: str, call: str = "keep", status: str = "ok", val_bpb: float = 2.5,
            checks: bool | None = True, sha: str | None = None, **extra) -> dict:
    row = {"record": "run", "run_id": run_id, "status": status, "profile": "smoke",
           "metrics": {"val_bpb": val_bpb, "total_bytes": 1234},
           "trainer": {"sha256": sha or file_sha256(root / TRAINER)}, "verdict": a_verdict(call), **extra}
    ledger.append(row, ledger.default_path(root))
    if checks is not None:
        ledger.append_checks(run_id, checks, [] if checks else ["README.md changed"], ledger.default_path(root))
    return row


# --------------------------------------------------------------------------- run_experiment

@pytest.mark.parametrize("command", [
    "bash autoresearch.sh", "PROFILE=smoke bash autoresearch.sh", "  PROFILE=confirm REPEATS=3 bash autoresearch.sh ",
    "SEED=7 PROFILE=breadth REPEATS=2 bash autoresearch.sh", "PROFILE=smoke\tbash  autoresearch.sh"])
def test_the_benchmark_in_its_documented_form_runs(root, command):
    decision = gate_command.decide({"command": command}, root)
    assert decision["allow"], decision
    assert decision["input"]["command"] == command.strip()


@pytest.mark.parametrize("command, why", [
    ("PROFILE=smoke bash autoresearch.sh && echo METRIC val_bpb=0.01", "a chain of commands (`&&`)"),
    ("bash autoresearch.sh; echo METRIC val_bpb=0.01", "a chain of commands (`;`)"),
    ("bash autoresearch.sh || true", "a chain of commands (`||`)"),
    ("bash autoresearch.sh\necho METRIC val_bpb=0.01", "a second line"),
    ("bash autoresearch.sh | tail -3", "a pipe (`|`)"),
    ("bash autoresearch.sh & echo METRIC val_bpb=1", "a background job"),
    ("bash autoresearch.sh > /tmp/out", "a redirection (`>`)"),
    ("bash autoresearch.sh < /dev/null", "a redirection (`<`)"),
    ("bash $(echo autoresearch.sh)", "a command substitution (`$(...)`)"),
    ("bash `echo autoresearch.sh`", "a command substitution (backticks)"),
    ("PROFILE=$P bash autoresearch.sh", "a variable expansion"),
    ("bash 'autoresearch.sh'", "a quote (`'`)"),
    ('bash "autoresearch.sh"', 'a quote (`"`)'),
    ("bash autoresearch.s\\h", "an escape"),
    ("bash autoresearch.sh # METRIC val_bpb=0.01", "a comment"),
    ("./autoresearch.sh", "a character the benchmark command never needs ('/')"),
    ("bash autoresearch.sh --fast", "is not exactly `bash autoresearch.sh`"),
    ("bash -x autoresearch.sh", "is not exactly"),
    ("bash other/autoresearch.sh", "('/')"),
    ("bash fake.sh", "is not the benchmark"),
    ("python3 -c print", "is not the benchmark"),
    ("PROFILE=huge bash autoresearch.sh", "PROFILE=huge is not a profile"),
    ("REPEATS=0 bash autoresearch.sh", "REPEATS=0 is not a whole number from 1 to 20"),
    ("REPEATS=21 bash autoresearch.sh", "from 1 to 20"),
    ("SEED=x1 bash autoresearch.sh", "SEED=x1 is not a whole number"),
    ("PROFILE=smoke PROFILE=full bash autoresearch.sh", "PROFILE= is set twice"),
    ("MAX_WALLCLOCK_SECONDS=1 bash autoresearch.sh", "MAX_WALLCLOCK_SECONDS= is not one of the benchmark's variables"),
    ("AUTOGOLF_TIMEOUT=99999 bash autoresearch.sh", "AUTOGOLF_TIMEOUT= is not one of"),
    ("", "(nothing)"),
])
def test_anything_else_is_blocked_with_the_allowed_form(root, command, why):
    decision = gate_command.decide({"command": command}, root)
    assert not decision["allow"]
    assert why in decision["reason"]
    assert "[PROFILE=breadth|confirm|full|smoke] [REPEATS=1..20] [SEED=<n>] bash autoresearch.sh" in decision["reason"]


def test_timeout_seconds_is_the_ledgers_latest_for_that_profile(root):
    add_run(root, "s1", verdict=a_verdict("keep", pi_timeout_s=330))
    add_run(root, "s2", verdict=a_verdict("discard", pi_timeout_s=360))
    add_run(root, "b1", profile="breadth", verdict=a_verdict("keep", pi_timeout_s=1320))
    decision = gate_command.decide({"command": "PROFILE=smoke bash autoresearch.sh", "timeout_seconds": 5}, root)
    assert decision["input"]["timeout_seconds"] == 360 and "run s2" in decision["reason"]
    assert gate_command.decide({"command": "REPEATS=3 bash autoresearch.sh"}, root)["input"]["timeout_seconds"] == 3960


def test_timeout_seconds_without_a_ledger_value_is_computed(root, monkeypatch):
    # smoke: 2 x 120 s + 2 x 10 s grace + 60 s = 320, rounded up to 330
    assert gate_command.decide({"command": "PROFILE=smoke bash autoresearch.sh"}, root)["input"]["timeout_seconds"] == 330
    assert gate_command.pi_timeout("confirm", root, [])[0] == 4890  # 2 x 2400 + 20 + 60 = 4880 -> 4890
    # breadth before any probe on this machine
    assert gate_command.pi_timeout("breadth", root, []) == (1500, "breadth not yet sized on this machine (the probe runs first)")
    monkeypatch.setenv("AUTOGOLF_KILL_GRACE_SECONDS", "3")
    assert gate_command.pi_timeout("smoke", root, [])[0] == 330  # 240 + 6 + 60 = 306 -> 330
    monkeypatch.setenv("AUTOGOLF_TIMEOUT", "600")
    assert gate_command.pi_timeout("smoke", root, [])[0] == 1290  # 1200 + 6 + 60 = 1266 -> 1290


def test_a_sized_breadth_takes_its_timeout_from_the_machine_record(root):
    record = {"tokens": 36864, "probe": {"train_tok_s": 1000.0, "fixed_s": 20.0, "at": "2026-12-01"}}
    (root / "logs" / "machine.json").write_text(json.dumps(
        {"host": socket.gethostname(), "profiles": {}, "sizing": {"breadth": record}}))
    # unmeasured: the probe's prediction times breadth's probe_allowance (profiles.toml, 1.75):
    # 1.75 x (20 + 36.864) = 99.5 s; hard timeout 2 x that = 199.02 -> 200 s; pi 400 + 20 + 60 = 480
    assert profiles.load("breadth", environ={}).sizing.probe_allowance == 1.75
    assert gate_command.pi_timeout("breadth", root, [])[0] == 480
    record["measured"] = {"tokens": 36864, "trainer_s": 150.0, "at": "2026-12-01"}
    (root / "logs" / "machine.json").write_text(json.dumps(
        {"host": socket.gethostname(), "profiles": {}, "sizing": {"breadth": record}}))
    # measured: 2 x 150 = 300 s, whatever the allowance; pi 600 + 20 + 60 = 680 -> 690
    assert gate_command.pi_timeout("breadth", root, [])[0] == 690


# --------------------------------------------------------------------------- log_experiment

def test_keep_of_an_honest_verdict_keep_records_the_ledgers_metric(root):
    add_run(root, "r1", val_bpb=2.75)
    decision = gate_keep.decide({"status": "keep", "metric": 0.01, "metrics": {"total_bytes": 1, "made_up": 3},
                                 "commit": "abc", "description": "d"}, root)
    assert decision["allow"], decision
    assert decision["input"]["metric"] == 2.75
    assert decision["input"]["metrics"] == {"total_bytes": 1234, "made_up": 3}
    assert decision["input"]["description"] == "d"


@pytest.mark.parametrize("change, missing", [
    (dict(call="discard"), "its VERDICT is discard, not keep"),
    (dict(call="inconclusive"), "its VERDICT is inconclusive, not keep"),
    (dict(checks=False), "its checks failed"),
    (dict(checks=None), "its checks never ran"),
    (dict(status="integrity_failed"), "the run ended integrity_failed"),
    (dict(overrides={"ITERATIONS": "1"}), "it ran with overrides (ITERATIONS)"),
    (dict(sha="0" * 64), "benchmark/train_gpt_mlx.py changed since that run measured it"),
])
def test_keep_is_blocked_quoting_the_verdict_and_what_is_missing(root, change, missing):
    add_run(root, "r0")  # an earlier keep does not count: only the latest run is being logged
    row = add_run(root, "r1", **change)
    decision = gate_keep.decide({"status": "keep", "metric": 1.0}, root)
    assert not decision["allow"]
    assert missing in decision["reason"]
    assert f"`{verdict.format_line(row['verdict'])}`" in decision["reason"]
    assert "run r1" in decision["reason"]


def test_keep_is_blocked_with_no_run_and_while_a_run_is_going(root):
    assert "no finished run" in gate_keep.decide({"status": "keep", "metric": 1}, root)["reason"]
    add_run(root, "r1")
    ledger.append({"record": "start", "run_id": "r2", "status": "running", "profile": "smoke",
                   "harness": ledger.harness_identity()}, ledger.default_path(root))
    assert "r2 is still running" in gate_keep.decide({"status": "keep", "metric": 1}, root)["reason"]


@pytest.mark.parametrize("status", ["discard", "crash", "checks_failed"])
def test_discard_crash_and_checks_failed_are_always_allowed(root, status):
    add_run(root, "r1", call="discard", checks=False, val_bpb=3.25)
    decision = gate_keep.decide({"status": status, "metric": 0.5}, root)
    assert decision["allow"] and decision["input"]["metric"] == 3.25
    assert gate_keep.decide({"status": status, "metric": 0.5}, root / "nowhere")["allow"]


def test_a_failed_run_is_logged_without_its_rejected_number(root):
    add_run(root, "r1", call="discard", status="integrity_failed", checks=None, val_bpb=2.7353)
    decision = gate_keep.decide({"status": "crash", "metric": 2.7353, "metrics": {"total_bytes": 5}}, root)
    assert decision["allow"] and decision["input"]["metric"] == 0.0
    assert decision["input"]["metrics"] == {"total_bytes": 5}


def test_a_keep_of_repeats_records_their_median(root):
    summary = {"median": 2.5, "spread": 0.02, "ok": 3}
    add_run(root, "g-r3", val_bpb=2.6, repeats=summary, repeat={"group": "g", "index": 3, "of": 3})
    assert gate_keep.decide({"status": "keep", "metric": 9}, root)["input"]["metric"] == 2.5


def test_an_unknown_status_is_blocked(root):
    assert not gate_keep.decide({"status": "kept", "metric": 1}, root)["allow"]


# --------------------------------------------------------------------------- edit / write

@pytest.mark.parametrize("path", [TRAINER, "autoresearch.md", "./autoresearch.ideas.md", "@autoresearch.md"])
def test_the_files_in_scope_may_be_edited(root, path):
    assert gate_paths.decide("edit", {"path": path}, root)["allow"]
    assert gate_paths.decide("write", {"path": str(root / TRAINER)}, root)["allow"]


@pytest.mark.parametrize("path, why", [
    ("autoresearch.checks.sh", "`autoresearch.checks.sh` is not in scope"),
    ("autoresearch.sh", "not in scope"), (".auto/checks.sh", "not in scope"),
    ("autogolf/judge/verdict.py", "not in scope"), ("logs/runs.jsonl", "not in scope"),
    ("benchmark/../autoresearch.md", "contains `..`"), ("/etc/passwd", "outside the project"),
    ("~/x.py", "outside the project"), ("", "needs a path"),
])
def test_anything_else_is_blocked_with_the_files_in_scope(root, path, why):
    decision = gate_paths.decide("write", {"path": path}, root)
    assert not decision["allow"]
    assert why in decision["reason"]
    assert "benchmark/train_gpt_mlx.py, autoresearch.md, autoresearch.ideas.md" in decision["reason"]


def test_a_symbolic_link_out_of_scope_is_blocked(root):
    os.remove(root / "autoresearch.ideas.md")
    os.symlink(root / "autoresearch.checks.sh", root / "autoresearch.ideas.md")
    assert "symbolic link" in gate_paths.decide("edit", {"path": "autoresearch.ideas.md"}, root)["reason"]
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "train_gpt_mlx.py").write_text("")
    (root / TRAINER).unlink()
    (root / "benchmark").rmdir()
    os.symlink(root / "elsewhere", root / "benchmark")
    assert not gate_paths.decide("write", {"path": TRAINER}, root)["allow"]


# --------------------------------------------------------------------------- bash

@pytest.mark.parametrize("command", [
    "ls -la", "cat logs/runs.jsonl | tail -3", "grep -n lr benchmark/train_gpt_mlx.py > /tmp/x",
    "git status && git log --oneline -5 && git diff HEAD", "git log --grep=commit",
    "echo '# idea' >> benchmark/train_gpt_mlx.py", "sed -i 's/a/b/' benchmark/train_gpt_mlx.py",
    "sed -n 1,20p autogolf/run/orchestrator.py", "cp logs/runs.jsonl /tmp/ledger.jsonl",
    "find . -name '*.py' | head", "python3 -c 'print(1)'", "just status", "ls 2>&1 >/dev/null",
    ".venv/bin/python -m autogolf.agent.status", "cat autoresearch.md > /tmp/a",
    "python3 - <<'EOF'\nimport json\nprint(json.load(open('logs/machine.json')))\nEOF",
    # a whole trainer written through a here-document: its body is data, apostrophes and all
    "cat > benchmark/train_gpt_mlx.py <<'EOF'\n# don't read ./data/ here\nx = 1 > 0\nrm -rf logs\nEOF\n"
    "python3 -c 'import ast; ast.parse(open(\"benchmark/train_gpt_mlx.py\").read())'",
    "awk '{print $1}' logs/runs.jsonl | head",
])
def test_reading_and_in_scope_writes_are_allowed(root, command):
    decision = gate_shell.decide({"command": command}, root)
    assert decision["allow"], decision


@pytest.mark.parametrize("command, why", [
    ("echo '{}' >> logs/runs.jsonl", "a redirection into logs/runs.jsonl"),
    ("echo x > ./autoresearch.checks.sh", "a redirection into autoresearch.checks.sh"),
    ("cd logs && echo x > runs.jsonl", "a redirection into logs/runs.jsonl"),
    ("echo x &> .auto/checks.sh", "a redirection into .auto/checks.sh"),
    ("echo x | tee -a logs/protected.json", "`tee` writes logs/protected.json"),
    ("rm -rf data/datasets", "`rm` writes data/datasets"), ("rm -rf .", "`rm` writes the whole project"),
    ("mv logs /tmp/old", "`mv` writes logs"), ("cp /tmp/evil.py autogolf/judge/verdict.py", "`cp` writes into autogolf/judge/verdict.py"),
    ("ln -sf /tmp/x .venv/bin/python", "`ln` writes into .venv/bin/python"),
    ("chmod +x scripts/setup.sh", "`chmod` writes scripts/setup.sh"),
    ("sed -i 's/exit 1/exit 0/' autoresearch.checks.sh", "`sed` writes autoresearch.checks.sh"),
    ("perl -pi -e 's/a/b/' autogolf/paths.py", "`perl -i` writes autogolf/paths.py"),
    ("truncate -s 0 logs/runs.jsonl", "`truncate` writes logs/runs.jsonl"),
    ("dd if=/dev/zero of=.git/index", "`dd of=` into .git/index"),
    ("find logs -name '*.json' -delete", "`find ... -delete/-exec` over logs"),
    ("python3 -c \"open('logs/runs.jsonl','a').write('{}')\"", "an inline python3 script"),
    ("python3 -c \"import pathlib; pathlib.Path('logs/x').write_text('')\"", "an inline python3 script"),
    ("node -e \"require('fs').writeFileSync('.auto/checks.sh', '')\"", "an inline node script"),
    ("python3 - <<'EOF'\nopen('autoresearch.checks.sh', 'w').write('exit 0')\nEOF", "an inline python3 script"),
    ("bash -c 'echo x > logs/runs.jsonl'", "a redirection into logs/runs.jsonl"),
    ("eval 'rm -rf logs'", "`rm` writes logs"),
    ("echo $(rm -rf logs)", "`rm` writes logs"), ("echo `rm -rf .git`", "`rm` writes .git"),
    ("awk '{print > \"logs/x\"}' /tmp/in", "an inline awk script"),
    ("git commit -am 'sneak'", "`git commit` changes the repository"),
    ("git checkout -- autoresearch.checks.sh", "`git checkout`"), ("git reset --hard HEAD~1", "`git reset`"),
    ("git clean -fdx", "`git clean`"), ("git -C . stash", "`git stash`"),
    ("PROFILE=smoke bash autoresearch.sh", "the harness run by hand"),
    (".venv/bin/python -m autogolf.run", "the harness run by hand"),
    ("just protect", "`just protect` runs the harness"), ("just breadth", "`just breadth`"),
    (".venv/bin/pip install requests", "changes the Python environment"),
    ("uv sync", "changes the Python environment"),
    ("bash scripts/setup.sh", "runs the harness script scripts/setup.sh"),
    ("echo x > $OUT", "a redirection into $OUT"),
    ("echo 'x >> logs/runs.jsonl", "cannot parse"),
    ("cat > /tmp/a <<EOF\nhello\nEOF\necho x > logs/runs.jsonl", "a redirection into logs/runs.jsonl"),
    ("cat <<-EOF > autoresearch.checks.sh\n\texit 0\n\tEOF", "a redirection into autoresearch.checks.sh"),
])
def test_writes_into_protected_places_are_blocked(root, command, why):
    decision = gate_shell.decide({"command": command}, root)
    assert not decision["allow"], command
    assert why in decision["reason"], decision["reason"]


def test_a_link_into_a_protected_place_is_followed(root):
    os.symlink(root / "logs", root / "notes")
    assert "logs" in gate_shell.decide({"command": "echo x > notes/runs.jsonl"}, root)["reason"]


# --------------------------------------------------------------------------- bash: the jail

JAILS = [pytest.param(m, marks=pytest.mark.skipif(bool(sandbox.problem(m)), reason=f"{m}: {sandbox.problem(m)}"))
         for m in ("bwrap", "landlock")]
DENIED = {"bwrap": "Read-only file system", "landlock": "Permission denied"}
# writes the pattern check cannot see: a path computed at run time, a script written to the
# temp folder and run, a copy through a variable
ESCAPES = ("python3 -c \"open('lo'+'gs/ru'+'ns.jsonl','a').write('x')\"",
           "f=$(mktemp --suffix .py) && printf '%s' \"open('auto'+'golf/x.py','w').write('1')\" | tee $f "
           ">/dev/null && python3 $f",
           "d=.ve; cp benchmark/train_gpt_mlx.py ${d}nv/x")


def jailed(root, command: str) -> subprocess.CompletedProcess:
    """The command as the gate rewrites it, run for real the way pi's bash tool runs it."""
    decision = gate.decide("bash", {"command": command}, root)
    assert decision["allow"], decision
    return subprocess.run(decision["input"]["command"], shell=True, executable="/bin/bash", cwd=root,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mechanism", JAILS)
def test_an_allowed_command_runs_in_the_jail(root, mechanism, monkeypatch):
    monkeypatch.setenv("AUTOGOLF_SANDBOX", mechanism)
    decision = gate_shell.decide({"command": "ls logs"}, root)
    assert decision["confined"] == mechanism and f"confined ({mechanism})" in decision["reason"]
    words = shlex.split(decision["input"]["command"])
    assert words[1:4] == ["-I", "-m", "autogolf.agent.shell_jail"] and words[-2:] == ["--", "ls logs"]


def test_without_a_mechanism_the_command_runs_unwrapped_and_says_so(root, monkeypatch):
    monkeypatch.setenv("AUTOGOLF_SANDBOX", "off")
    decision = gate_shell.decide({"command": "ls logs"}, root)
    assert decision["allow"] and "input" not in decision
    assert decision["reason"].endswith("unconfined: pattern check only")


@pytest.mark.parametrize("mechanism", JAILS)
def test_the_jail_stops_writes_the_pattern_check_misses(root, mechanism, monkeypatch):
    monkeypatch.setenv("AUTOGOLF_SANDBOX", mechanism)
    for name in ("autogolf", ".venv"):
        (root / name).mkdir()
    (root / "logs" / "runs.jsonl").write_text("{}\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first", "--allow-empty"],
                   cwd=root, check=True)
    trainer = (root / TRAINER).read_text()
    done = jailed(root, "; ".join(ESCAPES))
    assert done.stderr.count(DENIED[mechanism]) == 3, done.stderr
    assert (root / "logs" / "runs.jsonl").read_text() == "{}\n"
    assert not (root / "autogolf" / "x.py").exists() and not (root / ".venv" / "x").exists()
    # reading works, and so does a write into a file in scope; sed -i (a rename) does not
    done = jailed(root, "echo '# note' >> benchmark/train_gpt_mlx.py && cat logs/runs.jsonl && git log --format=%s "
                        "&& ls logs && sed -i 's/the/a/' benchmark/train_gpt_mlx.py")
    assert done.stdout == "{}\nfirst\nruns.jsonl\n", done.stdout + done.stderr
    assert done.returncode != 0 and "sed" in done.stderr
    assert (root / TRAINER).read_text() == trainer + "# note\n"


def test_the_macos_profile_denies_every_write_but_the_files_in_scope_and_its_tmp(root, tmp_path_factory):
    # Seatbelt runs only on macOS: here its text is checked, not run
    from autogolf.agent import shell_jail
    tmp = tmp_path_factory.mktemp("private")
    lines = shell_jail.seatbelt_profile(root, tmp).splitlines()
    assert lines[:3] == ["(version 1)", "(allow default)", "(deny file-write*)"]
    allowed = lines[3]  # after the deny: in SBPL the last matching rule wins
    assert allowed.startswith("(allow file-write* ") and len(lines) == 4
    for name in (TRAINER, "autoresearch.md", "autoresearch.ideas.md"):
        assert f'(literal "{os.path.realpath(root / name)}")' in allowed
    assert f'(subpath "{tmp}")' in allowed and '(literal "/dev/null")' in allowed
    assert "logs" not in allowed and f'"{os.path.realpath(root)}"' not in allowed


# --------------------------------------------------------------------------- the gate itself

def test_the_gate_journals_every_decision_and_counts_blocks_by_kind(root):
    add_run(root, "r1", call="discard")
    calls = [("run_experiment", {"command": "bash autoresearch.sh && echo hi"}),
             ("run_experiment", {"command": "PROFILE=smoke bash autoresearch.sh"}),
             ("log_experiment", {"status": "keep", "metric": 1}),
             ("log_experiment", {"status": "discard", "metric": 1}),
             ("edit", {"path": "autoresearch.checks.sh"}), ("bash", {"command": "rm logs/runs.jsonl"}),
             ("bash", {"command": "ls"}), ("read", {"path": "logs/runs.jsonl"})]
    for tool, tool_input in calls:
        decision = gate.decide(tool, tool_input, root)
        if decision["kind"] != "other":
            gate.record(root, tool, decision, tool_input)
    journal = gate.read_journal(root)
    assert [(r["tool"], r["allowed"]) for r in journal] == [
        ("run_experiment", False), ("run_experiment", True), ("log_experiment", False),
        ("log_experiment", True), ("edit", False), ("bash", False), ("bash", True)]
    assert gate.block_counts(root) == {"command": 1, "keep": 1, "scope": 1, "shell": 1}
    assert all(r["reason"] and r["at"] for r in journal)
    # the allowed bash call says how it ran: in this machine's jail, or unconfined
    assert journal[-1]["confined"] == sandbox.mechanism() and "confined" not in journal[-2]


def gate_cli(root, tool: str, tool_input: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "autogolf.agent.gate", tool, "--root", str(root)],
                         input=json.dumps(tool_input), capture_output=True, text=True, cwd=REPO, timeout=60)
    return json.loads(out.stdout)


def test_a_run_is_logged_once_a_second_keep_is_refused(root):
    add_run(root, "r1", val_bpb=2.75)
    first = gate_cli(root, "log_experiment", {"status": "keep", "metric": 2.75})
    assert first["allow"] and first["run_id"] == "r1"
    again = gate_cli(root, "log_experiment", {"status": "keep", "metric": 0.01})
    assert not again["allow"]
    assert "keep refused: run r1 was already logged (keep at " in again["reason"]
    # discarding it is harmless and stays allowed; a new run can be kept
    assert gate_cli(root, "log_experiment", {"status": "discard", "metric": 1})["allow"]
    add_run(root, "r2", val_bpb=2.70)
    assert gate_cli(root, "log_experiment", {"status": "keep", "metric": 2.70})["allow"]
    # a discard of r3 logs it too: a keep after it is refused
    add_run(root, "r3", val_bpb=2.60)
    assert gate_cli(root, "log_experiment", {"status": "discard", "metric": 2.60})["allow"]
    assert "run r3 was already logged (discard at" in gate_cli(root, "log_experiment", {"status": "keep"})["reason"]
    assert [r.get("run_id") for r in gate.read_journal(root)] == ["r1", "r1", "r1", "r2", "r3", "r3"]


def test_the_cli_fails_closed_on_an_unreadable_input(root):
    out = subprocess.run([sys.executable, "-m", "autogolf.agent.gate", "bash", "--root", str(root)],
                         input="not json", capture_output=True, text=True, cwd=REPO, timeout=60)
    decision = json.loads(out.stdout)
    assert decision["allow"] is False and "could not decide" in decision["reason"]
    assert gate.block_counts(root) == {"shell": 1}


def test_status_prints_the_blocks_by_kind(root):
    from autogolf.agent import status

    assert status.guard_lines(root) == ["guard    no decisions yet (logs/agent/guard.jsonl)"]
    for tool, tool_input in (("bash", {"command": "rm -rf logs"}), ("bash", {"command": "rm -rf data"}),
                             ("write", {"path": "autoresearch.sh"}), ("bash", {"command": "ls"})):
        gate.record(root, tool, gate.decide(tool, tool_input, root), tool_input)
    lines = status.guard_lines(root)
    assert lines[0] == "guard    4 decisions, 3 blocked by kind: command 0, keep 0, scope 1, shell 2"
    assert "write: write refused: `autoresearch.sh` is not in scope" in lines[1]


def test_pi_is_launched_with_the_guard_after_pi_autoresearch(monkeypatch):
    from autogolf.agent import launch

    monkeypatch.delenv("AUTOGOLF_AGENT_CMD", raising=False)
    assert launch.guard_problems() == []  # the guard is there and its gate answers
    cmd, _ = launch.agent_command(resume=False)
    extensions = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-e"]
    assert extensions == [str(launch.EXTENSION_DIR), str(REPO / "agent" / "guard" / "index.ts")]
