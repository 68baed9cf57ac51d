"""The benchmark orchestrator behind `bash autoresearch.sh` (pi-autoresearch's benchmark).

One run: take the machine lock, check the data cache, start the trainer in its own process
session under a hard timeout, stream its output to logs/<run_id>.console.txt (and a brief
version to stdout), extract the metrics from its log logs/<run_id>.txt, append one row to
the ledger logs/runs.jsonl, and print the METRIC lines followed by exactly one summary line.

    PROFILE=breadth|confirm|full|smoke bash autoresearch.sh      (default breadth)
    PROFILE=confirm MAX_WALLCLOCK_SECONDS=900 bash autoresearch.sh  (the environment wins)

Environment: AUTOGOLF_TRAINER (trainer script), AUTOGOLF_TIMEOUT (seconds, default the
profile's), AUTOGOLF_KILL_GRACE_SECONDS (SIGTERM -> SIGKILL, default 10), AUTOGOLF_LOCK_PATH,
AUTOGOLF_LOCK_WAIT_SECONDS (see runlock.py), RUN_ID, DATA_PATH / TOKENIZER_PATH (else the
cache autogolf.cache.resolve_dataset picks).

Exit status: 0 only when a post-round-trip val_bpb under the artifact cap was produced.
  1 crash (trainer failed, or no val_bpb)   2 data cache, profile or setting problem (the
  3 artifact over 16,000,000 bytes            trainer's own exit 2 included: a bad setting)
  4 integrity failed: the harness's own score of the artifact disagrees with the trainer's,
    or the causality probe failed (autogolf/verify/score.py)
  70 harness bug      75 lock busy too long
  124 timeout                               137 trainer killed by a signal
  128+N interrupted by signal N (SIGINT 130, SIGTERM 143)

Timing, precisely (all in the ledger row's "timing"; wall excludes waiting for the lock):
  wall_s              autoresearch.sh start -> the ledger row, minus lock_wait_s
  train_s             training time the trainer itself measured (its train_time)
  harness_overhead_pct = 100 * (wall_s - train_s) / wall_s: everything that is not
                      training -- harness, interpreter and MLX start-up, compile warm-up,
                      both evaluations and the export (the cost of one measurement)
  harness_only_s      wall_s - trainer_s: the orchestrator's own part (lock, cache check,
                      spawn, parsing, ledger); trainer_s is the trainer process's lifetime
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from autogolf import checks, distributed, ledger, logparse, metrics, profiles, storage
from autogolf.blas import preload_env
from autogolf.cache import CacheError, resolve_dataset, verify_cache
from autogolf.research import budget, probe, repeats, sizing, verdict
from autogolf.runlock import LockTimeout, RunLock
from autogolf.shards import ShardError
from autogolf.verify import dataview, score, shardstate

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAINER = REPO_ROOT / "benchmark" / "train_gpt_mlx.py"
EXIT_CODES = {"ok": 0, "crash": 1, "data_error": 2, "config_error": 2, "cap_violation": 3, "integrity_failed": 4,
              "harness_error": 70,
              "lock_timeout": 75, "timeout": 124, "killed": 137}
_PROGRESS_QUIET_SECONDS = 10.0  # at most one val_progress line per this many seconds on stdout


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; unwinds to the finalization, which still writes the ledger."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# The signal handler only records the signal; the run acts on it at safe points (while
# waiting for the lock, between steps, while waiting for the trainer), so a signal can
# never cut a kill, a ledger write or a lock release in half.
_STOP: dict = {"signal": None}
LAST_TRAINER: dict = {}  # the last trainer's pid and lifetime, also when it was interrupted


def _on_signal(signum, frame) -> None:
    if _STOP["signal"] is None:
        _STOP["signal"] = signum


def check_stop() -> None:
    if _STOP["signal"] is not None:
        raise Interrupted(_STOP["signal"])


def say(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- trainer process

def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the trainer's process group and every descendant (some may have left the
    group), wait up to `grace` seconds, then SIGKILL whatever is left. Reaps the trainer."""
    others = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in others:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGKILL:
            break
        try:  # a stopped (hung) trainer gets the SIGTERM now, not a grace later as a SIGKILL
            os.killpg(proc.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + grace
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is not None and not alive:
            break
    proc.wait()


def _stream(proc: subprocess.Popen, console_path: Path, state: dict, on_line=None) -> None:
    """Copy the trainer's output to the console file; echo it to stdout with a prefix (so
    nothing the trainer prints can pose as a METRIC line), val_progress thinned out.
    `on_line(line, seconds since the trainer started)` sees every line as it arrives: the
    harness's own clock for the sizing probe and the timeout projection (sizing.py)."""
    last_progress = 0.0
    started = time.monotonic()
    with open(console_path, "wb") as console:
        for raw in iter(proc.stdout.readline, b""):
            console.write(raw)
            console.flush()
            line = raw.decode("utf-8", errors="replace").rstrip()
            state["last_line"] = line or state.get("last_line", "")
            if on_line is not None:
                on_line(line, time.monotonic() - started)
            if line.startswith("val_progress:"):
                now = time.monotonic()
                if now - last_progress < _PROGRESS_QUIET_SECONDS:
                    continue
                last_progress = now
            if state.get("echo", True):
                try:
                    print(f"  | {line}", flush=True)
                except (OSError, ValueError):
                    state["echo"] = False  # stdout went away (reader killed): keep logging


def _die_with_parent(parent_pid: int):
    """preexec_fn for the trainer on Linux: the kernel SIGKILLs it the moment the orchestrator
    dies, even by SIGKILL (PR_SET_PDEATHSIG), so no trainer outlives its run unrecorded.
    Elsewhere the inherited lock still keeps a lingering trainer from overlapping the next."""
    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return setup if sys.platform.startswith("linux") else None


def run_trainer(cmd: list[str], env: dict, console_path: Path, timeout: float, grace: float,
                lock: RunLock, cwd: Path = REPO_ROOT, on_line=None) -> dict:
    """Run the trainer to completion, timeout or interruption. Returns returncode,
    timed_out, trainer_s; raises Interrupted (after the tree is dead) on SIGINT/SIGTERM."""
    console_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    started_at = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True,  # its own group: we kill it as a whole
                            pass_fds=(lock.fd,),  # a lingering trainer keeps the machine locked
                            preexec_fn=_die_with_parent(os.getpid()))
    lock.set_trainer_pid(proc.pid)
    lock.note(trainer_started_at=round(started_at, 3), hard_timeout_at=round(started_at + timeout, 3))
    state: dict = {}
    reader = threading.Thread(target=_stream, args=(proc, console_path, state, on_line), daemon=True)
    reader.start()
    timed_out = False
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if _STOP["signal"] is not None:
                    kill_tree(proc, grace)
                    break
                if time.monotonic() - start > timeout:
                    timed_out = True
                    kill_tree(proc, grace)
                    break
    finally:
        # Anything the trainer left behind in its group (it exited, or was killed -9 by
        # someone else while a child of its lived on) goes too: one trainer per machine.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        reader.join(timeout=5.0)
        lock.set_trainer_pid(None)
        # For the ledger even when interrupted: the trainer's lifetime (epoch seconds).
        state.update(trainer_s=time.monotonic() - start, started_at=started_at, ended_at=time.time())
        LAST_TRAINER.clear()
        LAST_TRAINER.update(state, pid=proc.pid)
    check_stop()  # interrupted: the tree is dead; unwind to the ledger row
    return {"returncode": proc.returncode, "timed_out": timed_out, "pid": proc.pid,
            "trainer_s": time.monotonic() - start, "last_line": state.get("last_line", ""),
            "started_at": started_at, "ended_at": time.time()}


