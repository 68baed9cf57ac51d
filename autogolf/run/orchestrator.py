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
cache autogolf.data.cache.resolve_dataset picks), AUTOGOLF_LOOP (1 under the agent loop).

Before anything else the harness files are compared with HEAD (judge/protected.py): under
the loop the changed ones are restored from HEAD and the run goes on, on the restored code,
with `restored_from_head` in its row and on its summary line; outside it the run refuses
(config_error) and prints the command that restores them.

Exit status: 0 only when a post-round-trip val_bpb under the artifact cap was produced.
  1 crash (trainer failed, or no val_bpb)   2 data cache, profile or setting problem (the
  3 artifact over 16,000,000 bytes            trainer's own exit 2 included: a bad setting)
  4 integrity failed: the harness's own score of the artifact disagrees with the trainer's,
    the causality probe failed (autogolf/measure/score.py), or the log's size line
    disagrees with the files (measure/metrics.harness_sizes)
  5 over budget: a wall-clock budget's trainer outlived the budget + the profile's allowance
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
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from autogolf import kernelcache, paths, sandbox, settings
from autogolf.data import dataview, shardstate
from autogolf.data.cache import CacheError, resolve_dataset, verify_cache
from autogolf.data.shards import ShardError
from autogolf.fsutil import file_sha256
from autogolf.judge import integrity, ledger, repeats, verdict
from autogolf.judge import protected
from autogolf.judge.protected import ensure_manifest, harness_digest, manifest_digest
from autogolf.measure import logparse, metrics, score
from autogolf.paths import REPO_ROOT
from autogolf.run import budget, distributed, outcome, outputs, probe, profiles, sizing, storage
from autogolf.run.blas import preload_env
from autogolf.run.outcome import EXIT_CODES
from autogolf.run.runlock import RunLock
from autogolf.run.trainer import ProcessFacts, StopFlag, read_text, run_trainer
from autogolf.settings import SettingError
from autogolf.textutil import one_line, say


# --------------------------------------------------------------------------- helpers

def _best_before(rows: list[dict], row: dict) -> float | None:
    """The best val_bpb of the earlier KEPT runs comparable with this one (verdict.is_kept and
    comparison_key, as the VERDICT compares them): the holdout is scored only for a run
    that could beat it (measure/score.holdout_threshold). The row has no machine yet (that is
    filled in at the end), so this machine's is used for the comparison."""
    key = verdict.comparison_key(dict(row, machine=row.get("machine") or ledger.machine_info()))
    values = [e.val_bpb for e in verdict.kept_experiments(rows, verdict.kept_trainer_hashes(REPO_ROOT))
              if e.key == key]
    return min(values) if values else None


def _int(raw: str, name: str) -> int:
    try:
        return int(raw or "0")
    except ValueError:
        raise profiles.ProfileError(f"{name}={raw!r} is not an integer; fix that setting") from None


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
    path = paths.UPSTREAM_COMMIT_FILE
    return path.read_text().strip() if path.is_file() else None


def _env_seconds(name: str, default: float) -> float:
    raw = settings.get(name)
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
        start = float(settings.get("AUTOGOLF_START_TIME").replace(",", "."))
        if 0 <= now - start < 60:  # ignore a stale value inherited from an outer run
            return start
    except ValueError:
        pass
    return min(psutil.Process().create_time(), now)


def prune_raw_model(logs_dir: Path, run_id: str) -> None:
    """The trainer also saves the raw fp32 weights (4 bytes/parameter: 68 MB for the
    baseline). Only the int8+zlib artifact is scored, and a 200-experiment session would
    pile up ~14 GB of raw copies, so they go unless AUTOGOLF_KEEP_RAW_MODEL=1."""
    if settings.get("AUTOGOLF_KEEP_RAW_MODEL") == "1":
        return
    for path in logs_dir.glob(f"{glob_escape(run_id)}_*.npz"):
        path.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --------------------------------------------------------------------------- the harness at HEAD

def harness_python_flags() -> list[str]:
    """The flags this harness process runs under (autoresearch.sh sets them): no PYTHON*
    variables, no user site, and bytecode kept in a private cache, never a repo __pycache__
    anyone could have written."""
    flags = (["-E"] if sys.flags.ignore_environment else []) + (["-s"] if sys.flags.no_user_site else [])
    return flags + (["-X", f"pycache_prefix={sys.pycache_prefix}"] if sys.pycache_prefix else [])


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _restored_record() -> dict | None:
    """What this process restored before it re-executed itself (AUTOGOLF_RESTORED). Trusted
    only with this pid: exec keeps the pid, so a value inherited from any other process
    (an outer run, the agent's environment) is ignored."""
    pid, _, text = settings.get("AUTOGOLF_RESTORED").partition(" ")
    if pid != str(os.getpid()):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _refuse(reason: str) -> int:
    say(f"autoresearch: config_error: {reason}")
    say(verdict.format_line(verdict.not_judged(f"config_error: {one_line(reason, 300)}")))
    return EXIT_CODES["config_error"]


def _harness_at_head(argv: list[str]) -> tuple[dict | None, int | None]:
    """(what was restored from HEAD before this run, or None; an exit code when the run must
    not start). Harness files (judge/protected.py) that differ from HEAD are the agent's
    edits of the evaluation. Under the loop (AUTOGOLF_LOOP=1) they are restored and this
    process re-executes itself, since the code it already imported may be the edited code;
    the new process records what was restored (AUTOGOLF_RESTORED). Outside the loop the
    run refuses, printing the one command that restores them: a person decides."""
    changed, added = protected.head_drift(REPO_ROOT)
    if not changed and not added:
        return _restored_record(), None
    names, command = changed + added, protected.restore_command(changed, added)
    if settings.get("AUTOGOLF_LOOP") != "1":
        return None, _refuse(f"harness files differ from HEAD ({_names(names)}): the evaluation is "
                             f"not the experiment's to change. Restore them with: {command}   (a "
                             f"deliberate harness change: commit it, then `just protect`)")
    if _restored_record() is not None:  # restored once already and still different: no exec loop
        return None, _refuse(f"harness files still differ from HEAD after a restore ({_names(names)}); "
                             f"restore them by hand: {command}")
    problem = protected.restore_from_head(REPO_ROOT, changed, added)
    if problem:
        return None, _refuse(f"could not restore the harness files from HEAD ({_names(names)}): {problem}")
    say(f"autoresearch: restored {len(names)} protected file(s) from HEAD before the run "
        f"(AUTOGOLF_LOOP=1): {_names(names)}; restarting on the restored harness")
    env = dict(os.environ, AUTOGOLF_RESTORED=f"{os.getpid()} {json.dumps({'files': changed, 'removed': added})}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *harness_python_flags(), "-m", "autogolf.run", *argv], env)
    return None, EXIT_CODES["harness_error"]  # not reached


# --------------------------------------------------------------------------- the run's state

@dataclass
class RunState:
    """Everything one run (one repeat) knows, passed from step to step: no module globals."""
    profile_name: str
    run_id: str
    repeat: dict | None
    stop: StopFlag
    process_start: float
    trainer: Path
    row: dict
    logs_dir: Path = paths.LOGS_DIR
    status: str = "harness_error"
    reason: str = ""
    result: metrics.MetricsResult = field(default_factory=metrics.MetricsResult)
    profile: profiles.Profile | None = None
    lock: RunLock | None = None
    lock_wait: float = 0.0
    dataset_label: str = "?"
    dataset_dir: Path | None = None
    tokenizer_path: Path | None = None
    trainer_bytes: int = 0
    size_problem: str | None = None  # the log's size line disagrees with the files (metrics.harness_sizes)
    env: dict = field(default_factory=dict)
    launch: dict | None = None
    timeout: float = 0.0  # 0 until resolved
    grace: float = 0.0
    projection: sizing.Projection | None = None  # the trainer's projected lifetime
    trainer_facts: ProcessFacts = field(default_factory=ProcessFacts)  # the trainer's, not the scorer's
    trainer_outcome: dict = field(default_factory=dict)
    rank_note: str = ""
    wall: float = 0.0
    train_s: float = 0.0
    printed: dict = field(default_factory=dict)
    last_repeat: bool = True
    integrity_before: dict = field(default_factory=dict)  # hashes taken before the trainer started

    @property
    def log_path(self) -> Path:
        return self.logs_dir / f"{self.run_id}.txt"

    @property
    def console_path(self) -> Path:
        return self.logs_dir / f"{self.run_id}.console.txt"

    @property
    def ledger_path(self) -> Path:
        return ledger.default_path(REPO_ROOT)

    @property
    def artifact(self) -> Path:
        return self.logs_dir / f"{self.run_id}_mlx_model.int8.ptz"

    @property
    def view_dir(self) -> Path:
        return self.logs_dir / "views" / self.run_id

    @property
    def out_dir(self) -> Path:
        """The only place the sandboxed trainer may write; its log and artifact are moved
        into logs/ afterwards (outputs.collect), and the rest goes with the folder."""
        return self.logs_dir / "work" / self.run_id


def _begin(profile_name: str, run_id: str, repeat: dict | None, stop: StopFlag,
           restored: dict | None = None) -> RunState:
    """The run's state and its first ledger entry: in the ledger from the first moment, so
    even a kill -9 of this process leaves a trace (the next run or `just ledger` records it
    as lost); earlier lost runs are settled now."""
    process_start = _start_time() if not repeat or repeat["index"] == 1 else time.time()
    trainer = Path(settings.get("AUTOGOLF_TRAINER") or paths.TRAINER).resolve()
    state = RunState(profile_name=profile_name, run_id=run_id, repeat=repeat, stop=stop,
                     process_start=process_start, trainer=trainer, row={})
    state.row = {"run_id": run_id, "status": None, "exit_reason": "",
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": profile_name,
                 "log_path": str(state.log_path.relative_to(REPO_ROOT)),
                 "console_path": str(state.console_path.relative_to(REPO_ROOT))}
    if repeat:
        state.row["repeat"] = {k: repeat[k] for k in ("group", "index", "of", "seed")}
    if restored:  # every row of the group: the restore came before all of them
        state.row["restored_from_head"] = restored
    ledger.reconcile(state.ledger_path)
    ledger.append_start(run_id, state.ledger_path, profile=profile_name, started_epoch=round(process_start, 3),
                        log_path=state.row["log_path"], console_path=state.row["console_path"],
                        **({"repeat": state.row["repeat"]} if repeat else {}))
    return state


# --------------------------------------------------------------------------- steps before the trainer

def _load_profile(state: RunState) -> None:
    """The profile and the training budget it gets on this machine (run/budget.py)."""
    profile = state.profile = profiles.load(state.profile_name)
    state.row["budget"] = budget.apply(profile, os.environ, REPO_ROOT)
    state.row["settings"] = dict(profile.resolved)
    state.row["overrides"] = dict(profile.overrides)
    say(f"autoresearch: run {state.run_id} profile={profile.name}: "
        f"{one_line(profile.description, 160)}")


def _take_lock(state: RunState) -> None:
    state.stop.check()
    state.lock = RunLock(run_id=state.run_id, report=say)
    try:
        state.lock.acquire(poll=state.stop.check)
    finally:
        state.lock_wait = state.lock.waited_seconds


def _check_data(state: RunState) -> None:
    """The data cache, fast (headers, sizes, manifest, tokenizer), then every shard against
    the manifest: stat unchanged, or re-hashed (data/shardstate.py)."""
    state.dataset_dir, state.tokenizer_path, _ = resolve_dataset(paths.DATA_DIR)
    report = verify_cache(state.dataset_dir, state.tokenizer_path, deep=False)
    is_fineweb = bool(report["is_fineweb"])
    state.dataset_label = f"{report['dataset']} ({'FineWeb' if is_fineweb else 'NOT FineWeb'})"
    state.row["dataset"] = {"name": report["dataset"], "fingerprint": report["fingerprint"],
                            "is_fineweb": is_fineweb, "dir": str(state.dataset_dir),
                            "tokenizer": str(state.tokenizer_path), "splits": report["splits"]}
    shards = shardstate.require_verified(state.dataset_dir)
    state.row["shard_check"] = {"hashed": shards["hashed"], "hashed_bytes": shards["hashed_bytes"],
                                "seconds": shards["seconds"], "shards": len(shards["shards"])}


def _check_trainer(state: RunState) -> None:
    """The trainer exists and is recorded; the protected-file manifest exists (first use)."""
    trainer = state.trainer
    if not trainer.is_file():
        raise profiles.ProfileError(f"{trainer}: trainer script not found; restore it with "
                                    f"`git checkout -- benchmark/train_gpt_mlx.py` or fix "
                                    f"AUTOGOLF_TRAINER")
    trainer_text = trainer.read_bytes()
    state.trainer_bytes = len(trainer_text)
    state.row["trainer"] = {"path": str(trainer), "sha256": file_sha256(trainer),
                            "bytes": len(trainer_text), "lines": trainer_text.count(b"\n")}
    _, message = ensure_manifest(REPO_ROOT, state.dataset_dir, state.tokenizer_path)
    if message:
        say(f"autoresearch: {message}")


def _prepare_environment(state: RunState) -> None:
    """The trainer's environment: the profile, the repeat's seed, a per-run data view with the
    train shards and only the selection slice of val, the BLAS preload, NPROC / HOSTS."""
    state.stop.check()
    profile, row = state.profile, state.row
    env = dict(os.environ)
    env.update(profile.resolved)
    env.update(repeats.environ_for(state.repeat, env))
    env.pop("DATA_PATH", None)
    view_dir, row["data_view"] = dataview.build_view(
        state.dataset_dir, state.view_dir, _int(env.get("VAL_MAX_TOKENS", "0"), "VAL_MAX_TOKENS"),
        profile.holdout_tokens)
    shutil.rmtree(state.out_dir, ignore_errors=True)
    state.out_dir.mkdir(parents=True)
    env.update({"DATA_PATH": str(view_dir), "TOKENIZER_PATH": str(state.tokenizer_path),
                "RUN_ID": state.run_id, "OUT_DIR": str(state.out_dir), "PYTHONUNBUFFERED": "1"})
    # the trainer's hook imports THIS checkout's harness package (the one the sandbox lets it
    # read), not whichever one the venv's editable install points at
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env = state.env = preload_env(env)  # optimized BLAS on Linux CPU (autogolf/run/blas.py)
    row["settings"] = _settings(state.trainer, env, profile)
    row["blas_preload"] = env.get("LD_PRELOAD", "")
    state.launch = row["distributed"] = distributed.plan(env)  # NPROC / HOSTS: mlx.launch
    if state.launch:
        distributed.require_support(state.trainer)
    row["sandbox"] = sandbox.record()
    row["settings"].update({k: env[k] for k in ("NPROC", "HOSTS") if env.get(k)})


def _resolve_timeout(state: RunState) -> None:
    """The hard timeout and the kill grace; the lock says until when the run may hold it
    (+ evaluation and bookkeeping). A sized profile (breadth) is first sized to this machine
    -- a probe, once -- and its timeout follows the expected time (run/sizing.py); others
    take the profile's timeout_seconds. AUTOGOLF_TIMEOUT wins over both."""
    state.grace = _env_seconds("AUTOGOLF_KILL_GRACE_SECONDS", float(settings.default("AUTOGOLF_KILL_GRACE_SECONDS")))
    fixed = _env_seconds("AUTOGOLF_TIMEOUT", state.profile.timeout_seconds)
    sized = _size_to_machine(state) if state.profile.sizing is not None else None
    state.timeout = fixed if sized is None else _env_seconds("AUTOGOLF_TIMEOUT", sized)
    state.lock.set_deadline(time.time() + state.timeout + 2 * state.grace + 60)


def _size_to_machine(state: RunState) -> float | None:
    """Probe this machine once (run/probe.py) and put its budget choice into the profile;
    then the sized hard timeout, recorded in row["sizing"]. None: the profile's own
    (AUTOGOLF_SIZING=off, a failed probe, or a budget that is not in tokens)."""
    profile, row = state.profile, state.row
    mode = settings.get("AUTOGOLF_SIZING")
    if mode not in ("on", "off"):
        raise profiles.ProfileError(f"AUTOGOLF_SIZING={mode!r}: use on (the default) or off")
    if mode == "off":
        row["sizing"] = {"state": "off (AUTOGOLF_SIZING=off): the profile's budget and timeout"}
        return None
    probed_now = probe.needs_probe(profile, REPO_ROOT)
    if probed_now:
        state.lock.set_deadline(time.time() + probe.PROBE_TIMEOUT_SECONDS + 2 * state.grace + 60)

        def spawn(cmd, probe_env, console, limit, on_line):  # the probe is sandboxed as a run is
            cmd, probe_env = sandbox.wrap(cmd, probe_env, _jail(state, console.parent))
            return run_trainer(cmd, probe_env, console, limit, state.grace, state.lock, state.stop,
                               on_line=on_line)

        try:
            probe.size(profile, state.env, REPO_ROOT, spawn, say)
        except sizing.SizingError as e:
            say(f"autoresearch: warning: sizing failed: {e}; this run keeps the profile's budget "
                f"and {profile.timeout_seconds:g} s timeout, and the next run probes again")
            row["sizing"] = {"state": f"probe failed: {e}"}
            return None
        row["budget"] = budget.apply(profile, os.environ, REPO_ROOT)  # the new choice
        state.env.update(profile.resolved)
        row["settings"] = _settings(state.trainer, state.env, profile)
        row["settings"].update({k: state.env[k] for k in ("NPROC", "HOSTS") if state.env.get(k)})
    record = budget.sizing_record(budget.read_machine_file(budget.machine_path(REPO_ROOT)), profile.name)
    if record is None or row["budget"]["kind"] != "tokens":
        return None
    tokens = int(row["budget"]["value"])
    expected, basis = sizing.expected_trainer_s(record, tokens, profile.sizing.probe_allowance)
    then = ((record.get("measured") or {}) if basis.startswith("measured") else record["probe"]).get("sgemm_gflops")
    # Right after this run's own probe the machine is as measured: a second sgemm reading
    # seconds later swung by 1.6x here (noise), and would only stretch the timeout for nothing.
    now = then if probed_now else probe.machine_gflops()
    factor = sizing.slowdown(then, now)
    timeout = sizing.hard_timeout(profile.sizing, expected, factor)
    row["sizing"] = {"state": "sized", "tokens": tokens, "chosen_tokens": record.get("tokens"),
                     "expected_trainer_s": round(expected, 1), "basis": basis,
                     "sgemm_gflops": now, "sgemm_gflops_then": then, "slowdown": round(factor, 3),
                     "timeout_s": timeout, "tail_s": record["probe"].get("tail_s", 0.0),
                     "probe_at": record["probe"].get("at"), "train_tok_s": record["probe"].get("train_tok_s"),
                     "trainer_sha256": record["probe"].get("trainer_sha256")}
    if factor > 1.2:
        say(f"autoresearch: this machine is {factor:.1f}x slower than when {profile.name} was sized "
            f"(sgemm {now} vs {then} GFLOP/s): the timeout stretches to {timeout:g} s; the budget "
            f"stays (comparable runs); `just calibrate --quick` re-sizes it (a new baseline)")
    return timeout


# --------------------------------------------------------------------------- the trainer and its result

def _train(state: RunState) -> None:
    """The trainer under the hard timeout; its raw weights go, its artifact is recorded."""
    row = state.row
    say(f"autoresearch: dataset={state.dataset_label} trainer={state.trainer.name} "
        f"{outcome.budget_label(row, state.timeout, state.grace)} log={state.log_path.relative_to(REPO_ROOT)}")
    command = distributed.trainer_command(sys.executable, state.trainer, state.launch, REPO_ROOT,
                                          dict(row["settings"], PYTHONUNBUFFERED="1"))
    if row["budget"]["kind"] in ("tokens", "steps"):  # a step count to project the lifetime from
        state.projection = sizing.Projection(state.timeout, float((row.get("sizing") or {}).get("tail_s") or 0.0))
    command, env = sandbox.wrap(command, state.env, _jail(state, state.out_dir))
    state.integrity_before = integrity.snapshot(REPO_ROOT, state.trainer)
    try:
        state.trainer_outcome = run_trainer(command, env, state.console_path, state.timeout, state.grace,
                                            state.lock, state.stop, facts=state.trainer_facts,
                                            on_line=state.projection)
    finally:
        row["outputs"] = outputs.collect(state.out_dir, state.logs_dir, state.run_id)
        row["outputs"]["kernels"] = kernelcache.harvest(state.out_dir / ".tmp")
    returncode = state.trainer_outcome["returncode"] = sandbox.child_returncode(state.trainer_outcome["returncode"])
    row["returncode"], state.rank_note = distributed.rank_returncode(returncode, read_text(state.console_path)) \
        if state.launch else (returncode, "")
    prune_raw_model(state.logs_dir, state.run_id)
    row["artifact_path"] = str(state.artifact.relative_to(REPO_ROOT)) if state.artifact.is_file() else None


def _jail(state: RunState, out_dir: Path) -> sandbox.Jail:
    """What the trainer may read (its file, its data view and what the view links to, the
    tokenizer) and write (one out dir); its network: none, or loopback between the ranks
    of an NPROC run, or the network for HOSTS= (other machines)."""
    reads = [state.trainer, state.view_dir, state.tokenizer_path] + dataview.link_targets(state.view_dir)
    if state.launch and state.launch.get("hostfile"):  # mlx.launch reads it inside the jail
        reads.append(state.launch["hostfile"])
    network = "none" if not state.launch else "hosts" if "hostfile" in state.launch else "loopback"
    hosts = tuple(state.launch.get("hosts") or ()) if network == "hosts" else ()
    return sandbox.Jail(reads=[Path(p) for p in reads if p], writes=[out_dir], network=network, hosts=hosts)


def _measure(state: RunState) -> None:
    """Metrics from the trainer's own log (the console capture if it never wrote one)."""
    source = state.log_path if state.log_path.is_file() else state.console_path
    parsed = logparse.parse_file(source) if source.is_file() else logparse.ParsedLog()
    try:
        shard_tokens = metrics.train_shard_sizes(state.dataset_dir)
    except (CacheError, ShardError) as e:  # the run's result still counts
        shard_tokens = None
        say(f"autoresearch: warning: {e}")
    state.result = metrics.compute(parsed, code_bytes=state.trainer_bytes, train_shard_tokens=shard_tokens)
    artifact_bytes = state.artifact.stat().st_size if state.artifact.is_file() else None
    state.row["sizes"], state.size_problem = metrics.harness_sizes(state.result, artifact_bytes, state.trainer_bytes)
    metrics.harness_throughput(state.result, state.row.get("budget") or {}, state.trainer_facts.seconds)
    # The `backend:` line comes from the harness's CPU hook (run/cpu_speed.py), which prints
    # to the console only: upstream's log file starts with the trainer's source.
    backend = parsed.backend or (logparse.parse_file(state.console_path).backend
                                 if state.console_path.is_file() else None)
    state.row["backend"], state.row["mlx_version"] = backend, parsed.mlx_version
    state.row["train_s"] = (parsed.train_time_ms or 0) / 1000.0


def _classify(state: RunState) -> None:
    """The trainer's status (run/outcome.py); an ok run is then scored by the harness itself
    (the artifact, the causality probe, the holdout: measure/score.py)."""
    timeout_reason = (f"trainer exceeded the {state.timeout:g} s timeout (profile "
                      f"{state.profile.name}; AUTOGOLF_TIMEOUT) and was killed"
                      f"{distributed.HANG_NOTE if state.launch else ''}; "
                      f"{sizing.miss_note(_projected_at_kill(state), state.timeout)}; "
                      f"last output: {state.trainer_outcome['last_line'][:160]}")
    state.status, state.reason = outcome.trainer_status(state.trainer_outcome, state.row["returncode"],
                                                        state.result, state.console_path, timeout_reason)
    if state.rank_note and state.status != "ok":
        state.reason = f"{state.reason} ({state.rank_note})"
    changed = integrity.failure(state.integrity_before, REPO_ROOT, state.trainer)
    if changed:  # whatever the trainer's own outcome: the harness it ran beside is not the one it started with
        state.status, state.reason = "integrity_failed", changed
        return
    if state.status == "ok" and state.size_problem:
        state.status, state.reason = "integrity_failed", state.size_problem
    late = outcome.over_budget(state.row.get("budget") or {}, state.profile.over_budget_allowance_seconds,
                               state.trainer_facts.seconds)
    if state.status == "ok" and late:
        state.status, state.reason = "over_budget", late
    if state.status == "ok":
        state.status, state.reason = _score(state)


def _score(state: RunState) -> tuple[str, str]:
    """The harness scores the artifact in its own process: ("ok", "") or ("integrity_failed",
    the one-line reason). The ledger gets both numbers."""
    row = state.row

    def run(cmd, scorer_env, console, limit, cwd):  # the scorer's facts are not the trainer's
        return run_trainer(cmd, scorer_env, console, limit, state.grace, state.lock, state.stop, cwd=cwd)

    earlier = [r for r in ledger.runs(state.ledger_path) if r.get("run_id") != row["run_id"]]
    row["harness_score"], row["holdout"], failure = score.score_run(
        run, trainer=state.trainer, artifact=state.artifact, dataset_dir=state.dataset_dir,
        tokenizer=state.tokenizer_path, view=row["data_view"], env=state.env, repo_root=REPO_ROOT,
        console=state.logs_dir / f"{row['run_id']}.score.txt", timeout=state.timeout,
        trainer_bpb=state.result.metrics["val_bpb"],
        best_before=_best_before(earlier, row), keep_margin=verdict.min_improvement())
    return ("integrity_failed", failure) if failure else ("ok", "")


def _projected_at_kill(state: RunState) -> float | None:
    return state.projection.at_kill(state.trainer_facts.seconds) if state.projection else None


def _record_baseline_time(state: RunState) -> None:
    """The probed (baseline) trainer's first finished run at the chosen budget: its measured
    time becomes the expected duration the next timeouts follow (run/sizing.py)."""
    sized = state.row.get("sizing") or {}
    if state.status != "ok" or sized.get("state") != "sized" or state.repeat:
        return
    seconds = state.trainer_facts.seconds
    if budget.record_measured(budget.machine_path(REPO_ROOT), state.profile.name, sized["tokens"],
                              state.row["trainer"]["sha256"], seconds, state.run_id, sized.get("sgemm_gflops")):
        say(f"autoresearch: sizing: the baseline took {seconds:.0f} s at this budget (predicted "
            f"{sized['expected_trainer_s']:.0f} s); later timeouts follow it")


RUN_STEPS = (_load_profile, _take_lock, _check_data, _check_trainer, _prepare_environment,
             _resolve_timeout, _train, _measure, _classify, _record_baseline_time)


# --------------------------------------------------------------------------- finalization

def _complete_row(state: RunState) -> list[dict]:
    """Timing and the run's facts into its row; returns the ledger's earlier rows."""
    facts = state.trainer_facts
    wall = state.wall = time.time() - state.process_start - state.lock_wait
    train_s = state.train_s = float(state.row.get("train_s") or 0.0)
    timing = {"wall_s": round(wall, 3), "lock_wait_s": round(state.lock_wait, 3),
              "trainer_s": round(facts.seconds, 3), "train_s": round(train_s, 3),
              "harness_only_s": round(wall - facts.seconds, 3),
              "trainer_pid": facts.pid, "trainer_started_at": facts.started_at,
              "trainer_ended_at": facts.ended_at}
    if state.status == "ok" and wall > 0:
        state.result.metrics["harness_overhead_pct"] = round(100.0 * (wall - train_s) / wall, 2)
    rows_before = [r for r in ledger.runs(state.ledger_path) if r.get("run_id") != state.run_id]
    state.row.update({
        "record": "run", "status": state.status, "exit_reason": state.reason,
        "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ended_epoch": round(time.time(), 3),
        "wall_seconds": round(wall, 3), "timing": timing, "metrics": dict(state.result.metrics),
        "metric_notes": state.result.notes, "git": ledger.git_info(REPO_ROOT),
        "upstream_commit": _upstream_commit(), "machine": ledger.machine_info(),
        "protected_digest": manifest_digest(REPO_ROOT),
        "harness_digest": harness_digest(REPO_ROOT),
    })
    return rows_before


def _judge(state: RunState, rows_before: list[dict]) -> None:
    """The verdict is the group's: the median of the repeats, judged once, after the last."""
    repeat, row, status = state.repeat, state.row, state.status
    state.last_repeat = not repeat or repeat["index"] == repeat["of"] or status != "ok"
    state.printed = dict(state.result.metrics)
    if not state.last_repeat:
        return
    try:
        summary = repeats.summarize(repeats.group_rows(rows_before, repeat["group"]) + [row]) \
            if repeat else None
        if summary:
            row["repeats"] = summary
        state.printed = repeats.apply_to_metrics(state.result.metrics, summary)
        row["verdict"] = verdict.for_run(row, rows_before, REPO_ROOT) if status == "ok" else \
            verdict.not_judged(f"{status}: {one_line(state.reason, 200)}")
        if state.timeout:  # pi-autoresearch must not kill what the harness lets finish
            row["verdict"]["pi_timeout_s"] = sizing.pi_timeout(state.timeout, state.grace)
    except Exception as e:  # a bug there must not cost the run its ledger row
        row["verdict"] = verdict.not_judged(f"no verdict: {type(e).__name__}: {e}")
        row["verdict"]["call"] = "inconclusive"


def _record(state: RunState) -> None:
    """The ledger row, bounded storage (run/storage.py), then the lock goes."""
    lock = state.lock if state.lock is not None and state.lock.fd is not None else None  # None: never acquired
    dataview.remove_view(state.view_dir)
    shutil.rmtree(state.out_dir, ignore_errors=True)
    try:
        ledger.append(state.row, state.ledger_path)
        try:
            pruned = storage.prune(state.logs_dir, state.ledger_path)
        except OSError as e:  # never costs the run its result
            pruned = []
            say(f"autoresearch: warning: storage prune failed: {e}")
        if pruned:
            say(f"autoresearch: storage: pruned {len(pruned)} old artifact(s)/view(s) "
                f"(rule: autogolf/run/storage.py)")
    finally:
        if lock is not None:
            lock.release()


def _report(state: RunState) -> int:
    """The run's printed lines; its exit code."""
    code = outcome.exit_code(state.status, state.row)
    if not state.last_repeat:
        outcome.print_repeat_line(state.status, state.row, state.repeat, state.result.metrics.get("val_bpb"),
                                  outcome.budget_label(state.row, state.timeout, state.grace))
        return code
    outcome.print_summary(state.status, state.reason, state.row, state.printed, state.dataset_label,
                          state.wall, state.train_s, state.trainer_facts.seconds,
                          outcome.budget_label(state.row, state.timeout, state.grace))
    return code


def run_one(profile_name: str, run_id: str, repeat: dict | None, stop: StopFlag,
            restored: dict | None = None) -> int:
    """One benchmark run (one repeat of REPEATS): its steps, then -- with signals deferred --
    the ledger row, always, and its printed lines."""
    state = _begin(profile_name, run_id, repeat, stop, restored)
    try:
        for step in RUN_STEPS:
            step(state)
    except (Exception, outcome.Interrupted) as e:  # every failure still gets its ledger row
        state.status, state.reason = outcome.failure_status(e)
        if isinstance(e, outcome.Interrupted):
            state.row["signal"] = e.signum
    rows_before = _complete_row(state)
    _judge(state, rows_before)
    _record(state)
    return _report(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash autoresearch.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--profile", default=None,
                        help="benchmark profile from autogolf/run/profiles.toml (default: $PROFILE, else breadth)")
    args = parser.parse_args(argv)
    restored, refused = _harness_at_head(sys.argv[1:] if argv is None else list(argv))
    if refused is not None:
        return refused
    profile_name = args.profile or os.environ.get("PROFILE") or profiles.DEFAULT_PROFILE
    run_id = os.environ.get("RUN_ID") or \
        f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}-{secrets.token_hex(2)}"
    try:
        n = repeats.count(os.environ)
        plan = repeats.plan(n, run_id, os.environ) if n > 1 else [None]
    except SettingError as e:
        say(f"autoresearch: config_error: {e}")
        say(verdict.format_line(verdict.not_judged(f"config_error: {e}")))
        return EXIT_CODES["config_error"]
    stop = StopFlag()
    stop.install()
    code = 0
    for repeat in plan:
        code = run_one(profile_name, repeat["run_id"] if repeat else run_id, repeat, stop, restored)
        if stop.signal is not None or (repeat and code != 0):
            break  # interrupted, or a repeat failed: its own lines say why
    return code


if __name__ == "__main__":
    sys.exit(main())
