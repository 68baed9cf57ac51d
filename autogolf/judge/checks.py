"""The checks pi-autoresearch runs after every successful benchmark (autoresearch.checks.sh).

A failure makes the run `checks_failed`, which the agent cannot keep. They fail when:
  1. the latest run's artifact (code + int8+zlib model) exceeds 16,000,000 bytes -- read
     from the run's own log, not only from the ledger row;
  2. the latest run's log lacks a line of the log contract;
  3. the trainer imports network code (socket, urllib, requests, http, huggingface_hub, ...)
     or is longer than 1,500 lines;
  4. a shard of the latest run's data cache is not the one its manifest promises (the same
     cheap stat-then-hash check the run did before training: autogolf/data/shardstate.py);
  5. a protected file changed: the validation shards, tokenizers and cache manifests, the
     upstream checkout (.upstream/), the harness (autoresearch.sh, autoresearch.checks.sh,
     scripts/, autogolf/ including profiles.toml), README.md, Justfile, .gitignore, the
     pinned upstream commit, pyproject.toml and uv.lock.

Protected files are compared with a sha256 manifest, `logs/protected.json`: git-ignored
(so pi-autoresearch's `git checkout -- . && git clean -fd` keeps it) and recorded by
`just protect` (`python -m autogolf.judge.checks --protect`) or, failing that, by the first
benchmark run (trust on first use).

Threat model. The agent runs as the same user with a shell: nothing here can stop a
determined adversary, who could edit this file too. The target is an optimizer that, when
stuck, "fixes" the evaluation (the data, the metric, the budget, the cap) -- usually by
editing a file in the working tree, which pi then commits on keep. That is caught: every
harness and data file is hashed, and a changed, missing or added file fails the checks
before the keep. Deliberate cover-ups leave traces a human can audit: the manifest cannot
silently vanish (once a run recorded its digest in the append-only ledger, a missing
manifest fails the checks), every ledger row records the manifest digest and a digest of
the harness files as they were for that run, and `--protect` prints what it re-baselines.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from autogolf.judge import ledger
from autogolf.judge.protected import check_protected, manifest_path, record_manifest
from autogolf.measure import logparse, metrics
from autogolf.paths import REPO_ROOT, TRAINER_RELPATH

MAX_TRAINER_LINES = 1500

# Modules that reach the network. The trainer reads local shards; it has no reason to talk
# to anything, and a trainer that can fetch data or weights is not a Parameter Golf entry.
NETWORK_MODULES = {
    "socket", "ssl", "urllib", "urllib2", "urllib3", "http", "httplib", "requests", "httpx",
    "aiohttp", "websocket", "websockets", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib",
    "xmlrpc", "socketserver", "asyncio", "huggingface_hub", "datasets", "fsspec", "boto3",
    "botocore", "paramiko", "pycurl", "grpc", "webbrowser",
}

# Kinds of log line (logparse) our trainer must print, with a readable name for each: the
# lines upstream's trainer prints. The artifact's code bytes are not read from the log: they
# are the trainer file's bytes (metrics.compute), as a submission counts them.
REQUIRED_LOG_LINES = {
    "model_params": "model_params:<n> ...",
    "config": "iterations:<it> train_batch_tokens:<t> ...",
    "train_loader": "train_loader:dataset:<name> train_shards:<n>",
    "val_loader": "val_loader:shards pattern=<glob> tokens:<n>",
    "train_step": "step:<s>/<it> train_loss:... train_time:...ms step_avg:...ms",
    "val_step": "step:<s>/<it> val_loss:... val_bpb:...",
    "serialized": "serialized_model_int8_zlib:<bytes> bytes (...)",
    "roundtrip": "final_int8_zlib_roundtrip val_loss:... val_bpb:... eval_time:...ms",
    "roundtrip_exact": "final_int8_zlib_roundtrip_exact val_loss:... val_bpb:...",
}


# --------------------------------------------------------------------------- trainer

def _imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module"):  # dynamic imports with a literal name
                found.append((node.args[0].value, node.lineno))
    return found


def check_trainer(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        return [f"{path}: the trainer is missing; restore it with `git checkout -- {path.name}`"]
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = []
    lines = len(text.splitlines())
    if lines > MAX_TRAINER_LINES:
        problems.append(f"{path}: {lines} lines, over upstream's {MAX_TRAINER_LINES}-line limit; "
                        f"simplify it")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        return problems + [f"{path}:{e.lineno}: does not parse ({e.msg})"]
    for module, lineno in _imported_modules(tree):
        top = module.split(".")[0]
        if top in NETWORK_MODULES:
            problems.append(f"{path}:{lineno}: imports {module}, which can reach the network; the "
                            f"trainer must only read the local data cache; remove the import")
    return problems


# --------------------------------------------------------------------------- latest run

def check_latest_run(root: Path = REPO_ROOT) -> list[str]:
    root = Path(root)
    path = ledger.default_path(root)
    row = latest_run(path)
    if row is None:
        return [f"{path}: no run recorded; run `bash autoresearch.sh` first"]
    run = row.get("run_id", "?")
    if row.get("status") != "ok":
        return [f"latest run {run} did not succeed (status {row.get('status')}: "
                f"{row.get('exit_reason')})"]
    log_path = Path(row.get("log_path") or "")
    if not log_path.is_absolute():
        log_path = root / log_path
    if not log_path.is_file():
        return [f"latest run {run}: its log {log_path} is missing"]
    parsed = logparse.parse_file(log_path)
    problems = [f"latest run {run}: log {log_path} lacks the line `{shape}`"
                for kind, shape in REQUIRED_LOG_LINES.items() if kind not in parsed.kinds]
    trainer = Path((row.get("trainer") or {}).get("path") or root / TRAINER_RELPATH)
    code_bytes = trainer.stat().st_size if trainer.is_file() else None
    result = metrics.compute(parsed, code_bytes=code_bytes)
    total = result.metrics.get("total_bytes")
    recorded = (row.get("metrics") or {}).get("total_bytes")
    if total is None:
        problems.append(f"latest run {run}: no artifact size in {log_path}")
    elif total > metrics.ARTIFACT_CAP_BYTES:
        problems.append(f"latest run {run}: artifact is {total:,} bytes, over the "
                        f"{metrics.ARTIFACT_CAP_BYTES:,}-byte cap by {total - metrics.ARTIFACT_CAP_BYTES:,}; "
                        f"shrink the model or its export")
    if recorded is not None and total is not None and recorded != total:
        problems.append(f"latest run {run}: ledger says total_bytes={recorded} but its log says "
                        f"{total}; the ledger or the log was altered")
    return problems


def latest_run(path: Path) -> dict | None:
    """The last run that has finished (a run still going, or lost, has nothing to check)."""
    finished = [r for r in ledger.runs(path) if ledger.record_kind(r) == "run" and r.get("status") != "lost"]
    return finished[-1] if finished else None


def check_shards(root: Path = REPO_ROOT) -> list[str]:
    """The latest run's shards, after it ran, against its cache manifest."""
    from autogolf.data.cache import CacheError
    from autogolf.data import shardstate

    row = latest_run(ledger.default_path(root))
    dataset_dir = ((row or {}).get("dataset") or {}).get("dir")
    if not dataset_dir:
        return []
    try:
        message = shardstate.problem(dataset_dir, shardstate.shard_states(Path(dataset_dir)))
    except CacheError as e:
        message = str(e)
    return [message] if message else []