def crash_reason(console_path: Path, returncode: int) -> str:
    """The exception line of a Python traceback in the console output, else its last line."""
    try:
        lines = console_path.read_text(encoding="utf-8", errors="replace").splitlines()[-200:]
    except OSError:
        lines = []
    lines = [l.strip() for l in lines if l.strip()]
    exc = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", l)]
    detail = exc[-1] if exc else (lines[-1] if lines else "no output")
    return f"trainer exited with code {returncode}: {detail}"


def trainer_error_line(console_path: Path) -> str | None:
    """The trainer's own one-line `error: ...` for a bad setting or bad data (it exits 2)."""
    try:
        lines = console_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [l.strip()[len("error:"):].strip() for l in lines if l.strip().startswith("error:")]
    return errors[-1] if errors else None


def _score(row: dict, trainer: Path, artifact: Path, dataset_dir: Path, tokenizer_path: Path, env: dict,
           lock: RunLock, timeout: float, grace: float, trainer_bpb: float) -> tuple[str, str]:
    """The harness scores the artifact in its own process (autogolf/verify/score.py):
    ("ok", "") or ("integrity_failed", the one-line reason). The ledger gets both numbers."""
    def run(cmd, scorer_env, console, limit, cwd):
        return run_trainer(cmd, scorer_env, console, limit, grace, lock, cwd=cwd)

    trainer_facts = dict(LAST_TRAINER)  # the timing row describes the trainer, not the scorer
    earlier = [r for r in ledger.runs(ledger.default_path(REPO_ROOT)) if r.get("run_id") != row["run_id"]]
    try:
        row["harness_score"], row["holdout"], failure = score.score_run(
            run, trainer=trainer, artifact=artifact, dataset_dir=dataset_dir, tokenizer=tokenizer_path,
            view=row["data_view"], env=env, repo_root=REPO_ROOT,
            console=REPO_ROOT / "logs" / f"{row['run_id']}.score.txt", timeout=timeout, trainer_bpb=trainer_bpb,
            best_before=_best_before(earlier, row["profile"], (row.get("dataset") or {}).get("fingerprint")))
    finally:
        LAST_TRAINER.clear()
        LAST_TRAINER.update(trainer_facts)
    return ("integrity_failed", failure) if failure else ("ok", "")


