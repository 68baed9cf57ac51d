"""Data-parallel runs through mlx.launch (ring backend, loopback): the harness hook's rank
split and shared clock on two real ranks, upstream's trainer with NPROC=2 against one process
through `bash autoresearch.sh` (losses, val_bpb), under a wall-clock cap, through a hostfile, a
trainer without the hook refused, and the faults: a rank killed, a rank frozen in a
collective, bad settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from autoresearch_helpers import summary_line, ledger_rows, metric_lines, run_bench
from autogolf.run import distributed
from autogolf.run.runlock import lock_is_free
from conftest import REPO

PYTHON = str(REPO / ".venv" / "bin" / "python")
TRAIN_LOSS = re.compile(r"^step:(\d+)/\d+ train_loss:(\d+\.\d+)", re.M)
FINAL_EXACT = re.compile(r"^final_int8_zlib_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)$", re.M)
HOOK_START, HOOK_END = "# --- autogolf: harness hook", "# --- end autogolf"
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


# --------------------------------------------------------------------------- the hook, unit by unit

# Each rank of this script goes through the harness hook as the trainer does, then records
# what the hook made of it: the rank split of a model-bound compiled function against the
# whole batch, a function that is not a mean over rows, a batch with fewer rows than ranks,
# and the clock read after the ranks slept for different times.
RANK_SCRIPT = """
import json, os, sys, time
import numpy as np
import mlx.core as mx, mlx.nn as nn
from mlx.utils import tree_flatten
from autogolf.run import cpu_speed, data_parallel
cpu_speed.install(mx.bfloat16, __name__)
world = data_parallel._STATE["world"]  # the group the hook joined (a script calling init() itself is left alone)
rank = world.rank()
print(f"hello from rank {rank}", flush=True)
mx.random.seed(0)
model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))
def make(reduction):
    loss = lambda x, y: nn.losses.cross_entropy(model(x), y, reduction=reduction)
    return (mx.compile(nn.value_and_grad(model, loss), inputs=model.state, outputs=model.state),
            cpu_speed._ORIGINAL["compile"](nn.value_and_grad(model, loss), inputs=model.state, outputs=model.state))
rng = np.random.default_rng(3)
x, y = (mx.array(rng.integers(0, 50, (7, 12)).astype(np.int32)) for _ in range(2))
def compare(split, whole, x, y):
    (a, ga), (b, gb) = split(x, y), whole(x, y)
    diff = max(float(mx.max(mx.abs(p - q))) for (_, p), (_, q) in zip(tree_flatten(ga), tree_flatten(gb)))
    return {"loss": float(a), "whole_loss": float(b), "grad_diff": diff,
            "grads": [np.array(g).tolist() for _, g in tree_flatten(ga)]}
mean_split, mean_whole = make("mean")
sum_split, sum_whole = make("sum")
out = {"world": world.size(), "local_ranks": data_parallel.local_ranks(), "out_dir": os.environ["OUT_DIR"],
       "mean": [compare(mean_split, mean_whole, x, y) for _ in range(2)], "mean_checked": mean_split.checked,
       "sum": compare(sum_split, sum_whole, x, y), "sum_checked": sum_split.checked,
       "one_row": compare(mean_split, mean_whole, x[:1], y[:1]),
       "streams": type(mean_split.fn).__name__}
