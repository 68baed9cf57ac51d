"""The most realistic test we can run here: the REAL pi and the REAL pi-autoresearch, under our
supervisor in tmux, running our benchmark and checks on the real trainer. Only the model's brain
is a stand-in: a scripted OpenAI-compatible server on loopback (tests/scripted_model.py).

The script: init, a baseline kept, a command other than the benchmark (refused), a trainer edit
discarded, a protected-file edit that the next benchmark restores from HEAD before it runs (the
loop's AUTOGOLF_LOOP=1: it says so on its summary line and in its ledger row), a rerun discarded. Then the model server
is stopped mid-loop: pi's requests fail, the supervisor probes (restarts pi) without counting it
against the breaker, and when the server is back
the loop carries on from pi-autoresearch's log. (The guard, agent/guard, refuses a keep the
VERDICT does not back, so the reruns of unchanged code are logged as discards; the protected-file
edit hides the file's name from the guard's pattern check, so the harness's restore is what undoes it.
Where a sandbox mechanism exists the guard's bash jail would stop that write first
(tests/test_guard_e2e.py shows it), so this test runs as a machine without one:
AUTOGOLF_SANDBOX=off, the pattern check alone, trainer runs unconfined.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import (PI_INSTALLED, PI_MISSING_REASON, clean_env, events, kill_tmux_server, loop,
                           scripted_provider, status)
from autoresearch_helpers import git, make_project, make_tiny_dataset, wait_for
from autogolf.judge import ledger
from conftest import REPO

pytestmark = [pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)]

SMOKE = "PROFILE=smoke bash autoresearch.sh"
SCRIPT = [
    {"tool": "init_experiment", "args": {"name": "golf", "metric_name": "val_bpb", "metric_unit": "",
                                         "direction": "lower"}},
    {"tool": "run_experiment", "args": {"command": SMOKE}},
    {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}", "status": "keep",
                                        "description": "baseline"}},
    {"tool": "run_experiment", "args": {"command": "python3 -c 'print(\"METRIC val_bpb=0.001\")'"}},
    {"tool": "bash", "args": {"command": "echo '# experiment: a note the discard must revert' >> benchmark/train_gpt_mlx.py"}},
    {"tool": "run_experiment", "args": {"command": SMOKE}},
    {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}", "status": "discard",
                                        "description": "trainer note, no gain"}},
    {"tool": "bash", "args": {"command": "python3 -c \"p = 'READ' + 'ME.md'; open(p, 'a').write('scripted-model-was-here')\""}},
    {"tool": "run_experiment", "args": {"command": SMOKE}},
    {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}", "status": "discard",
                                        "description": "edited a protected file: the run restored it"}},
    {"tool": "run_experiment", "args": {"command": SMOKE}},
    {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}", "status": "discard",
                                        "description": "rerun before the outage"}},
    # the server is stopped here; after the restart the conversation resumes at this turn
    {"tool": "bash", "args": {"command": "echo '# experiment: a note the discard reverts' >> benchmark/train_gpt_mlx.py"}},
    {"tool": "run_experiment", "args": {"command": SMOKE}},
    {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}", "status": "discard",
                                        "description": "after the restart"}},
]


class ModelServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "script.json").write_text(json.dumps(SCRIPT))
        self.port = 0
        self.proc = None

    def start(self) -> None:
        port_file = self.workdir / "port.txt"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "scripted_model.py"),
                                      "--script", str(self.workdir / "script.json"), "--port", str(self.port),
                                      "--port-file", str(port_file), "--requests", str(self.workdir / "requests.jsonl")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(port_file.is_file, 20, "the model server")
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def requests(self) -> list[dict]:
        path = self.workdir / "requests.jsonl"
        return [json.loads(l) for l in path.read_text().splitlines()] if path.is_file() else []


def pi_log(project: Path) -> list[dict]:
    path = project / ".auto" / "log.jsonl"
    if not path.is_file():
        return []
    return [e for e in (json.loads(l) for l in path.read_text().splitlines() if l.strip()) if "run" in e]


def test_real_pi_loop_under_the_supervisor_survives_a_model_outage(tmp_path, corpus):
    dataset, tokenizer = make_tiny_dataset(tmp_path / "data", corpus)
    project = make_project(tmp_path / "project")
    server = ModelServer(tmp_path)
    server.start()
    env = clean_env(tmp_path / "home", DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), AUTOGOLF_SANDBOX="off",
                    AUTOGOLF_POLL_SECONDS="0.5", AUTOGOLF_BACKOFF_SECONDS="1", AUTOGOLF_BACKOFF_MAX_SECONDS="4",
                    AUTOGOLF_ERROR_GRACE_SECONDS="2", AUTOGOLF_NUDGE_SECONDS="900",
                    **scripted_provider(tmp_path / "pi-agent", server.port))
    try:
        start = loop(project, env, "start")
        assert start.returncode == 0, start.stdout + start.stderr
        wait_for(lambda: len(pi_log(project)) >= 4, 400, "four logged experiments")
        screen = status(project, env)  # the status screen during the loop, for the record
        server.stop()  # mid-loop: pi's next request fails
        wait_for(lambda: any(" agent_start restart: provider unreachable" in l for l in events(project)),
                 120, "the supervisor to probe the provider (restart pi) during the outage")
        server.start()  # same port: the provider is back
        wait_for(lambda: len(pi_log(project)) >= 5, 300, "the loop to continue after the restart")
        entries = pi_log(project)
        runs = ledger.runs(project / "logs" / "runs.jsonl")
    finally:
        print(status(project, env))
        loop(project, env, "stop", "--kill-benchmark")
        kill_tmux_server(env)
        server.stop()
    print("status during the loop:\n" + screen)

    # pi-autoresearch's own log: the loop went on from it after the restart
    assert [e["status"] for e in entries] == ["keep", "discard", "discard", "discard", "discard"]
    assert entries[-1]["description"] == "after the restart" and entries[-1]["run"] == 5
    # the command that is not the benchmark was refused
    refused = [r for r in server.requests() if r["turn"] == 4]
    assert refused and "run_experiment runs only the benchmark" in refused[0]["last"]
    # our ledger: every benchmark run, with the checks' verdicts; the run after the README edit
    # restored it from HEAD before it started, so it ran on the real harness and passed them
    ok_runs = [r for r in runs if r["status"] == "ok"]
    assert len(ok_runs) == 5, [(r["run_id"], r["status"]) for r in runs]
    assert [(r["checks"] or {}).get("passed") for r in ok_runs] == [True, True, True, True, True]
    assert ok_runs[2]["restored_from_head"] == {"files": ["README.md"], "removed": []}
    assert not any(r.get("restored_from_head") for i, r in enumerate(ok_runs) if i != 2)
    # the discards reverted the trainer notes; the run had restored the README
    trainer = (project / "benchmark" / "train_gpt_mlx.py").read_text()
    assert "the discard must revert" not in trainer and "the discard reverts" not in trainer
    assert "scripted-model-was-here" not in (project / "README.md").read_text()
    assert git(project, "status", "--porcelain").strip() == ""
    assert git(project, "log", "--format=%s").split("\n")[0] == "harness under test"  # nothing new was kept
    # the supervisor's account of the outage
    log = events(project)
    # an outage is the provider's fault: waited out with probes that never count against the breaker
    assert any("restart_scheduled provider unreachable: Connection error" in l and "counted=False" in l
               for l in log), log
    assert any(" provider_back unreachable over after" in l for l in log), log
    # the loop's own overhead between a benchmark's end and the next one's start
    gaps = [b["started_epoch"] - a["ended_epoch"] for a, b in zip(ok_runs[:4], ok_runs[1:4])]
    print(f"loop overhead between benchmarks (scripted model): {', '.join(f'{g:.2f}' for g in gaps)} s")
    assert all(g > 0 for g in gaps)