def _best_before(rows: list[dict], profile: str, fingerprint: str | None) -> float | None:
    """The best val_bpb of earlier standard runs on this profile and data (finished ok, checks
    not failed, no overrides): the holdout is scored for a run that beats it."""
    values = [r["metrics"]["val_bpb"] for r in rows
              if r.get("status") == "ok" and r.get("profile") == profile and not r.get("overrides")
              and (r.get("checks") or {}).get("passed") is not False
              and (r.get("dataset") or {}).get("fingerprint") == fingerprint
              and isinstance((r.get("metrics") or {}).get("val_bpb"), (int, float))]
    return min(values) if values else None


def _int(raw: str, name: str) -> int:
    try:
        return int(raw or "0")
    except ValueError:
        raise profiles.ProfileError(f"{name}={raw!r} is not an integer; fix that setting") from None


# --------------------------------------------------------------------------- machine sizing

class Projection:
    """Watches the trainer's step lines (harness clock) and projects its lifetime: a run
    heading past its hard timeout says so at once, and a timed-out run says by how much."""

    def __init__(self, timeout_s: float, tail_s: float):
        self.timeout_s, self.tail_s = timeout_s, tail_s
        self.clock = sizing.StepClock(started=0.0)
        self.projected: float | None = None
        self.warned = False

    def __call__(self, line: str, now_s: float) -> None:
        if not self.clock.feed(line, now_s):
            return
        self.projected = sizing.project(self.clock, now_s, self.tail_s)
        if self.projected is not None and self.projected > self.timeout_s and not self.warned:
            self.warned = True
            say(sizing.warning_line(self.projected, self.timeout_s, self.clock))

    def at_kill(self, lifetime_s: float) -> float | None:
        """The projection when the trainer was killed: a stall since the last step counts."""
        late = sizing.project(self.clock, lifetime_s, self.tail_s)
        return max(p for p in (self.projected, late) if p is not None) if late or self.projected else None


def _sizing_mode() -> str:
    mode = os.environ.get("AUTOGOLF_SIZING", "on") or "on"
    if mode not in ("on", "off"):
        raise profiles.ProfileError(f"AUTOGOLF_SIZING={mode!r}: use on (the default) or off")
    return mode