def run_checks(root: Path = REPO_ROOT, trainer: Path | None = None) -> list[str]:
    root = Path(root)
    trainer = trainer or root / TRAINER_RELPATH
    return check_latest_run(root) + check_trainer(trainer) + check_shards(root) + check_protected(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.judge.checks",
                                     description="Post-benchmark checks: artifact cap, log contract, "
                                                 "trainer imports and size, protected files.")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--protect", action="store_true",
                        help="(re)record the protected-file manifest from the files as they are now "
                             "(this is `just protect`; run it only when the harness or data changed on purpose)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.protect:
        manifest = record_manifest(args.root, os.environ.get("DATA_PATH"), os.environ.get("TOKENIZER_PATH"))
        print(f"protect: recorded {len(manifest['files'])} files at commit "
              f"{(manifest['base_commit'] or '?')[:12]} in {manifest_path(args.root)}")
        return 0
    problems = run_checks(args.root)
    elapsed = time.monotonic() - start
    # The ledger records the outcome against the run checked, so the best-so-far and the
    # verdicts can leave out runs that failed their checks.
    ledger_path = ledger.default_path(args.root)
    latest = latest_run(ledger_path)
    if latest is not None:
        ledger.append_checks(latest["run_id"], not problems, problems, ledger_path)
    for problem in problems:
        print(f"checks: FAIL {problem}")
    if problems:
        print(f"checks: FAILED ({len(problems)} problem{'s' if len(problems) > 1 else ''}, {elapsed:.1f} s)")
        return 1
    print(f"checks: ok (artifact under the cap, log contract complete, trainer clean, "
          f"shards verified, protected files unchanged; {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
