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
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from autogolf.judge import ledger
from autogolf.measure import logparse, metrics
from autogolf.fsutil import atomic_write, file_sha256
from autogolf.paths import REPO_ROOT, TRAINER_RELPATH

MANIFEST_RELPATH = Path("logs") / "protected.json"
MAX_TRAINER_LINES = 1500

# Protected paths, relative to the repository root. "dir/" = every file below it.
HARNESS_PATTERNS = ("autoresearch.sh", "autoresearch.checks.sh", "README.md", "Justfile",
                    ".gitignore", "scripts/", "autogolf/", "benchmark/UPSTREAM_COMMIT.txt",
                    "pyproject.toml", "uv.lock",
                    # the shims that make pi-autoresearch run our benchmark and checks, and the
                    # agent's pins (autoresearch.md and autoresearch.ideas.md are the agent's)
                    ".auto/measure.sh", ".auto/checks.sh", "agent/package.json",
                    "agent/package-lock.json", "agent/tools.json")
DATA_PATTERNS = ("data/datasets/*/fineweb_val_*.bin", "data/datasets/*/autogolf_manifest.json",
                 "data/tokenizers/*.model", "data/tokenizers/*.vocab", ".upstream/")
# Never protected: VCS and tool caches (huggingface_hub keeps lock and metadata files under
# .cache/ that change on every download), partial downloads, and training shards -- upstream's
# downloader leaves gigabytes of them in .upstream/parameter-golf/data; they are not
# evaluation data, and hashing them on every check would cost seconds.
_SKIP_PARTS = {".git", "__pycache__", ".pytest_cache", ".cache"}
_SKIP_SUFFIXES = (".pyc", ".partial", ".incomplete", ".lock")
_SKIP_NAME = re.compile(r"^fineweb_train_\d+\.bin$")

# Modules that reach the network. The trainer reads local shards; it has no reason to talk
# to anything, and a trainer that can fetch data or weights is not a Parameter Golf entry.
NETWORK_MODULES = {
    "socket", "ssl", "urllib", "urllib2", "urllib3", "http", "httplib", "requests", "httpx",
    "aiohttp", "websocket", "websockets", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib",
    "xmlrpc", "socketserver", "asyncio", "huggingface_hub", "datasets", "fsspec", "boto3",
    "botocore", "paramiko", "pycurl", "grpc", "webbrowser",
}

# Kinds of log line (logparse) our trainer must print, with a readable name for each.
REQUIRED_LOG_LINES = {
    "model_params": "model_params:<n> ...",
    "config": "iterations:<it> train_batch_tokens:<t> ...",
    "train_loader": "train_loader:dataset:<name> train_shards:<n>",
    "val_loader": "val_loader:shards pattern=<glob> tokens:<n>",
    "backend": "backend:<...>",
    "train_step": "step:<s>/<it> train_loss:... train_time:...ms step_avg:...ms",
    "val_step": "step:<s>/<it> val_loss:... val_bpb:...",
    "serialized": "serialized_model_int8_zlib:<bytes> bytes (...)",
    "code_size": "Code size: <n> bytes",
    "total_size": "Total submission size int8+zlib: <n> bytes",
    "roundtrip": "final_int8_zlib_roundtrip val_loss:... val_bpb:... eval_time:...ms",
    "roundtrip_exact": "final_int8_zlib_roundtrip_exact val_loss:... val_bpb:...",
}


# --------------------------------------------------------------------------- protected files

def _is_skipped(path: Path) -> bool:
    # by name only: folders are pruned during the walk, so a repository that itself lives
    # under, say, ~/.cache/ is still protected
    return path.name.endswith(_SKIP_SUFFIXES) or bool(_SKIP_NAME.match(path.name))


def expand(patterns: list[str], root: Path) -> list[Path]:
    """Files matched by the patterns (relative to root, or absolute), sorted, deduplicated."""
    found: set[Path] = set()
    for pattern in patterns:
        base = Path(pattern) if Path(pattern).is_absolute() else root / pattern
        if pattern.endswith("/"):
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS]
                found.update(Path(dirpath) / f for f in filenames)
        elif any(c in pattern for c in "*?["):
            found.update(Path(p) for p in glob.glob(str(base)) if Path(p).is_file())
        elif base.is_file():
            found.add(base)
    return sorted(p for p in found if not _is_skipped(p) and p.is_file())