def size_and_time(profile: profiles.Profile, env: dict, row: dict, lock: RunLock, grace: float) -> float:
    """For a sized profile: probe this machine once (autogolf/research/probe.py) and put
    its budget choice into the profile; then the run's hard timeout (sizing.py), recorded
    in row["sizing"]. Unsized profiles, AUTOGOLF_SIZING=off or a failed probe: the
    profile's timeout_seconds. AUTOGOLF_TIMEOUT wins over both."""
    fixed = _env_seconds("AUTOGOLF_TIMEOUT", profile.timeout_seconds)
    if profile.sizing is None:
        return fixed
    if _sizing_mode() == "off":
        row["sizing"] = {"state": "off (AUTOGOLF_SIZING=off): the profile's budget and timeout"}
        return fixed
    if probe.needs_probe(profile, REPO_ROOT):
        lock.set_deadline(time.time() + probe.PROBE_TIMEOUT_SECONDS + 2 * grace + 60)

        def spawn(cmd, probe_env, console, limit, on_line):
            return run_trainer(cmd, probe_env, console, limit, grace, lock, on_line=on_line)

        try:
            probe.size(profile, env, REPO_ROOT, spawn, say)
        except sizing.SizingError as e:
            say(f"autoresearch: warning: sizing failed: {e}; this run keeps the profile's budget "
                f"and {profile.timeout_seconds:g} s timeout, and the next run probes again")
            row["sizing"] = {"state": f"probe failed: {e}"}
            return fixed
        row["budget"] = budget.apply(profile, os.environ, REPO_ROOT)
        env.update(profile.resolved)
    record = budget.sizing_record(budget.read_machine_file(budget.machine_path(REPO_ROOT)), profile.name)
    if record is None or row["budget"]["kind"] != "tokens":
        return fixed
    tokens = int(row["budget"]["value"])
    expected, basis = sizing.expected_trainer_s(record, tokens)
    then = ((record.get("measured") or {}) if basis.startswith("measured") else record["probe"]).get("sgemm_gflops")
    now = probe.machine_gflops()
    factor = sizing.slowdown(then, now)
    timeout = sizing.hard_timeout(profile.sizing, expected, factor)
    row["sizing"] = {"state": "sized", "tokens": tokens, "chosen_tokens": record.get("tokens"),
                     "expected_trainer_s": round(expected, 1), "basis": basis,
                     "sgemm_gflops": now, "sgemm_gflops_then": then, "slowdown": round(factor, 3),
                     "timeout_s": timeout, "tail_s": record["probe"].get("tail_s", 0.0),
                     "probe_at": record["probe"].get("at"), "train_tok_s": record["probe"].get("train_tok_s"),
                     "trainer_sha256": record["probe"].get("trainer_sha256")}
    if factor > 1.2:
        say(f"autoresearch: this machine is {factor:.1f}x slower than when breadth was sized "
            f"(sgemm {now} vs {then} GFLOP/s): the timeout stretches to {timeout:g} s; the budget "
            f"stays (comparable runs); `just calibrate --quick` re-sizes it (a new baseline)")
    return _env_seconds("AUTOGOLF_TIMEOUT", timeout)


def budget_label(row: dict, timeout: float | None, grace: float) -> str:
    """`budget=... timeout=... pi_timeout=...` for every summary line."""
    b = row.get("budget") or {}
    if b.get("kind") == "tokens":
        amount = f"{b['value']:,}tok"
    elif b.get("value") is not None:
        amount = f"{b['value']}{'s' if b.get('kind') == 'seconds' else ' steps'}"
    else:
        amount = "trainer-default"
    source = str(b.get("source", "?"))
    where = "probe" if "(probe" in source else "calibrate" if "calibrate" in source else \
        "override" if "override" in source else source
    sized = row.get("sizing") or {}
    if sized.get("state") == "sized":
        where += f" {str(sized.get('probe_at', '?'))[:10]} {sized.get('train_tok_s', 0):.0f}tok/s"
    elif sized.get("state"):
        where += f"; sizing {sized['state'].split(':')[0]}"
    if timeout is None:
        return f"budget={amount}({where})"
    return (f"budget={amount}({where}) timeout={timeout:g}s "
            f"pi_timeout={sizing.pi_timeout(timeout, grace)}s")


# --------------------------------------------------------------------------- the run

def _settings(trainer: Path, env: dict, profile: profiles.Profile) -> dict:
    """The resolved trainer environment: the profile's variables, plus every variable set
    for this run that the trainer reads -- named in its source as os.environ["NAME"] /
    .get("NAME"), or as a `name: type = default` field (upstream's Hyperparameters style,
    where the variable is the field name in upper case) -- plus AUTOGOLF_* and MLX_*."""
    names = set(profile.resolved)
    try:
        source = trainer.read_text(encoding="utf-8", errors="replace")
    except OSError:
        source = ""
    names |= set(re.findall(r"""environ(?:\.get)?[(\[]\s*["']([A-Z0-9_]+)["']""", source))
    names |= {f.upper() for f in re.findall(r"^\s+([a-z][a-z0-9_]*)\s*:\s*[\w\[\]| ]+=", source, re.M)}
    return {k: env[k] for k in sorted(env)
            if k in names or k.startswith(("AUTOGOLF_", "MLX_"))}


def _upstream_commit() -> str | None:
    path = REPO_ROOT / "benchmark" / "UPSTREAM_COMMIT.txt"
    return path.read_text().strip() if path.is_file() else None


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise profiles.ProfileError(f"{name}={raw!r} is not a positive number of seconds")
    return value


