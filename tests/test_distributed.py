"""Data-parallel runs through mlx.launch (ring backend, loopback): upstream's single-process
trainer refused, `NPROC=2` and `HOSTS=<hostfile>` through `bash autoresearch.sh` with a
trainer edited to join the group, and the faults: a rank killed, a rank frozen in a
collective, bad settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from autoresearch_helpers import summary_line, ledger_rows, metric_lines, run_bench
from autogolf.run import distributed
from autogolf.run.runlock import lock_is_free
from conftest import REPO

PYTHON = str(REPO / ".venv" / "bin" / "python")
LOOPBACK_HOSTFILE = [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]


@pytest.fixture
def env(env):
    """conftest's smoke environment, with two steps: enough to compare the ranks."""
    return dict(env, ITERATIONS="2")


# --------------------------------------------------------------------------- settings

def test_bad_nproc_and_hosts_are_one_line_errors(tmp_path):
    assert distributed.plan({}) is None and distributed.plan({"NPROC": "1"}) is None
    assert distributed.plan({"NPROC": "3"})["world_size"] == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(distributed.LaunchError, match=f"NPROC='{bad}' is not a positive"):
            distributed.plan({"NPROC": bad})
    with pytest.raises(distributed.LaunchError, match="cannot read the hostfile"):
        distributed.plan({"HOSTS": str(tmp_path / "missing.json")})
    (tmp_path / "bad.json").write_text("127.0.0.1\n127.0.0.1\n")
    with pytest.raises(distributed.LaunchError, match="not JSON"):
        distributed.plan({"HOSTS": str(tmp_path / "bad.json")})
    (tmp_path / "noips.json").write_text(json.dumps([{"ssh": "mac1.local"}]))
    with pytest.raises(distributed.LaunchError, match="entry 0 needs \"ssh\" .* and \"ips\""):
        distributed.plan({"HOSTS": str(tmp_path / "noips.json")})
    (tmp_path / "ok.json").write_text(json.dumps({"hosts": LOOPBACK_HOSTFILE}))
    with pytest.raises(distributed.LaunchError, match="NPROC or HOSTS, not both"):
        distributed.plan({"HOSTS": str(tmp_path / "ok.json"), "NPROC": "2"})
    assert distributed.plan({"HOSTS": str(tmp_path / "ok.json")})["world_size"] == 2


def test_ranks_over_ssh_get_the_settings_from_mlx_launch(tmp_path):
    """Ranks on other hosts do not inherit the harness's environment: every trainer setting
    travels as mlx.launch --env, and the hostfile reaches mlx.launch as it is."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": LOOPBACK_HOSTFILE}))
    launch = distributed.plan({"HOSTS": str(hostfile)})
    cmd = distributed.trainer_command(PYTHON, REPO / "benchmark" / "train_gpt_mlx.py", launch, REPO,
                                      {"ITERATIONS": "36", "RUN_ID": "a b"})
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile.resolve())
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--env"] == ["ITERATIONS=36", "RUN_ID=a b"]
    assert cmd[cmd.index("--") + 1:] == [PYTHON, "-m", "autogolf.run.distributed", "rank",
                                         str(REPO / "benchmark" / "train_gpt_mlx.py")]


def test_a_failed_rank_is_read_back_from_mlx_launch(tmp_path):
    """mlx.launch ends the other ranks when one fails, but (MLX 0.32) exits 0 itself: the
    harness must take the failing rank's code from its warning lines."""
    script = tmp_path / "rank.py"
    script.write_text("import os, sys, time\n"
                      "rank = int(os.environ['MLX_RANK'])\n"
                      "if rank == 1:\n    sys.exit(3)\n"
                      "time.sleep(120)\n")
    launch = distributed.plan({"NPROC": "2"})
    cmd = distributed.trainer_command(PYTHON, script, launch, REPO)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
    code, note = distributed.rank_returncode(out.returncode, out.stdout + out.stderr)
    assert code == (out.returncode or 3), out.stderr
    assert note == "rank 1 exited with code 3; mlx.launch ended the other ranks"


# --------------------------------------------------------------------------- the trainer

# Upstream's trainer is one process. These edits make a copy of it a (minimal) data-parallel
# trainer, as an agent or a record would: every rank joins the group and meets the others in
# one collective per step (so a frozen rank blocks the rest, as in real data parallelism);
# ranks other than 0 write their log and artifact to a folder of their own.
DP_EDITS = [
    ("    args = Hyperparameters()\n    out_dir = Path(args.out_dir)\n",
     "    args = Hyperparameters()\n"
     "    world = mx.distributed.init()\n"
     "    if world.rank() > 0:\n"
     "        args.out_dir = str(Path(args.out_dir) / f\"rank{world.rank()}\")\n"
     "    out_dir = Path(args.out_dir)\n"),
    ("        opt.step(model, grads, step=step, lr_mul=lr_mul)\n",
     "        opt.step(model, grads, step=step, lr_mul=lr_mul)\n"
     "        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world))\n"),
]


def make_dp_trainer(project: Path) -> None:
    import subprocess as sp

    trainer = project / "benchmark" / "train_gpt_mlx.py"
    text = trainer.read_text(encoding="utf-8")
    for old, new in DP_EDITS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    trainer.write_text(text, encoding="utf-8")
    sp.run(["git", "commit", "-qam", "data-parallel trainer"], cwd=project, check=True)