def _key(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)  # outside the repository (a DATA_PATH elsewhere): absolute


def hash_files(paths: list[Path], root: Path) -> dict[str, str]:
    return {_key(p, root): file_sha256(p) for p in paths}


def harness_digest(root: Path = REPO_ROOT) -> str:
    """One sha256 over the harness files as they are now (recorded in every ledger row)."""
    digest = hashlib.sha256()
    for name, sha in hash_files(expand(list(HARNESS_PATTERNS), root), root).items():
        digest.update(f"{name} {sha}\n".encode())
    return digest.hexdigest()


def data_patterns_for(dataset_dir: Path | None, tokenizer_path: Path | None, root: Path) -> list[str]:
    """The repository's data patterns, plus the run's own dataset when it lives elsewhere."""
    patterns = list(DATA_PATTERNS)
    if dataset_dir is not None:
        d = Path(dataset_dir).resolve()
        if _key(d, root.resolve()) == str(d):  # outside the repository
            patterns += [str(d / "fineweb_val_*.bin"), str(d / "autogolf_manifest.json")]
    if tokenizer_path is not None:
        t = Path(tokenizer_path).resolve()
        if _key(t, root.resolve()) == str(t):
            patterns.append(str(t))
    return patterns


def manifest_path(root: Path = REPO_ROOT) -> Path:
    return Path(root) / MANIFEST_RELPATH


def manifest_digest(root: Path = REPO_ROOT) -> str | None:
    path = manifest_path(root)
    return file_sha256(path) if path.is_file() else None


def _git_head(root: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def record_manifest(root: Path = REPO_ROOT, dataset_dir: Path | None = None,
                    tokenizer_path: Path | None = None) -> dict:
    """Hash every protected file now and write logs/protected.json (atomically)."""
    root = Path(root)
    patterns = list(HARNESS_PATTERNS) + data_patterns_for(dataset_dir, tokenizer_path, root)
    manifest = {
        "version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_commit": _git_head(root),
        "patterns": patterns,
        "files": hash_files(expand(patterns, root), root),
    }
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return manifest


def ensure_manifest(root: Path = REPO_ROOT, dataset_dir: Path | None = None,
                    tokenizer_path: Path | None = None) -> tuple[dict | None, str]:
    """(manifest, message). Records it on first use; refuses to re-record one that a
    previous run already relied on (its digest is in the ledger) -- that is a deletion."""
    path = manifest_path(root)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), ""
        except ValueError:
            return None, f"{path}: unreadable protected-file manifest; re-baseline with `just protect`"
    rows, _ = ledger.read(ledger.default_path(root))
    if any(row.get("protected_digest") for row in rows):
        return None, (f"{path} is missing, but earlier runs in {ledger.default_path(root)} recorded "
                      f"one: it was deleted. Restore the protected files (`git checkout -- .`), "
                      f"then re-baseline deliberately with `just protect`")
    manifest = record_manifest(root, dataset_dir, tokenizer_path)
    return manifest, (f"recorded {len(manifest['files'])} protected files in {path} "
                      f"(first use; `just protect` re-records)")


def check_protected(root: Path = REPO_ROOT) -> list[str]:
    root = Path(root)
    manifest, message = ensure_manifest(root)
    if manifest is None:
        return [message]
    if message:
        print(f"checks: {message}")
    recorded: dict[str, str] = manifest.get("files", {})
    current_paths = expand(manifest.get("patterns", []), root)
    current = {_key(p, root): p for p in current_paths}
    problems = []
    for name, sha in sorted(recorded.items()):
        path = current.get(name)
        if path is None:
            problems.append(f"protected file {name} is missing; restore it (`git checkout -- {name}` "
                            f"for harness files, `just bootstrap` / `just verify-data` for data)")
        elif file_sha256(path) != sha:
            problems.append(f"protected file {name} was modified; the evaluation, data and harness "
                            f"are off limits: restore it (`git checkout -- {name}` for harness "
                            f"files) and change only benchmark/train_gpt_mlx.py")
    for name in sorted(set(current) - set(recorded)):
        problems.append(f"new file {name} inside a protected location; remove it (only "
                        f"benchmark/train_gpt_mlx.py may change)")
    return problems


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