def _start_time() -> float:
    """When the benchmark started: autoresearch.sh exports bash's EPOCHREALTIME before it
    execs Python (so interpreter start-up counts), else this process's start time."""
    now = time.time()
    try:
        start = float(os.environ.get("AUTOGOLF_START_TIME", "").replace(",", "."))
        if 0 <= now - start < 60:  # ignore a stale value inherited from an outer run
            return start
    except ValueError:
        pass
    return min(psutil.Process().create_time(), now)


def prune_raw_model(logs_dir: Path, run_id: str) -> None:
    """The trainer also saves the raw fp32 weights (4 bytes/parameter: 68 MB for the
    baseline). Only the int8+zlib artifact is scored, and a 200-experiment session would
    pile up ~14 GB of raw copies, so they go unless AUTOGOLF_KEEP_RAW_MODEL=1."""
    if os.environ.get("AUTOGOLF_KEEP_RAW_MODEL") == "1":
        return
    for path in logs_dir.glob(f"{glob_escape(run_id)}_*.npz"):
        path.unlink(missing_ok=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash autoresearch.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--profile", default=None,
                        help="benchmark profile from autogolf/profiles.toml (default: $PROFILE, else breadth)")
    args = parser.parse_args(argv)
    profile_name = args.profile or os.environ.get("PROFILE") or profiles.DEFAULT_PROFILE
    run_id = os.environ.get("RUN_ID") or \
        f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}-{secrets.token_hex(2)}"
    try:
        n = repeats.count(os.environ)
        plan = repeats.plan(n, run_id, os.environ) if n > 1 else [None]
    except profiles.ProfileError as e:
        say(f"autoresearch: config_error: {e}")
        say(verdict.format_line(verdict.not_judged(f"config_error: {e}")))
        return EXIT_CODES["config_error"]
    code = 0
    for repeat in plan:
        code = run_one(profile_name, repeat["run_id"] if repeat else run_id, repeat)
        if _STOP["signal"] is not None or (repeat and code != 0):
            break  # interrupted, or a repeat failed: its own lines say why
    return code


