"""A soak of the agent loop, as a user's night would go, compressed: the real `just autoresearch`
(the real pi and pi-autoresearch, the supervisor in tmux, our harness on the smoke profile) with
only the model's brain scripted (tests/scripted_model.py on loopback), and a fault every 2-3
minutes in random order:

    agent_kill          pi SIGKILLed between two benchmarks
    model_down          the model server gone for 60 s
    rate_limit_hinted   429 for 60 s, with Retry-After (and "try again in Ns" in the message)
    rate_limit_bare     429 for 60 s, with no hint of when to come back
    harness_kill        the benchmark's orchestrator SIGKILLed while its trainer runs
    hung_trainer        the trainer SIGSTOPped: only its hard timeout ends it
    supervisor_kill x2  the supervisor SIGKILLed (its window's restart loop replaces it)

and, between benchmarks, the scripted agent tries what the guard (agent/guard, autogolf/agent/
gate*.py) must block, one attempt every few iterations in a seeded random order: a chained
and a piped benchmark command, a second keep of a run already logged, an edit of the checks,
a write of a harness file, shell writes into the ledger, the venv and git. Otherwise the agent
is honest: before each benchmark it appends a comment to the trainer (new bytes, the same
numbers), and it logs keep on a VERDICT keep, else discard, so pi-autoresearch commits the
baseline's trainer and reverts every later one.

Measured: per fault the time to the next benchmark start (the run lock, sampled every 0.2 s);
runs started and settled (the ledger); overlaps (trainer processes alive at once, sampled); the
breaker's count before and after a supervisor replacement; `just status` during a rate-limit
wait, a stalled trainer and a dead supervisor. At the end: the loop alive, every started run in
the ledger, protected files unchanged, git's history holding only VERDICT-keep trainers, the
guard's block counts against the attempts the agent made, and `just stop`'s time with no
benchmark running. Everything lands in OUT (report.txt, report.json, status-*.txt, the
project with its logs).

    .venv/bin/python scripts/soak.py MINUTES [--out DIR] [--seed N]     (`just soak MINUTES`)
    .venv/bin/python scripts/soak.py MINUTES --no-faults [--no-guard]   the loop's own pace: its
        overhead per iteration (benchmark end to next start), with or without the guard
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from agent_helpers import clean_env, kill_tmux_server, tmux  # noqa: E402
from autoresearch_helpers import make_project, make_tiny_dataset, wait_for  # noqa: E402
from conftest import REAL_DOCS, REAL_TOKENIZER, Corpus, have_fixtures, make_standin_corpus  # noqa: E402

from autogolf.agent import gate  # noqa: E402
from autogolf.judge import ledger, protected  # noqa: E402
from autogolf.paths import TRAINER_RELPATH  # noqa: E402
from autogolf.run.runlock import RunLock, lock_is_free  # noqa: E402

SMOKE = "PROFILE=smoke bash autoresearch.sh"
FAULTS = ["agent_kill", "model_down", "rate_limit_hinted", "rate_limit_bare", "harness_kill", "hung_trainer",
          "supervisor_kill", "supervisor_kill"]
OUTAGE_S = 60.0


# What the guard must block: name -> (the guard's kind that counts it, the tool call).
ATTEMPTS = {
    "chained_metric": ("command", {"tool": "run_experiment",
                                   "args": {"command": SMOKE + " && echo METRIC val_bpb=0.01"}}),
    "piped_benchmark": ("command", {"tool": "run_experiment", "args": {"command": SMOKE + " | tail -n 20"}}),
    "second_keep": ("keep", {"tool": "log_experiment", "args": {"commit": "0000000", "metric": 0.01,
                                                                "status": "keep", "description": "again"}}),
    "edit_checks": ("scope", {"tool": "edit", "args": {"path": "autoresearch.checks.sh", "edits": [
        {"oldText": "set -euo pipefail", "newText": "exit 0"}]}}),
    "write_scorer": ("scope", {"tool": "write", "args": {"path": "autogolf/measure/score.py",
                                                         "content": "SCORE = 0.01\n"}}),
    "shell_ledger": ("shell", {"tool": "bash", "args": {
        "command": "echo '{\"record\": \"run\", \"status\": \"ok\"}' >> logs/runs.jsonl"}}),
    "shell_venv_pth": ("shell", {"tool": "bash", "args": {
        "command": f"echo 'import os' > .venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
                   f"/site-packages/zz_soak.pth"}}),
    "shell_git": ("shell", {"tool": "bash", "args": {"command": "git commit -qam 'sneak a change in'"}}),
}
ATTEMPT_EVERY = 3  # iterations between two attempts, by default


def script(loops: int, rng: random.Random | None = None, every: int = ATTEMPT_EVERY) -> list[dict]:
    """init, then edit + run + log for ever (as far as a night goes): the model's whole brain. With
    rng, every `every`-th iteration ends with one blocked-action attempt, in rounds of
    ATTEMPTS in a seeded random order; each attempt turn carries its name under "attempt"."""
    turns = [{"tool": "init_experiment", "args": {"name": "soak", "metric_name": "val_bpb", "metric_unit": "",
                                                  "direction": "lower"}}]
    order: list[str] = []
    for n in range(loops):
        # an edit of the trainer that changes its bytes, not its numbers: the baseline's keep
        # commits one, every later one is a discard that pi-autoresearch reverts
        turns += [{"tool": "bash", "args": {"command": f"echo '# soak iteration {n + 1}' >> {TRAINER_RELPATH}"}},
                  {"tool": "run_experiment", "args": {"command": SMOKE}},
                  {"tool": "log_experiment", "args": {"commit": "0000000", "metric": "{metric:val_bpb}",
                                                      "status": "{verdict}", "description": f"soak run {n + 1}"}}]
        if rng is not None and every > 0 and n % every == every - 1:
            if not order:
                order = list(ATTEMPTS)
                rng.shuffle(order)
            name = order.pop(0)
            turns.append({**ATTEMPTS[name][1], "attempt": name})
    return turns


class Model:
    """The scripted model server, which the soak stops and starts on the same port."""

    def __init__(self, out: Path, rng: random.Random | None, every: int = ATTEMPT_EVERY):
        self.out, self.port, self.proc = out, 0, None
        (out / "script.json").write_text(json.dumps(script(600, rng, every)))
        self.faults = out / "faults.json"
        self.faults.write_text("{}")

    def start(self) -> None:
        port_file = self.out / "port.txt"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "scripted_model.py"), "--script",
                                      str(self.out / "script.json"), "--port", str(self.port), "--port-file",
                                      str(port_file), "--requests", str(self.out / "requests.jsonl"),
                                      "--faults", str(self.faults)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(port_file.is_file, 20, "the model server")
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Sampler(threading.Thread):
    """Every 0.2 s: who holds the run lock (a benchmark's start and end); every 1 s: how many
    trainer processes are alive (more than one is an overlap)."""

    def __init__(self, lock_path: Path, project: Path):
        super().__init__(daemon=True)
        self.lock_path, self.project = lock_path, project
        self.starts: dict[str, float] = {}   # run_id -> first seen holding the lock
        self.ends: dict[str, float] = {}     # run_id -> lock seen free after it
        self.current: str | None = None
        self.overlaps, self.trainer_samples, self.max_trainers = 0, 0, 0
        self.done = threading.Event()

    def trainers(self) -> int:
        count = 0
        for p in psutil.process_iter(["cmdline", "ppid"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "train_gpt_mlx.py" in cmd and str(self.project) in cmd:
                try:  # count a trainer tree once: its root
                    if "train_gpt_mlx.py" not in " ".join(psutil.Process(p.info["ppid"]).cmdline()):
                        count += 1
                except psutil.Error:
                    count += 1
        return count

    def run(self) -> None:
        tick = 0
        while not self.done.is_set():
            now = time.time()
            held = not lock_is_free(self.lock_path)
            info = RunLock("-", self.lock_path).read_holder() if held else None
            run_id = (info or {}).get("run_id") if held else None
            if run_id and run_id != self.current:
                if self.current:
                    self.ends.setdefault(self.current, now)
                self.starts.setdefault(run_id, now)
                self.current = run_id
            elif not held and self.current:
                self.ends.setdefault(self.current, now)
                self.current = None
            if tick % 5 == 0:
                n = self.trainers()
                self.trainer_samples += 1
                self.max_trainers = max(self.max_trainers, n)
                self.overlaps += n > 1
            tick += 1
            time.sleep(0.2)

    def next_start(self, after: float) -> float | None:
        later = [t for t in self.starts.values() if t >= after]
        return min(later) if later else None


def unguarded_pi(project: Path, env: dict, out: Path) -> str:
    """The loop's own pi command line less the guard's `-e`: for measuring what the guard costs
    (never for a night: without the guard pi-autoresearch takes the agent's word)."""
    printed = subprocess.run([str(project / ".venv" / "bin" / "python"), "-m", "autogolf.agent.launch",
                              "--print-command", "--resume", "no"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=120, check=True)
    cmd = shlex.split(printed.stdout.strip().splitlines()[-1])
    at = next(i for i, arg in enumerate(cmd) if arg == "-e" and cmd[i + 1].endswith("guard/index.ts"))
    del cmd[at:at + 2]
    # a restart resumes the session (launch.py does the same for pi: --continue and a message)
    first, resume = shlex.join(cmd), shlex.join(cmd[:-1] + ["--continue"])
    # what launch.py gives pi and not another agent: Node on PATH, pi offline and quiet
    path = subprocess.run([str(project / ".venv" / "bin" / "python"), "-c",
                           "from autogolf.agent import install; print(install.agent_path())"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    script = out / "unguarded-pi.sh"
    script.write_text("set -euo pipefail\n"
                      f"export PATH={shlex.quote(path)} PI_SKIP_VERSION_CHECK=1 PI_TELEMETRY=0 PI_OFFLINE=1\n"
                      f'if [ "$AUTOGOLF_AGENT_RESUME" = 1 ]; then exec {resume} "$AUTOGOLF_AGENT_MESSAGE"; fi\n'
                      f"exec {first}\n")
    return f"bash {shlex.quote(str(script))}"


def end_lines(end: dict | None) -> list[str]:
    if not end:
        return []
    h = end["history"]
    return [f"at the end: loop alive {end['alive']}; runs started {end['runs_started']}, not in the ledger "
            f"{end['started_not_in_ledger'] or 'none'}; protected files changed {end['protected_changed'] or 'none'}, "
            f"added {end['protected_added'] or 'none'}",
            f"git history: {h['commits']} commits, {h['trainer_commits']} with a trainer, not a VERDICT-keep trainer: "
            f"{h['not_verdict_keep'] or 'none'}; harness files committed: {h['harness_commits'] or 'none'}",
            f"guard: attempts {end['attempts']} -> by kind {end['attempts_by_kind']}; blocked by kind "
            f"{end['guard_blocks']}: {'match' if end['guard_matches'] else 'MISMATCH'}",
            f"just stop with no benchmark running: {end['stop_s']} s"]


def night_ok(data: dict) -> bool:
    """The soak's pass line: no overlap, and every end check holds."""
    end = data["notes"].get("end") or {}
    h = end.get("history") or {}
    return (data["overlaps"] == 0 and all((end.get("alive") or {}).values()) and not end.get("started_not_in_ledger")
            and not end.get("protected_changed") and not end.get("protected_added")
            and not h.get("not_verdict_keep") and not h.get("harness_commits") and bool(end.get("guard_matches")))


def history_check(project: Path, runs: list[dict]) -> dict:
    """Every trainer version git's history holds past the first commit, against the ledger:
    each must be a trainer some run measured with VERDICT keep."""
    keep = {(r.get("trainer") or {}).get("sha256") for r in runs if (r.get("verdict") or {}).get("call") == "keep"}
    commits = subprocess.run(["git", "rev-list", "--reverse", "HEAD"], cwd=project, capture_output=True,
                             text=True, check=True).stdout.split()
    bad, trainers, harness = [], 0, []
    for commit in commits[1:]:
        names = subprocess.run(["git", "show", "--name-only", "--format=", commit], cwd=project,
                               capture_output=True, text=True, check=True).stdout.split()
        harness += [f"{commit[:8]}:{n}" for n in names if protected.is_harness_path(n)]
        if str(TRAINER_RELPATH) in names:
            trainers += 1
            blob = subprocess.run(["git", "show", f"{commit}:{TRAINER_RELPATH}"], cwd=project,
                                  capture_output=True, check=True).stdout
            if hashlib.sha256(blob).hexdigest() not in keep:
                bad.append(commit[:8])
    return {"commits": len(commits) - 1, "trainer_commits": trainers, "not_verdict_keep": bad,
            "harness_commits": harness}


class Soak:
    def __init__(self, out: Path, minutes: float, seed: int, faults: bool = True, guard: bool = True,
                 attempt_every: int | None = None):
        self.out, self.minutes, self.with_faults, self.guard = out, minutes, faults, guard
        every = (ATTEMPT_EVERY if faults and guard else 0) if attempt_every is None else attempt_every
        self.rng = random.Random(seed)
        self.faults: list[dict] = []
        self.notes: dict = {"seed": seed, "faults": faults, "guard": guard, "attempt_every": every}
        out.mkdir(parents=True, exist_ok=True)
        corpus = Corpus(REAL_TOKENIZER, REAL_DOCS, real=True) if have_fixtures() else \
            make_standin_corpus(out / "corpus")
        self.dataset, self.tokenizer = make_tiny_dataset(out / "data", corpus)
        self.project = make_project(out / "project")
        # the guard's attempts come with the faults (their own generator: the fault order stays the seed's)
        self.model = Model(out, random.Random(seed + 1), every)
        self.model.start()
        agent_dir = out / "pi-agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        # a large context window: pi must not compact (its summary request would get a tool call)
        (agent_dir / "models.json").write_text(json.dumps({"providers": {"scripted": {
            "baseUrl": f"http://127.0.0.1:{self.model.port}/v1", "api": "openai-completions", "apiKey": "any",
            "models": [{"id": "scripted", "contextWindow": 2_000_000, "maxTokens": 4096}]}}}))
        self.env = clean_env(out / "home", DATA_PATH=str(self.dataset), TOKENIZER_PATH=str(self.tokenizer),
                             PI_CODING_AGENT_DIR=str(agent_dir), AUTOGOLF_PI_PROVIDER="scripted",
                             AUTOGOLF_PI_MODEL="scripted")
        if not guard:
            self.env["AUTOGOLF_AGENT_CMD"] = unguarded_pi(self.project, self.env, out)
        self.lock_path = Path(self.env["AUTOGOLF_LOCK_PATH"])
        self.sampler = Sampler(self.lock_path, self.project)
        self.state_file = self.project / "logs" / "agent" / "state.json"

    # -- helpers
    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.out / "soak.log", "a") as f:
            f.write(line + "\n")

    def just(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / ".venv" / "bin" / "just"), *args], cwd=self.project, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def status(self, name: str) -> str:
        at = time.strftime("%H:%M:%S")
        text = self.just("status").stdout
        path = self.out / f"status-{name}.txt"
        n = 2
        while path.exists():  # a later round's transcript of the same fault: keep both
            path, n = self.out / f"status-{name}-{n}.txt", n + 1
        path.write_text(f"# `just status` at {at}\n{text}")
        self.log(f"status transcript: {name}")
        return text

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def holder(self) -> dict:
        return (RunLock("-", self.lock_path).read_holder() or {}) if not lock_is_free(self.lock_path) else {}

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.project / "logs" / "agent" / "supervisor.lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def agent_pid(self) -> int | None:
        """pi itself: the child of the agent pane's script (scripts/run-pi-autoresearch.sh)."""
        out = tmux(self.env, "list-panes", "-a", "-F", "#{window_name} #{pane_dead} #{pane_pid}")
        for name, dead, pid in (line.split() for line in out.stdout.splitlines()):
            if name == "agent" and dead == "0":
                try:
                    children = psutil.Process(int(pid)).children()
                except psutil.Error:
                    return None
                return children[0].pid if children else None
        return None

    def wait_idle(self, limit: float = 240) -> None:
        """Until no benchmark holds the lock (a fault between two benchmarks)."""
        wait_for(lambda: lock_is_free(self.lock_path), limit, "no benchmark running")

    def wait_trainer(self, limit: float = 300) -> dict:
        """Until a trainer runs (a smoke trainer lasts seconds: act at once); its lock info."""
        return wait_for(lambda: (lambda i: i if i.get("trainer_pid") and i.get("hard_timeout_at") else None)(
            self.holder()), limit, "a trainer running")

    def signal_mid_run(self, key: str, sig: int) -> tuple[dict, float]:
        """Send sig to the running benchmark's trainer_pid or pid (its orchestrator); a run
        that ended just before is followed by the next one."""
        while True:
            info = self.wait_trainer()
            try:
                os.kill(int(info[key]), sig)
                return info, time.time()
            except ProcessLookupError:
                time.sleep(0.2)

    def counted(self) -> dict:
        state = self.state()
        restarts = state.get("restarts") or []
        return {"restarts_in_state": len(restarts), "counted": sum(1 for r in restarts if r.get("counted")),
                "restarts_total": state.get("restarts_total"), "supervisor_pid": state.get("supervisor_pid")}

    # -- faults: each returns its record (start, end, and what it saw)
    def agent_kill(self) -> dict:
        self.wait_idle()
        pid = self.agent_pid()
        start = time.time()
        os.kill(pid, signal.SIGKILL)
        return {"start": start, "end": start, "pid": pid}

    def model_down(self) -> dict:
        self.wait_idle()
        start = time.time()
        self.model.stop()
        time.sleep(OUTAGE_S)
        self.model.start()
        return {"start": start, "end": time.time()}

    def rate_limit(self, hinted: bool, name: str) -> dict:
        self.wait_idle()
        start = time.time()
        self.model.faults.write_text(json.dumps({"rate_limit_until": start + OUTAGE_S, "retry_after": hinted}))
        record = {"start": start, "end": start + OUTAGE_S, "retry_after": hinted}
        # `just status` while the supervisor waits for it (once, for the hinted or the first one)
        try:
            wait_for(lambda: (self.state().get("next_restart") or {}).get("kind") == "rate_limit" or None,
                     OUTAGE_S - 5, "the supervisor's rate-limit wait")
            record["status"] = self.status(name)
            record["next_restart"] = self.state().get("next_restart")
        except AssertionError as e:  # pi's own retry got through first: nothing to wait for
            record["no_wait"] = str(e)
        time.sleep(max(0.0, start + OUTAGE_S - time.time()))
        self.model.faults.write_text("{}")
        return record

    def harness_kill(self) -> dict:
        info, start = self.signal_mid_run("pid", signal.SIGKILL)
        return {"start": start, "end": start, "run_id": info.get("run_id"), "pid": info["pid"]}

    def hung_trainer(self) -> dict:
        info, start = self.signal_mid_run("trainer_pid", signal.SIGSTOP)
        hard = float(info["hard_timeout_at"])
        record = {"start": start, "end": hard, "run_id": info.get("run_id"), "hard_timeout_at": hard}
        # past the stall limit (60 s for smoke), before the hard timeout (120 s)
        time.sleep(max(0.0, min(hard - 15, float(info["trainer_started_at"]) + 90) - time.time()))
        record["status"] = self.status("stalled-trainer")
        return record

    def supervisor_kill(self) -> dict:
        before = self.counted()
        pid = self.supervisor_pid()
        start = time.time()
        os.kill(pid, signal.SIGKILL)
        transcript = self.status("dead-supervisor")
        back = wait_for(lambda: (lambda p: p if p and p != pid and not lock_is_free(
            self.project / "logs" / "agent" / "supervisor.lock") else None)(self.supervisor_pid()), 60,
            "the supervisor's replacement")
        replaced = time.time()
        time.sleep(2)
        after = self.counted()
        breaker = next((l for l in self.status("after-replacement").splitlines() if l.startswith("breaker")), "")
        return {"start": start, "end": replaced, "pid": pid, "new_pid": back, "replaced_in_s": replaced - start,
                "status": transcript, "breaker_before": before, "breaker_after": after, "breaker_line": breaker}

    def inject(self, kind: str) -> None:
        self.log(f"fault {kind}: injecting")
        if kind.startswith("rate_limit"):
            record = self.rate_limit(kind == "rate_limit_hinted", f"rate-limit-{kind.split('_')[-1]}")
        else:
            record = getattr(self, kind)()
        record["kind"] = kind
        self.faults.append(record)
        self.log(f"fault {kind}: start {time.strftime('%H:%M:%S', time.localtime(record['start']))}, end "
                 f"{time.strftime('%H:%M:%S', time.localtime(record['end']))}")

    # -- the night
    def run(self) -> dict:
        self.sampler.start()
        t0 = time.time()
        started = self.just("autoresearch")
        self.log(f"just autoresearch: rc {started.returncode}: {started.stdout.strip()[-300:]} {started.stderr[-300:]}")
        if started.returncode != 0:
            raise SystemExit(f"soak: `just autoresearch` failed (rc {started.returncode}); see above")
        wait_for(lambda: self.sampler.starts or None, 300, "the first benchmark")
        self.log("first benchmark started")
        order = FAULTS[:]
        self.rng.shuffle(order)
        # the breaker's count across a replacement means something only with a counted restart before it
        if order.index("agent_kill") > max(i for i, k in enumerate(order) if k == "supervisor_kill"):
            order.remove("agent_kill")
            order.insert(0, "agent_kill")
        self.notes["order"] = order
        time.sleep(45)
        while order and self.with_faults:
            if len(self.faults) >= len(FAULTS) and time.time() - t0 > self.minutes * 60 - 150:
                break  # every fault once, and the time is up: no later round's fault is started
            self.inject(order.pop(0))
            self.report(t0)
            # the next fault 2-3 minutes after this one's start, and never before it is 30 s over
            last = self.faults[-1]
            time.sleep(max(30.0, last["start"] + self.rng.uniform(120, 180) - time.time(),
                           last["end"] + 30 - time.time()))
            if not order and time.time() - t0 < self.minutes * 60 - 180:
                order = FAULTS[:]  # time for more: another round, in another random order
                self.rng.shuffle(order)
                self.notes["order"] += order
        while time.time() - t0 < self.minutes * 60:
            time.sleep(5)
        final = self.status("final")
        self.notes["end"] = self.end_checks()
        self.report(t0, final=final)
        return self.report(t0, final=final, stopped=True)

    # -- the morning after
    def attempts_made(self) -> Counter:
        """The guard attempts the agent made: attempt turns served, each turn index once (a
        retried or resumed request gets the same turn; it is one attempt)."""
        seen: dict[int, str] = {}
        path = self.out / "requests.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            row = json.loads(line)
            name = (row.get("reply") or {}).get("attempt")
            if name:
                seen.setdefault(row["turn"], name)
        return Counter(seen.values())

    def end_checks(self) -> dict:
        """What the issue asks of the night, measured; then `just stop`, timed, between benchmarks."""
        alive = {"supervisor": self.supervisor_pid() is not None and psutil.pid_exists(self.supervisor_pid() or 0),
                 "agent": self.agent_pid() is not None}
        runs = ledger.runs(self.project / "logs" / "runs.jsonl")
        in_ledger = {r.get("run_id") for r in runs}
        missing = sorted(set(self.sampler.starts) - in_ledger)
        changed, added = protected.head_drift(self.project)
        made = self.attempts_made()
        expected = Counter()
        for name, n in made.items():
            expected[ATTEMPTS[name][0]] += n
        blocked = gate.block_counts(self.project)
        # `just stop` with no benchmark: the model gone first, so the agent cannot start another
        # while stop runs (a stop during a benchmark waits for it, by design)
        self.model.stop()
        while True:  # a turn the agent got before the model went may still start one benchmark
            self.wait_idle(600)
            seen = len(self.sampler.starts)
            time.sleep(10)
            if lock_is_free(self.lock_path) and len(self.sampler.starts) == seen:
                break
        t = time.monotonic()
        stop = self.just("stop")
        stop_s = time.monotonic() - t
        self.log(f"just stop with no benchmark running: {stop_s:.1f} s (rc {stop.returncode})")
        return {"alive": alive, "runs_started": len(self.sampler.starts), "started_not_in_ledger": missing,
                "protected_changed": changed, "protected_added": added, "history": history_check(self.project, runs),
                "attempts": dict(made), "attempts_by_kind": dict(expected), "guard_blocks": dict(blocked),
                "guard_matches": dict(expected) == dict(blocked), "stop_s": round(stop_s, 2),
                "stop_out": (stop.stdout + stop.stderr)[-400:]}

    def report(self, t0: float, final: str | None = None, stopped: bool = False) -> dict:
        runs = ledger.runs(self.project / "logs" / "runs.jsonl")
        statuses: dict[str, int] = {}
        for r in runs:
            statuses[r.get("status", "?")] = statuses.get(r.get("status", "?"), 0) + 1
        rows = []
        for f in self.faults:
            after_start = self.sampler.next_start(f["start"])
            after_end = self.sampler.next_start(f["end"])
            rows.append({**{k: v for k, v in f.items() if k != "status"},
                         "next_start_after_start_s": None if after_start is None else round(after_start - f["start"], 1),
                         "next_start_after_end_s": None if after_end is None else round(after_end - f["end"], 1)})
        gaps = []
        ordered = sorted(self.sampler.starts.items(), key=lambda kv: kv[1])
        for (run_a, _), (run_b, start_b) in zip(ordered, ordered[1:]):
            end_a = self.sampler.ends.get(run_a)
            if end_a:
                gaps.append(start_b - end_a)
        normal = statistics.median(gaps) if gaps else 0.0
        down = sum(g - normal for g in gaps if g > 2 * normal + 10)
        pi_log = self.project / ".auto" / "log.jsonl"
        logged = sum(1 for line in pi_log.read_text().splitlines() if '"run"' in line) if pi_log.is_file() else 0
        data = {"minutes": round((time.time() - t0) / 60, 1), "faults": rows, "ledger_runs": len(runs),
                "ledger_statuses": statuses, "settled": sum(1 for r in runs if r.get("status") != "running"),
                "lock_starts": len(self.sampler.starts), "overlaps": self.sampler.overlaps,
                "overlap_samples": self.sampler.trainer_samples, "max_trainers": self.sampler.max_trainers,
                "pi_logged_runs": logged, "median_gap_s": round(normal, 1), "down_time_s": round(down, 1),
                "max_gap_s": round(max(gaps), 1) if gaps else None, "notes": self.notes, "stopped": stopped}
        (self.out / "report.json").write_text(json.dumps(data, indent=1, default=str))
        lines = [f"soak: {data['minutes']} min; benchmarks started {data['lock_starts']} (lock), ledger "
                 f"{data['ledger_runs']} runs, {data['settled']} settled: {statuses}; pi-autoresearch logged "
                 f"{logged}; overlaps {data['overlaps']} of {data['overlap_samples']} samples (max "
                 f"{data['max_trainers']} trainer at once); median gap {data['median_gap_s']} s, max gap "
                 f"{data['max_gap_s']} s, down time beyond the normal gap {data['down_time_s']} s"]
        for row in rows:
            lines.append(f"  {row['kind']:<18} at {time.strftime('%H:%M:%S', time.localtime(row['start']))}, ends "
                         f"{time.strftime('%H:%M:%S', time.localtime(row['end']))}: next benchmark "
                         f"{row['next_start_after_start_s']} s after its start, {row['next_start_after_end_s']} s "
                         f"after its end" + (f"; breaker {row['breaker_before']} -> {row['breaker_after']}"
                                             if "breaker_before" in row else ""))
        lines += end_lines(self.notes.get("end"))
        (self.out / "report.txt").write_text("\n".join(lines) + "\n")
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("minutes", type=float, help="how long the loop runs (at least until every fault is done)")
    parser.add_argument("--out", type=Path, default=None, help="default: /tmp/autogolf-soak-<time>")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000, help="the fault and attempt order")
    parser.add_argument("--no-faults", action="store_true",
                        help="no faults and no guard attempts: the loop's own pace (its overhead per iteration)")
    parser.add_argument("--attempt-every", type=int, default=None,
                        help="a guard attempt every N iterations (default 3 with faults and the guard, else 0: none)")
    parser.add_argument("--no-guard", action="store_true",
                        help="pi without the guard extension (through AUTOGOLF_AGENT_CMD), to measure the guard's cost")
    args = parser.parse_args(argv)
    out = args.out or Path("/tmp") / f"autogolf-soak-{time.strftime('%Y%m%d-%H%M%S')}"
    soak = Soak(out.resolve(), args.minutes, args.seed, faults=not args.no_faults, guard=not args.no_guard,
                attempt_every=args.attempt_every)
    try:
        data = soak.run()
    finally:
        soak.sampler.done.set()
        subprocess.run([str(REPO / ".venv" / "bin" / "just"), "stop", "--kill-benchmark"], cwd=soak.project,
                       env=soak.env, capture_output=True, timeout=120)
        kill_tmux_server(soak.env)
        soak.model.stop()
    print((out / "report.txt").read_text())
    return 0 if night_ok(data) else 1


if __name__ == "__main__":
    sys.exit(main())
