"""autoresearch.checks.sh: passes after a real successful run, and catches each violation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from autoresearch_helpers import bench_env, make_project, make_tiny_dataset, run_bench
from autogolf.judge import checks, ledger
from conftest import REPO


@pytest.fixture(scope="module")
def base_project(tmp_path_factory, corpus):
    """A project whose data cache and upstream checkout live inside it (as `just bootstrap`
    makes them), after one successful smoke run."""
    if not (REPO / "benchmark" / "train_gpt_mlx.py").is_file():
        pytest.skip("benchmark/train_gpt_mlx.py is not there yet")
    root = tmp_path_factory.mktemp("checks")
    project = make_project(root / "project")
    dataset, tokenizer = make_tiny_dataset(project / "data", corpus)
    upstream = project / ".upstream" / "parameter-golf"
    upstream.mkdir(parents=True)
    (upstream / "train_gpt_mlx.py").write_text("# upstream's trainer stands here\n")
    out = run_bench(project, bench_env(dataset, tokenizer, root / "machine.lock"))
    assert out.returncode == 0, out.stdout[-2000:]
    return project


@pytest.fixture
def project(base_project, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(base_project, copy, symlinks=True)
    return copy


def run_checks(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True,
                          text=True, timeout=300)


def assert_fails(project: Path, *needles: str) -> str:
    out = run_checks(project)
    assert out.returncode == 1, out.stdout
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("checks: FAILED")
    for needle in needles:
        assert needle in out.stdout, out.stdout
    return out.stdout


def latest_log(project: Path) -> Path:
    return project / ledger.runs(project / "logs" / "runs.jsonl")[-1]["log_path"]


def test_clean_run_passes(project):
    out = run_checks(project)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[-1].startswith("checks: ok")
    manifest = json.loads((project / "logs" / "protected.json").read_text())
    names = set(manifest["files"])
    assert {"autoresearch.sh", "autoresearch.checks.sh", "README.md", "Justfile",
            "autogolf/run/profiles.toml", "scripts/extract_parameter_golf_metrics.py",
            "data/datasets/tiny_sp1024/fineweb_val_000000.bin",
            "data/tokenizers/tiny_1024_bpe.model",
            ".upstream/parameter-golf/train_gpt_mlx.py"} <= names
    assert not any("fineweb_train_" in n for n in names)  # training data is not evaluation data


def test_artifact_over_the_cap(project):
    """A run whose log reports an oversize artifact (what an oversize model's log says)."""
    log = latest_log(project)
    text = log.read_text()
    text = re.sub(r"^serialized_model_int8_zlib:\d+", "serialized_model_int8_zlib:15990000", text, flags=re.M)
    log.write_text(text)  # + the trainer file's bytes (the code a submission counts): over the cap
    assert_fails(project, "over the 16,000,000-byte cap", "ledger says total_bytes=")


def test_missing_log_lines(project):
    log = latest_log(project)
    kept = [l for l in log.read_text().splitlines(keepends=True)
            if not l.startswith(("model_params:", "val_loader:"))]
    log.write_text("".join(kept))
    assert_fails(project, "lacks the line `model_params:<n> ...`", "lacks the line `val_loader:shards pattern=<glob> tokens:<n>`")


def test_latest_run_failed(project):
    ledger.append({"run_id": "broken", "status": "crash", "exit_reason": "boom"},
                  project / "logs" / "runs.jsonl")
    assert_fails(project, "latest run broken did not succeed (status crash: boom)")


@pytest.mark.parametrize("code", [
    "import urllib.request\n",
    "from socket import create_connection\n",
    "import huggingface_hub as hub\n",
    "def fetch():\n    import requests\n    return requests\n",
    "mod = __import__('http.client')\n",
    "import importlib\nmod = importlib.import_module('httpx')\n",
], ids=["urllib", "socket", "hf_hub", "nested_requests", "dunder_import", "import_module"])
def test_network_imports_in_the_trainer(project, code):
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    trainer.write_text(trainer.read_text() + "\n" + code)
    assert_fails(project, "can reach the network")


def test_network_words_in_strings_are_fine(tmp_path):
    trainer = tmp_path / "t.py"
    trainer.write_text('"""We never import socket here."""\nURL = "import requests"\nimport json\n')
    assert checks.check_trainer(trainer) == []


def test_trainer_too_long(project):
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    trainer.write_text(trainer.read_text() + "# padding\n" * 1600)
    assert_fails(project, "over upstream's 1500-line limit")


PROTECTED_EDITS = {
    "val_shard": ("data/datasets/tiny_sp1024/fineweb_val_000000.bin", "flip"),
    "tokenizer": ("data/tokenizers/tiny_1024_bpe.model", "append"),
    "dataset_manifest": ("data/datasets/tiny_sp1024/autogolf_manifest.json", "append"),
    "upstream": (".upstream/parameter-golf/train_gpt_mlx.py", "append"),
    "autoresearch_sh": ("autoresearch.sh", "append"),
    "checks_sh": ("autoresearch.checks.sh", "append"),
    "scripts": ("scripts/extract_parameter_golf_metrics.py", "append"),
    "harness_module": ("autogolf/measure/metrics.py", "append"),
    "profiles": ("autogolf/run/profiles.toml", "append"),
    "readme": ("README.md", "append"),
    "justfile": ("Justfile", "append"),
    # a module the checks themselves do not import: deleting one they import stops them
    # before they can name it (the old flat layout hid that behind the editable install)
    "deleted": ("autogolf/lab/report.py", "delete"),
    "new_script": ("scripts/helper.py", "create"),
    "new_val_shard": ("data/datasets/tiny_sp1024/fineweb_val_000001.bin", "create"),
}


@pytest.mark.parametrize("name", list(PROTECTED_EDITS))
def test_protected_file_changes(project, name):
    rel, how = PROTECTED_EDITS[name]
    path = project / rel
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 1  # one token id, same size: only a hash can see it
        path.write_bytes(bytes(data))
    elif how == "append":
        with open(path, "ab") as f:
            f.write(b"\n# edited\n")
    elif how == "delete":
        path.unlink()
    else:
        path.write_bytes(b"new\n")
    out = assert_fails(project, rel)
    assert ("new file" if how == "create" else "missing" if how == "delete" else "was modified") in out


def test_trainer_changes_are_allowed(project):
    trainer = project / "benchmark" / "train_gpt_mlx.py"
    trainer.write_text(trainer.read_text() + "\n# the agent's experiment\n")
    out = run_checks(project)
    assert out.returncode == 0, out.stdout


def test_deleted_manifest_is_not_silently_re_recorded(project):
    (project / "logs" / "protected.json").unlink()
    assert_fails(project, "protected.json is missing", "it was deleted")
    # a deliberate re-baseline works
    subprocess.run([".venv/bin/python", "-m", "autogolf.judge.checks", "--protect"], cwd=project, check=True,
                   capture_output=True)
    assert run_checks(project).returncode == 0


def test_untracked_cache_files_are_ignored(project):
    """__pycache__ and partial downloads inside protected folders are not "new files"."""
    (project / "autogolf" / "__pycache__").mkdir(exist_ok=True)
    (project / "autogolf" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (project / "data" / "datasets" / "tiny_sp1024" / ".fineweb_val_000000.bin.123.partial").write_bytes(b"")
    assert run_checks(project).returncode == 0