def run_one(profile_name: str, run_id: str, repeat: dict | None) -> int:
    """One benchmark run (one repeat of REPEATS): ledger rows, then its printed lines."""
    process_start = _start_time() if not repeat or repeat["index"] == 1 else time.time()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    trainer = Path(os.environ.get("AUTOGOLF_TRAINER") or DEFAULT_TRAINER).resolve()
    logs_dir = REPO_ROOT / "logs"
    log_path = logs_dir / f"{run_id}.txt"
    console_path = logs_dir / f"{run_id}.console.txt"
    ledger_path = ledger.default_path(REPO_ROOT)

    # SIGHUP too: a closed terminal or tmux pane must not orphan a trainer unrecorded.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    row: dict = {"run_id": run_id, "status": None, "exit_reason": "", "started_at": started_at,
                 "profile": profile_name, "log_path": str(log_path.relative_to(REPO_ROOT)),
                 "console_path": str(console_path.relative_to(REPO_ROOT))}
    if repeat:
        row["repeat"] = {k: repeat[k] for k in ("group", "index", "of", "seed")}
    # In the ledger from the first moment, so even a kill -9 of this process leaves a trace
    # (the next run or `just ledger` records it as lost); earlier lost runs are settled now.
    ledger.reconcile(ledger_path)
    ledger.append_start(run_id, ledger_path, profile=profile_name, started_epoch=round(process_start, 3),
                        log_path=row["log_path"], console_path=row["console_path"],
                        **({"repeat": row["repeat"]} if repeat else {}))
    status, reason = "harness_error", ""
    result = metrics.MetricsResult()
    lock: RunLock | None = None
    lock_wait = 0.0
    trainer_s = 0.0
    dataset_label = "?"
    profile: profiles.Profile | None = None
    timeout: float | None = None
    grace = 10.0
    projection: Projection | None = None
    try:
        profile = profiles.load(profile_name)
        row["budget"] = budget.apply(profile, os.environ, REPO_ROOT)
        row["settings"] = dict(profile.resolved)
        row["overrides"] = dict(profile.overrides)
        say(f"autoresearch: run {run_id} profile={profile.name}: "
            f"{_one_line(profile.description, 160)}")

        check_stop()
        lock = RunLock(run_id=run_id, report=say)
        try:
            lock.acquire(poll=check_stop)
        finally:
            lock_wait = lock.waited_seconds

        # The data cache: fast verification only (headers, sizes, manifest, tokenizer).
        dataset_dir, tokenizer_path, manifest = resolve_dataset(REPO_ROOT / "data")
        report = verify_cache(dataset_dir, tokenizer_path, deep=False)
        is_fineweb = bool(report["is_fineweb"])
        dataset_label = f"{report['dataset']} ({'FineWeb' if is_fineweb else 'NOT FineWeb'})"
        row["dataset"] = {"name": report["dataset"], "fingerprint": report["fingerprint"],
                          "is_fineweb": is_fineweb, "dir": str(dataset_dir),
                          "tokenizer": str(tokenizer_path), "splits": report["splits"]}
        # Every shard against the manifest: stat unchanged, or re-hashed (verify/shardstate.py)
        shards = shardstate.require_verified(dataset_dir)
        row["shard_check"] = {"hashed": shards["hashed"], "hashed_bytes": shards["hashed_bytes"],
                              "seconds": shards["seconds"], "shards": len(shards["shards"])}

        if not trainer.is_file():
            raise profiles.ProfileError(f"{trainer}: trainer script not found; restore it with "
                                        f"`git checkout -- benchmark/train_gpt_mlx.py` or fix "
                                        f"AUTOGOLF_TRAINER")
        trainer_text = trainer.read_bytes()
        row["trainer"] = {"path": str(trainer), "sha256": ledger.file_sha256(trainer),
                          "bytes": len(trainer_text), "lines": trainer_text.count(b"\n")}
        _, message = checks.ensure_manifest(REPO_ROOT, dataset_dir, tokenizer_path)
        if message:
            say(f"autoresearch: {message}")

        check_stop()
        env = dict(os.environ)
        env.update(profile.resolved)
        env.update(repeats.environ_for(repeat, env))
        env.pop("DATA_PATH", None)
        # The trainer sees a per-run view: train shards, and only the selection slice of val.
        view_dir, row["data_view"] = dataview.build_view(
            dataset_dir, logs_dir / "views" / run_id, _int(env.get("VAL_MAX_TOKENS", "0"), "VAL_MAX_TOKENS"),
            profile.holdout_tokens)
        env.update({"DATA_PATH": str(view_dir), "TOKENIZER_PATH": str(tokenizer_path),
                    "RUN_ID": run_id, "OUT_DIR": str(logs_dir), "PYTHONUNBUFFERED": "1"})
        env = preload_env(env)  # optimized BLAS on Linux CPU (autogolf/blas.py)
        grace = _env_seconds("AUTOGOLF_KILL_GRACE_SECONDS", 10.0)
        # Breadth is sized to this machine (a probe, once) and its timeout follows (sizing.py)
        timeout = size_and_time(profile, env, row, lock, grace)
        row["settings"] = _settings(trainer, env, profile)
        row["blas_preload"] = env.get("LD_PRELOAD", "")
        launch = row["distributed"] = distributed.plan(env)  # NPROC / HOSTS: mlx.launch
        row["settings"].update({k: env[k] for k in ("NPROC", "HOSTS") if env.get(k)})

        lock.set_deadline(time.time() + timeout + 2 * grace + 60)  # + evaluation and bookkeeping
        say(f"autoresearch: dataset={dataset_label} trainer={trainer.name} {budget_label(row, timeout, grace)} "
            f"log={log_path.relative_to(REPO_ROOT)}")
        command = distributed.trainer_command(sys.executable, trainer, launch, REPO_ROOT,
                                              dict(row["settings"], PYTHONUNBUFFERED="1"))
        if row["budget"]["kind"] in ("tokens", "steps"):  # a step count to project from
            projection = Projection(timeout, float((row.get("sizing") or {}).get("tail_s") or 0.0))
        outcome = run_trainer(command, env, console_path, timeout, grace, lock, on_line=projection)
        trainer_s = outcome["trainer_s"]
        rc, rank_note = distributed.rank_returncode(outcome["returncode"], _read_text(console_path)) \
            if launch else (outcome["returncode"], "")
        row["returncode"] = rc
        prune_raw_model(logs_dir, run_id)
        artifact = logs_dir / f"{run_id}_mlx_model.int8.ptz"
        row["artifact_path"] = str(artifact.relative_to(REPO_ROOT)) if artifact.is_file() else None

        # Metrics: from the trainer's own log; the console capture if it never wrote one.
        source = log_path if log_path.is_file() else console_path
        parsed = logparse.parse_file(source) if source.is_file() else logparse.ParsedLog()
        try:
            shard_tokens = metrics.train_shard_sizes(dataset_dir)
        except (CacheError, ShardError) as e:  # the run's result still counts
            shard_tokens = None
            say(f"autoresearch: warning: {e}")
        result = metrics.compute(parsed, code_bytes=len(trainer_text), train_shard_tokens=shard_tokens)
        row["backend"], row["mlx_version"] = parsed.backend, parsed.mlx_version
        row["train_s"] = (parsed.train_time_ms or 0) / 1000.0
        if outcome["timed_out"]:
            status, reason = "timeout", (f"trainer exceeded the {timeout:g} s timeout (profile "
                                         f"{profile.name}; AUTOGOLF_TIMEOUT) and was killed"
                                         f"{distributed.HANG_NOTE if launch else ''}; "
                                         f"{sizing.miss_note(projection.at_kill(trainer_s) if projection else None, timeout)}; "
                                         f"last output: {outcome['last_line'][:160]}")
        elif rc < 0:
            status, reason = "killed", f"trainer was killed by {signal.Signals(-rc).name}"
        elif rc == 2 and (error := trainer_error_line(console_path)):
            status, reason = "config_error", f"trainer refused its settings or data (exit 2): {error}"
        elif rc != 0:
            status, reason = "crash", crash_reason(console_path, rc)
        elif not result.ok:
            status, reason = "crash", f"trainer exited 0 but {result.reason}"
        elif result.metrics.get("total_bytes", 0) > metrics.ARTIFACT_CAP_BYTES:
            status, reason = "cap_violation", (
                f"artifact is {result.metrics['total_bytes']:,} bytes, over the "
                f"{metrics.ARTIFACT_CAP_BYTES:,}-byte cap")
        elif "total_bytes" not in result.metrics:
            status, reason = "crash", "no artifact size in the log (export did not run?)"
        else:
            status, reason = "ok", ""
        if rank_note and status != "ok":
            reason = f"{reason} ({rank_note})"
        if status == "ok":  # the harness's own score of the artifact, the probe, the holdout
            status, reason = _score(row, trainer, artifact, dataset_dir, tokenizer_path, env, lock,
                                    timeout, grace, result.metrics["val_bpb"])
        if status == "ok" and (row.get("sizing") or {}).get("state") == "sized" and not repeat:
            # the baseline's own duration at the chosen budget: the next timeouts follow it
            if budget.record_measured(budget.machine_path(REPO_ROOT), profile.name, row["sizing"]["tokens"],
                                      row["trainer"]["sha256"], trainer_s, run_id, row["sizing"].get("sgemm_gflops")):
                say(f"autoresearch: sizing: the baseline took {trainer_s:.0f} s at this budget "
                    f"(predicted {row['sizing']['expected_trainer_s']:.0f} s); later timeouts follow it")
    except Interrupted as e:
        status, reason = "interrupted", f"interrupted by {signal.Signals(e.signum).name}"
        row["signal"] = e.signum
    except LockTimeout as e:
        status, reason = "lock_timeout", str(e)
    except (CacheError, ShardError) as e:  # they name the file and the fix
        status, reason = "data_error", str(e)
    except (profiles.ProfileError, distributed.LaunchError) as e:
        status, reason = "config_error", str(e)
    except Exception as e:  # a bug in the harness: still record the run
        import traceback

        traceback.print_exc()
        status, reason = "harness_error", f"{type(e).__name__}: {e}"

    # ---- finalization: signals are deferred from here on; the ledger row is always written
    wall = time.time() - process_start - lock_wait
    train_s = float(row.get("train_s") or 0.0)
    trainer_s = trainer_s or LAST_TRAINER.get("trainer_s", 0.0)
    timing = {"wall_s": round(wall, 3), "lock_wait_s": round(lock_wait, 3),
              "trainer_s": round(trainer_s, 3), "train_s": round(train_s, 3),
              "harness_only_s": round(wall - trainer_s, 3),
              "trainer_pid": LAST_TRAINER.get("pid"),
              "trainer_started_at": LAST_TRAINER.get("started_at"),
              "trainer_ended_at": LAST_TRAINER.get("ended_at")}
    if status == "ok" and wall > 0:
        result.metrics["harness_overhead_pct"] = round(100.0 * (wall - train_s) / wall, 2)
    rows_before = [r for r in ledger.runs(ledger_path) if r.get("run_id") != run_id]
    row.update({
        "record": "run", "status": status, "exit_reason": reason, "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ended_epoch": round(time.time(), 3),
        "wall_seconds": round(wall, 3), "timing": timing, "metrics": dict(result.metrics),
        "metric_notes": result.notes, "git": ledger.git_info(REPO_ROOT),
        "upstream_commit": _upstream_commit(), "machine": ledger.machine_info(),
        "protected_digest": checks.manifest_digest(REPO_ROOT),
        "harness_digest": checks.harness_digest(REPO_ROOT),
    })
    last_repeat = not repeat or repeat["index"] == repeat["of"] or status != "ok"
    printed = dict(result.metrics)
    if last_repeat:  # the verdict is the group's: median of the repeats, judged once
        try:
            summary = repeats.summarize(repeats.group_rows(rows_before, repeat["group"]) + [row]) \
                if repeat else None
            if summary:
                row["repeats"] = summary
            printed = repeats.apply_to_metrics(result.metrics, summary)
            row["verdict"] = verdict.for_run(row, rows_before, REPO_ROOT) if status == "ok" else \
                verdict.not_judged(f"{status}: {_one_line(reason, 200)}")
            if timeout is not None:  # pi-autoresearch must not kill what the harness lets finish
                row["verdict"]["pi_timeout_s"] = sizing.pi_timeout(timeout, grace)
        except Exception as e:  # a bug there must not cost the run its ledger row
            row["verdict"] = verdict.not_judged(f"no verdict: {type(e).__name__}: {e}")
            row["verdict"]["call"] = "inconclusive"
    if lock is not None and lock.fd is None:
        lock = None  # never acquired
    dataview.remove_view(logs_dir / "views" / run_id)
    try:
        ledger.append(row, ledger_path)
        try:
            pruned = storage.prune(logs_dir, ledger_path)  # bounded storage (autogolf/storage.py)
        except OSError as e:  # never costs the run its result
            pruned = []
            say(f"autoresearch: warning: storage prune failed: {e}")
        if pruned:
            say(f"autoresearch: storage: pruned {len(pruned)} old artifact(s)/view(s) (rule: autogolf/storage.py)")
    finally:
        if lock is not None:
            lock.release()

    code = EXIT_CODES.get(status, 1)
    if status == "interrupted":
        code = 128 + int(row.get("signal", signal.SIGTERM))
    if not last_repeat:
        say(f"autoresearch: repeat {repeat['index']}/{repeat['of']} (SEED={repeat['seed'] or 'default'}) "
            f"{status} val_bpb={result.metrics.get('val_bpb')} {budget_label(row, timeout, grace)} "
            f"log={row['log_path']}")
        return code
    if row.get("repeats"):
        say(f"autoresearch: {repeats.describe(row['repeats'])}")
    # An integrity failure prints no METRIC: its numbers are the ones the harness disowns.
    for line in metrics.metric_lines(printed) if status != "integrity_failed" else []:
        say(line)
    if status == "ok":
        m = printed
        v = row["verdict"]
        if v.get("delta") is None:
            vs_best = " (no comparable kept run)"
        else:
            # pi-autoresearch does not enforce a minimum improvement; we state it here.
            word = "improved" if v["delta"] <= -verdict.MIN_IMPROVEMENT_BPB else "not_improved"
            vs_best = f" vs_best={v['delta']:+.4f} {word}(min {verdict.MIN_IMPROVEMENT_BPB})"
        overrides = " overrides=" + ",".join(f"{k}={v}" for k, v in row["overrides"].items()) \
            if row.get("overrides") else ""
        say(f"autoresearch: ok profile={profile_name} dataset={dataset_label} "
            f"val_bpb={m['val_bpb']:.8f}{vs_best} total_bytes={m['total_bytes']:,} "
            f"headroom={m['artifact_headroom_bytes']:,} wall={wall:.1f}s train={train_s:.1f}s "
            f"overhead={m['harness_overhead_pct']:.1f}% (harness {wall - trainer_s:.1f}s)"
            f" harness_score=agrees(|diff|={row['harness_score']['abs_diff']:.1e})"
            f" {budget_label(row, timeout, grace)}{overrides} log={row['log_path']}")
    else:
        say(f"autoresearch: {status} profile={profile_name} dataset={dataset_label} "
            f"wall={wall:.1f}s {budget_label(row, timeout, grace)} log={row['console_path']} "
            f"reason: {_one_line(reason)}")
    say(verdict.format_line(row["verdict"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