def test_upstream_single_process_trainer_is_refused(project, env):
    """NPROC=2 with upstream's trainer would train two separate models: a config error that
    says so, before anything runs."""
    out = run_bench(project, dict(env, NPROC="2"))
    assert out.returncode == 2, out.stdout[-2000:]
    summary = summary_line(out.stdout)
    assert summary.startswith("autoresearch: config_error") and "single-process trainer" in summary
    assert ledger_rows(project)[-1]["status"] == "config_error"


# --------------------------------------------------------------------------- through the harness

def _assert_ok_two_ranks(project: Path, out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    lines = out.stdout.rstrip("\n").splitlines()
    assert summary_line(out.stdout).startswith("autoresearch: ok"), lines[-2:]
    assert "val_bpb" in metric_lines(out.stdout) and lines[-3].startswith("METRIC")
    row = ledger_rows(project)[-1]
    assert row["status"] == "ok" and row["distributed"]["world_size"] == 2
    assert (project / row["log_path"]).is_file()  # rank 0's; the others write under rank<N>/
    return row


def test_nproc_2_smoke_run(project, env):
    make_dp_trainer(project)
    row = _assert_ok_two_ranks(project, run_bench(project, dict(env, NPROC="2")))
    assert row["settings"]["NPROC"] == "2" and row["distributed"]["hosts"] == ["127.0.0.1"] * 2
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


def test_hostfile_with_two_loopback_entries(project, env, tmp_path):
    make_dp_trainer(project)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(LOOPBACK_HOSTFILE))
    row = _assert_ok_two_ranks(project, run_bench(project, dict(env, HOSTS=str(hostfile))))
    assert row["distributed"]["hostfile"] == str(hostfile.resolve())


def test_bad_hostfile_is_a_config_error(project, env, tmp_path):
    out = run_bench(project, dict(env, HOSTS=str(tmp_path / "nope.json")))
    assert out.returncode == 2
    assert summary_line(out.stdout).startswith("autoresearch: config_error")
    assert "cannot read the hostfile" in summary_line(out.stdout)
    assert ledger_rows(project)[-1]["status"] == "config_error"


def _ranks(project: Path) -> dict[int, psutil.Process]:
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd[-1:] and cmd[-1].startswith(str(project)) and cmd[-1].endswith("train_gpt_mlx.py"):
            try:
                found[int(p.environ()["MLX_RANK"])] = p
            except (psutil.Error, KeyError):
                pass
    return found


def _start_long_run(project: Path, env: dict, **extra) -> subprocess.Popen:
    make_dp_trainer(project)
    return subprocess.Popen(["bash", "autoresearch.sh"], cwd=project, text=True, start_new_session=True,
                            env=dict(env, NPROC="2", ITERATIONS="100000", **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _when_stepping(project: Path, proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """The two ranks, once rank 0 has logged its second step (both are then in the loop)."""
    from autoresearch_helpers import wait_for

    def ready():
        logs = list((project / "logs").glob("*.console.txt"))
        stepping = any(re.search(r"^step:2/", p.read_text(errors="replace"), re.M) for p in logs)
        ranks = _ranks(project) if stepping else {}
        return ranks if len(ranks) == 2 else None
    try:
        return wait_for(ready, 120, "two ranks at their second step")
    except AssertionError:
        os.killpg(proc.pid, signal.SIGTERM)
        raise


def test_one_rank_killed_ends_the_run_clearly(project, env):
    proc = _start_long_run(project, env)
    ranks = _when_stepping(project, proc)
    ranks[1].send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=90)  # no hang: the other rank is ended too
    summary = summary_line(stdout)
    assert proc.returncode == 137, summary
    assert summary.startswith("autoresearch: killed") and "rank 1 was killed by SIGKILL" in summary
    assert "METRIC val_bpb" not in stdout
    assert [r["status"] for r in ledger_rows(project)] == ["killed"]
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))
    psutil.wait_procs(list(ranks.values()), timeout=10)
    assert not _ranks(project)


def test_a_frozen_rank_ends_as_a_clear_timeout(project, env):
    """A rank that stops answering (as in MLX issue #4475's all_sum deadlock) leaves the
    other waiting in a collective forever; the hard timeout ends every rank."""
    proc = _start_long_run(project, env, AUTOGOLF_TIMEOUT="45")
    ranks = _when_stepping(project, proc)
    ranks[1].send_signal(signal.SIGSTOP)
    stdout, _ = proc.communicate(timeout=150)
    summary = summary_line(stdout)
    assert proc.returncode == 124, summary
    assert summary.startswith("autoresearch: timeout") and "MLX issue #4475" in summary
    row = ledger_rows(project)[-1]
    assert row["status"] == "timeout" and row["distributed"]["world_size"] == 2
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))
    psutil.wait_procs(list(ranks.values()), timeout=10)
    assert not _ranks(project)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_ranks_die_with_the_orchestrator(project, env):
    proc = _start_long_run(project, env)
    ranks = _when_stepping(project, proc)
    os.kill(proc.pid, signal.SIGKILL)  # bash exec'd into the Python orchestrator
    proc.communicate(timeout=30)
    gone, alive = psutil.wait_procs(list(ranks.values()), timeout=20)
    assert not alive, f"ranks outlived their run: {alive}"
