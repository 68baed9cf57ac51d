"""Helpers for the benchmark-harness tests: a tiny real dataset and a throw-away project copy.

The dataset is built the way the real cache is: a 1024-piece tokenizer, 200 documents (the
real ones from ../shared/fixtures when present, else the project's stand-ins; see
conftest.corpus), BOS before each document, upstream's shard format, our manifest. The project
copy is a real git repository holding the harness files as they are in this checkout, with
this checkout's .venv linked in, so `bash autoresearch.sh` runs there for real and writes
its logs, ledger and protected-file manifest there, never here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from conftest import REPO, Corpus

PROJECT_FILES = ("autoresearch.sh", "autoresearch.checks.sh", "autoresearch.md", "autoresearch.ideas.md",
                 "README.md", "Justfile", ".gitignore", "pyproject.toml", "autogolf", "scripts",
                 "benchmark", ".auto", "agent")
METRIC_RE = re.compile(r"^METRIC\s+([\w.µ]+)=(\S+)\s*$")
VAL_DOCS = 12


def make_tiny_dataset(root: Path, corpus: Corpus) -> tuple[Path, Path]:
    """root/datasets/tiny_sp1024 (val: first VAL_DOCS docs; train: the rest in 2 shards)
    and root/tokenizers/tiny_1024_bpe.model. Returns (dataset_dir, tokenizer_path)."""
    import sentencepiece as spm

    from autogolf.data.cache import write_manifest
    from autogolf.data.shards import write_shard

    tokenizer = root / "tokenizers" / "tiny_1024_bpe.model"
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus.tokenizer, tokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    docs = corpus.texts()
    encoded = [[sp.bos_id()] + sp.encode(d.replace("\0", " ").strip()) for d in docs]
    dataset = root / "datasets" / "tiny_sp1024"
    val = np.concatenate([np.array(e, dtype=np.uint16) for e in encoded[:VAL_DOCS]])
    train_docs = encoded[VAL_DOCS:]
    half = len(train_docs) // 2
    write_shard(dataset / "fineweb_val_000000.bin", val)
    for i, part in enumerate((train_docs[:half], train_docs[half:])):
        write_shard(dataset / f"fineweb_train_{i:06d}.bin",
                    np.concatenate([np.array(e, dtype=np.uint16) for e in part]))
    source = "tests: 200 real FineWeb docs (fixtures)" if corpus.real else "tests: 200 stand-in docs"
    write_manifest(dataset, tokenizer, source=source, is_fineweb=False)
    return dataset, tokenizer


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True,
                          text=True).stdout


def make_project(dst: Path) -> Path:
    """A git repository with this checkout's harness files, committed, and .venv linked."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", "log.jsonl"))
        elif src.is_file():
            shutil.copy2(src, dst / name)
    os.symlink(REPO / ".venv", dst / ".venv")
    # the installed agent (scripts/setup-agent.sh) is shared, like .venv, when it is there
    if (REPO / "agent" / "node_modules").is_dir():
        os.symlink(REPO / "agent" / "node_modules", dst / "agent" / "node_modules")
    if (REPO / ".tools").is_dir():
        os.symlink(REPO / ".tools", dst / ".tools")
    git(dst, "init", "-q")
    git(dst, "config", "user.email", "tests@example.com")
    git(dst, "config", "user.name", "tests")
    # /.venv/ in .gitignore matches directories only; here .venv is a symlink
    (dst / ".git" / "info" / "exclude").write_text(".venv\n.tools\nagent/node_modules\n")
    git(dst, "add", "-A")
    git(dst, "commit", "-q", "-m", "harness under test")
    return dst


def bench_env(dataset: Path, tokenizer: Path, lock_path: Path, **extra: str) -> dict:
    env = dict(os.environ)
    for key in ("PROFILE", "RUN_ID", "AUTOGOLF_TRAINER", "AUTOGOLF_TIMEOUT", "LD_PRELOAD"):
        env.pop(key, None)
    env.update({"PROFILE": "smoke", "DATA_PATH": str(dataset), "TOKENIZER_PATH": str(tokenizer),
                "AUTOGOLF_LOCK_PATH": str(lock_path), "AUTOGOLF_LOCK_WAIT_SECONDS": "300",
                "AUTOGOLF_KILL_GRACE_SECONDS": "3"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_bench(project: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "autoresearch.sh"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def metric_lines(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for line in stdout.splitlines() if (m := METRIC_RE.match(line))}


def summary_line(stdout: str) -> str:
    """The `autoresearch: ...` summary: the line before the VERDICT line, which is last."""
    lines = stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("VERDICT "), lines[-1]
    return lines[-2]


def ledger_rows(project: Path) -> list[dict]:
    from autogolf.judge import ledger

    rows, skipped = ledger.read(project / "logs" / "runs.jsonl")
    assert skipped == 0
    return ledger.fold(rows)  # one dict per run: start, result and checks lines merged


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def make_synth_dataset(root: Path) -> tuple[Path, Path]:
    """A small offline-default cache (project-made data and tokenizer: no fixtures needed).
    Returns (dataset_dir, tokenizer_path)."""
    from autogolf.data.synth import build_synth

    manifest, _ = build_synth(root, val_docs=120, train_docs=1200, shard_tokens=300_000,
                              tokenizer_train_docs=400)
    from autogolf.data.cache import manifest_tokenizer_path

    dataset = root / "datasets" / manifest["dataset"]
    return dataset, manifest_tokenizer_path(dataset, manifest)  # the manifest's path is relative
