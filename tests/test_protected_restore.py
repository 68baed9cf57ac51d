"""Protected files are restored, not just reported (issue 16): under the loop (AUTOGOLF_LOOP=1,
which agent/launch.py sets for every agent) a run whose harness files differ from HEAD
restores them before it starts, re-executes on the restored code, records what it restored
and says so on its summary line; outside the loop the run refuses with the one command that
restores them. And `just autoresearch`'s dirty-tree message is checked against what
pi-autoresearch 1.6.0's discard really does, run with git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from autoresearch_helpers import git, ledger_rows, run_bench, summary_line
from autogolf.agent import launch
from autogolf.agent import loop as agent_loop  # "loop" names the tmux helper of the tests

EDITS = {  # a harness file appended to, one deleted, one added, and a harness module changed
    "autoresearch.checks.sh": "append",
    "README.md": "delete",
    "scripts/helper.py": "create",
    "autogolf/judge/verdict.py": "tamper",
}


def edit_harness(project: Path) -> None:
    for rel, how in EDITS.items():
        path = project / rel
        if how == "append":
            path.write_text(path.read_text() + "\nexit 0  # the checks always pass\n")
        elif how == "delete":
            path.unlink()
        elif how == "create":
            path.write_text("print('new')\n")
        else:
            # an edited module the orchestrator has already imported when it restores: only a
            # re-execution on the restored code keeps it out of this run's VERDICT line
            text = path.read_text()
            assert 'f"VERDICT {verdict[\'call\']} ' in text
            path.write_text(text.replace('f"VERDICT {verdict[\'call\']} ', 'f"VERDICT keep TAMPERED ', 1))


def harness_status(project: Path) -> str:
    return git(project, "status", "--porcelain", "--", "autoresearch.checks.sh", "README.md", "scripts", "autogolf")


def test_under_the_loop_the_run_restores_the_harness_and_says_so(project, env):
    edit_harness(project)
    (project / "benchmark" / "train_gpt_mlx.py").write_text(
        (project / "benchmark" / "train_gpt_mlx.py").read_text() + "\n# the agent's experiment\n")
    out = run_bench(project, dict(env, AUTOGOLF_LOOP="1", AUTOGOLF_RESTORED=""))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert harness_status(project) == ""  # back to HEAD: changed, deleted and added files
    assert not (project / "scripts" / "helper.py").exists()
    assert "TAMPERED" not in out.stdout  # the run itself ran on the restored code
    assert "restored 4 protected file(s) from HEAD before the run" in out.stdout
    row = ledger_rows(project)[-1]
    assert row["restored_from_head"] == {"files": ["README.md", "autogolf/judge/verdict.py", "autoresearch.checks.sh"],
                                         "removed": ["scripts/helper.py"]}
    summary = summary_line(out.stdout)
    assert summary.startswith("autoresearch: ok ") and \
        " restored_from_head=README.md,autogolf/judge/verdict.py,autoresearch.checks.sh,scripts/helper.py " in summary
    # the trainer is the agent's: it stays as the agent left it
    assert "the agent's experiment" in (project / "benchmark" / "train_gpt_mlx.py").read_text()
    # a clean harness: nothing restored, and a record in the environment from elsewhere is ignored
    stale = f"1 {json.dumps({'files': ['README.md'], 'removed': []})}"
    out = run_bench(project, dict(env, AUTOGOLF_LOOP="1", AUTOGOLF_RESTORED=stale))
    assert out.returncode == 0 and "restored_from_head" not in ledger_rows(project)[-1]
    assert "restored" not in summary_line(out.stdout)
    print(f"\n{summary}")


def test_outside_the_loop_the_run_refuses_with_the_command_that_restores(project, env):
    edit_harness(project)
    out = run_bench(project, {k: v for k, v in env.items() if k != "AUTOGOLF_LOOP"})
    assert out.returncode == 2, out.stdout[-3000:]
    refusal = next(l for l in out.stdout.splitlines() if l.startswith("autoresearch: config_error:"))
    assert "harness files differ from HEAD (README.md, autogolf/judge/verdict.py, autoresearch.checks.sh, " \
           "scripts/helper.py)" in refusal
    # the VERDICT line is last, as ever; it comes from the code that is there (here the edited
    # verdict.py): a refusing run cannot vouch for its own code, which is why under the loop the
    # run re-executes on the restored code before it does anything else
    assert out.stdout.rstrip().splitlines()[-1].startswith("VERDICT ")
    assert not (project / "logs" / "runs.jsonl").exists() or not ledger_rows(project)  # no run started
    command = refusal.split("Restore them with: ", 1)[1].split("   (", 1)[0]
    assert command.startswith("git checkout HEAD -- README.md autogolf/judge/verdict.py autoresearch.checks.sh")
    subprocess.run(["bash", "-c", command], cwd=project, check=True)  # the one command the user is given
    assert harness_status(project) == ""
    print(f"\n{refusal}")


def test_the_loop_sets_its_marker_for_every_agent(monkeypatch):
    monkeypatch.delenv("AUTOGOLF_LOOP", raising=False)
    monkeypatch.setenv("AUTOGOLF_AGENT_CMD", "true")
    assert launch.agent_command(resume=False)[1]["AUTOGOLF_LOOP"] == "1"  # another agent
    monkeypatch.delenv("AUTOGOLF_AGENT_CMD")
    assert launch.agent_command(resume=False)[1]["AUTOGOLF_LOOP"] == "1"  # pi


# --------------------------------------------------------------------------- the dirty-tree message

# pi-autoresearch 1.6.0's discard, verbatim (extensions/pi-autoresearch/index.ts, AUTO_DIR=.auto)
DISCARD = ("git checkout -- . ':(exclude,glob)**/.auto' ':(exclude,glob)**/.auto/**' "
           "':(exclude,glob)**/autoresearch.*' ':(exclude,glob)**/autoresearch.*/**' && "
           "git clean -fd -e '.auto' -e '**/.auto/**' -e 'autoresearch.*' -e '**/autoresearch.*/**'")


def test_the_discard_command_is_pi_autoresearchs():
    source = next((launch.EXTENSION_DIR / "extensions").rglob("index.ts"), None) \
        if launch.EXTENSION_DIR.is_dir() else None
    if source is None:
        import pytest
        pytest.skip("pi-autoresearch is not installed (just setup-agent)")
    text = source.read_text()
    assert "git checkout -- . ':(exclude,glob)**/${AUTO_DIR}' ':(exclude,glob)**/${AUTO_DIR}/**' " \
           "':(exclude,glob)**/autoresearch.*' ':(exclude,glob)**/autoresearch.*/**'" in text
    assert "git clean -fd -e '${AUTO_DIR}' -e '**/${AUTO_DIR}/**' -e 'autoresearch.*' -e '**/autoresearch.*/**'" in text


def _entries(repo: Path) -> list[tuple[str, str]]:
    out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                         check=True).stdout
    return [(line[:2], line[3:]) for line in out.splitlines()]


def test_the_dirty_tree_message_is_true_for_every_file_it_names(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("benchmark/train_gpt_mlx.py", "autoresearch.md", "autoresearch.checks.sh", "notes.md", "staged.txt"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("committed\n")
    for args in (("init", "-q"), ("config", "user.email", "t@t"), ("config", "user.name", "t"),
                 ("add", "-A"), ("commit", "-qm", "base")):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    for rel in ("benchmark/train_gpt_mlx.py", "autoresearch.md", "autoresearch.checks.sh", "staged.txt"):
        (repo / rel).write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    subprocess.run(["git", "-C", str(repo), "add", "staged.txt"], check=True)
    message = agent_loop.dirty_tree_message(_entries(repo), other_agent=False)
    assert "the first benchmark would restore the harness files autoresearch.checks.sh from HEAD" in message
    assert "first keep would commit benchmark/train_gpt_mlx.py, new.txt and its first discard would revert them" in message
    assert "commit staged.txt, and no discard would undo what is staged there" in message
    assert "commit autoresearch.md and nothing would revert them" in message
    subprocess.run(["bash", "-c", DISCARD], cwd=repo, check=True)  # what a discard does
    assert (repo / "benchmark/train_gpt_mlx.py").read_text() == "committed\n" and not (repo / "new.txt").exists()
    assert (repo / "staged.txt").read_text() == "changed\n"  # staged: not undone
    assert (repo / "autoresearch.md").read_text() == "changed\n"  # spared
    assert (repo / "autoresearch.checks.sh").read_text() == "changed\n"  # spared: only the benchmark restores it
    print(f"\n{message}")