time.sleep(0.5 * rank)
out["clock"] = [time.perf_counter() for _ in range(3)]
with open(os.path.join(os.environ["RESULTS"], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
"""


def test_the_hook_splits_rows_over_ranks_and_shares_rank0s_clock(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, RESULTS=str(tmp_path), CPU_STREAMS="2", RUN_ID="unit", TMPDIR=str(tmp_path),
               OUT_DIR=str(tmp_path / "out"), PYTHONUNBUFFERED="1")
    env.pop("MAX_WALLCLOCK_SECONDS", None)  # unset: the trainer's default cap, so one clock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid in (("killed", dead.stdout.strip()), ("running", str(os.getpid()))):
        folder = tmp_path / f"autogolf-{name}-rank1-x"  # what a rank left, or is using now
        folder.mkdir()
        (folder / "owner.pid").write_text(pid)
        (folder / "copy_mlx_model.npz").write_bytes(b"weights")
    cmd = distributed.trainer_command(PYTHON, script, distributed.plan({"NPROC": "2"}), REPO)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    code, note = distributed.rank_returncode(out.returncode, out.stderr)
    assert code == 0, f"{note}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    # one console line per line: rank 1's stdout went to its own folder, removed at its clean exit
    assert "hello from rank 0" in out.stdout and "hello from rank 1" not in out.stdout
    assert out.stdout.count("data_parallel: world_size:2 ranks_on_this_host:2") == 1
    assert "clock:rank0" in out.stdout
    assert r0["out_dir"] == str(tmp_path / "out")
    assert Path(r1["out_dir"]).parent == tmp_path and not Path(r1["out_dir"]).exists()
    assert not (tmp_path / "autogolf-killed-rank1-x").exists()  # a dead rank's folder is swept
    assert (tmp_path / "autogolf-running-rank1-x" / "copy_mlx_model.npz").is_file()
    assert r0["world"] == r1["world"] == 2 and r0["local_ranks"] == r1["local_ranks"] == 2
    assert r0["streams"] == r1["streams"] == "RowSplit"  # the stream split inside the rank split
    for r in (r0, r1):
        assert r["mean_checked"] is True and r["sum_checked"] is False
        for res in (*r["mean"], r["sum"], r["one_row"]):  # 7 rows: shares 3/7 and 4/7
            assert abs(res["loss"] - res["whole_loss"]) <= 1e-5 * abs(res["whole_loss"])
            assert res["grad_diff"] <= 1e-5
    assert r0["mean"][1]["grads"] == r1["mean"][1]["grads"]  # the same sum on every rank, bit for bit
    assert r0["clock"] == r1["clock"]  # rank 0's clock, though rank 1 slept 0.5 s longer
    assert r0["clock"] == sorted(r0["clock"])


def test_which_trainers_are_data_parallel():
    text = (REPO / "benchmark" / "train_gpt_mlx.py").read_text(encoding="utf-8")
    assert distributed.goes_through_hook(text) and not distributed.joins_group_itself(text)
    unhooked = _without_hook(text)
    assert not distributed.goes_through_hook(unhooked) and not distributed.joins_group_itself(unhooked)
    commented = text.replace("    COMPUTE_DTYPE = _autogolf_install(", "    # COMPUTE_DTYPE = _autogolf_install(")
    assert not distributed.goes_through_hook(commented)
    own = unhooked.replace("    args = Hyperparameters()\n", "    args = Hyperparameters()\n    world = mx.distributed.init()\n")
    assert distributed.joins_group_itself(own) and not distributed.goes_through_hook(own)


def _without_hook(text: str) -> str:
    start = text.index(HOOK_START)
    end = text.index("\n", text.index(HOOK_END, start)) + 1
    return text[:start] + text[end:]


def test_a_trainer_without_the_hook_is_refused(project, env):
    """NPROC=2 with upstream's file without the hook would train two separate models: a
    config error that says so, before anything runs."""
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    trainer.write_text(_without_hook(trainer.read_text(encoding="utf-8")), encoding="utf-8")
    subprocess.run(["git", "commit", "-qam", "no hook"], cwd=project, check=True)
    out = run_bench(project, dict(env, NPROC="2"))
    assert out.returncode == 2, out.stdout[-2000:]
    summary = summary_line(out.stdout)
    assert summary.startswith("autoresearch: config_error") and "single-process trainer" in summary
    assert "restore the hook" in summary
    assert ledger_rows(project)[-1]["status"] == "config_error"


# --------------------------------------------------------------------------- through the harness

def _assert_ok_two_ranks(project: Path, out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    lines = out.stdout.rstrip("\n").splitlines()
    assert summary_line(out.stdout).startswith("autoresearch: ok"), lines[-2:]
    assert "val_bpb" in metric_lines(out.stdout) and lines[-3].startswith("METRIC")
    row = ledger_rows(project)[-1]
    assert row["status"] == "ok" and row["distributed"]["world_size"] == 2
    assert (project / row["log_path"]).is_file()
    assert "data_parallel: world_size:2" in out.stdout
    return row


def test_nproc_2_trains_like_one_process(project, env):
    """Upstream's trainer, same data, seed and global batch: two ranks (each half of every
    batch, outputs summed over the group) log the losses and val_bpb of one process that
    splits its batch the same way (2 CPU streams in 1 process, 1 in each of 2)."""
    env = dict(env, ITERATIONS="4", WARMDOWN_ITERS="4")  # a warm-down over the run: the loss moves
    one = run_bench(project, dict(env, CPU_STREAMS="2"))
    assert one.returncode == 0, one.stdout[-3000:]
    one_log = (project / ledger_rows(project)[-1]["log_path"]).read_text()
    row = _assert_ok_two_ranks(project, run_bench(project, dict(env, NPROC="2", CPU_STREAMS="1")))
    assert row["settings"]["NPROC"] == "2" and row["distributed"]["hosts"] == ["127.0.0.1"] * 2
    two_log = (project / row["log_path"]).read_text()
    losses_one, losses_two = TRAIN_LOSS.findall(one_log), TRAIN_LOSS.findall(two_log)
    assert [s for s, _ in losses_two] == ["1", "2", "3", "4"]  # rank 0 alone logs: each step once
    assert [s for s, _ in losses_one] == [s for s, _ in losses_two]
    assert len({loss for _, loss in losses_one}) > 1  # it trains
    for (_, a), (_, b) in zip(losses_one, losses_two):
        assert abs(float(a) - float(b)) <= 1e-4
    [(loss1, bpb1)], [(loss2, bpb2)] = FINAL_EXACT.findall(one_log), FINAL_EXACT.findall(two_log)
    assert abs(float(bpb1) - float(bpb2)) <= 1e-5 and abs(float(loss1) - float(loss2)) <= 1e-5
    # one artifact, rank 0's; no rank left a folder or a copy of the weights behind
    assert not list(Path(tempfile.gettempdir()).glob(f"autogolf-{row['run_id']}-rank*"))
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


def test_nproc_2_under_a_wall_clock_cap(project, env):
    """With MAX_WALLCLOCK_SECONDS the ranks read rank 0's clock: they take the same LR and stop
    at the same step (apart, the stop would leave one rank alone in a collective: a hang)."""
    out = run_bench(project, dict(env, NPROC="2", ITERATIONS="100000", MAX_WALLCLOCK_SECONDS="3"))
    row = _assert_ok_two_ranks(project, out)
    assert "clock:rank0" in out.stdout
    log = (project / row["log_path"]).read_text()
    assert re.search(r"^stopping_early: wallclock_cap train_time:\d+ms step:\d+/100000$", log, re.M), log[-1500:]


def test_hostfile_with_two_loopback_entries(project, env, tmp_path):
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
    proc = _start_long_run(project, env, AUTOGOLF_TIMEOUT="30")
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
