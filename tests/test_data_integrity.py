"""Issue 12: the data the trainer sees is the data the manifest promises. Every run checks
every shard cheaply (stat unchanged, else a full sha256), refuses to start on a mismatch with
one line naming the shard and the fix, and the checks do the same after the run; the trainer
sees a per-run view with the train shards and only the selection slice of validation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from autoresearch_helpers import summary_line, bench_env, ledger_rows, make_project, make_synth_dataset, run_bench
from autogolf.data.cache import CacheError
from autogolf.data.shards import read_tokens, write_shard
from autogolf.data import dataview, shardstate
from conftest import REPO


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth_dataset(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture
def data(synth, tmp_path):
    """A private copy of the project-made cache (tests here change its shards)."""
    dataset, tokenizer = synth
    root = tmp_path / "data"
    shutil.copytree(dataset.parent.parent, root)
    return root / "datasets" / dataset.name, root / "tokenizers" / tokenizer.name


def flip_byte(path, offset=5000):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


# --------------------------------------------------------------------------- shard state

def test_unchanged_shards_are_not_rehashed_and_touched_ones_are(data):
    dataset, _ = data
    first = shardstate.require_verified(dataset)
    assert len(first["hashed"]) == len(first["shards"]) == 5  # nothing recorded yet: all hashed once
    second = shardstate.require_verified(dataset)
    assert second["hashed"] == [] and all(s["state"] == "verified" for s in second["shards"].values())
    os.utime(dataset / "fineweb_train_000001.bin")  # new mtime, same bytes: hashed again, still fine
    third = shardstate.require_verified(dataset)
    assert third["hashed"] == ["fineweb_train_000001.bin"]


def test_changed_byte_with_the_same_size_is_refused(data):
    dataset, _ = data
    shardstate.require_verified(dataset)
    shard = dataset / "fineweb_train_000002.bin"
    size = shard.stat().st_size
    flip_byte(shard)
    assert shard.stat().st_size == size
    with pytest.raises(CacheError) as e:
        shardstate.require_verified(dataset)
    message = str(e.value)
    assert "\n" not in message and str(shard) in message and "shard changed" in message
    assert "re-run `just bootstrap`" in message
    print(f"\nrefused: {message}")


def test_shard_replaced_by_another_file_of_the_same_size_is_refused(data):
    dataset, _ = data
    shardstate.require_verified(dataset)
    shard = dataset / "fineweb_train_000000.bin"
    tokens = read_tokens(shard)
    write_shard(dataset / "other.tmp", np.roll(tokens, 1))  # same size, other bytes, new inode
    os.replace(dataset / "other.tmp", shard)
    with pytest.raises(CacheError, match="fineweb_train_000000.bin: shard changed"):
        shardstate.require_verified(dataset)


def test_verify_data_reports_each_shard(data):
    dataset, tokenizer = data
    flip_byte(dataset / "fineweb_train_000001.bin")
    (dataset / "fineweb_train_000003.bin").unlink()
    done = subprocess.run([sys.executable, "-m", "autogolf.data.cache_cli", "verify", "--data-root", str(dataset.parent.parent),
                           "--dataset", dataset.name], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    states = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    assert states == {"fineweb_train_000000.bin": "verified", "fineweb_train_000001.bin": "changed",
                      "fineweb_train_000002.bin": "verified", "fineweb_train_000003.bin": "missing",
                      "fineweb_val_000000.bin": "verified"}
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_a_run_on_a_changed_shard_is_refused_before_training_and_checks_see_it_after(data, tmp_path):
    dataset, tokenizer = data
    project = make_project(tmp_path / "project")
    env = bench_env(dataset, tokenizer, tmp_path / "lock")
    ok = run_bench(project, env)
    assert ok.returncode == 0, ok.stdout[-2000:]
    checks = subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, text=True)
    assert checks.returncode == 0, checks.stdout
    flip_byte(dataset / "fineweb_train_000000.bin")
    after = subprocess.run(["bash", "autoresearch.checks.sh"], cwd=project, capture_output=True, text=True)
    assert after.returncode == 1 and "fineweb_train_000000.bin: shard changed" in after.stdout
    refused = run_bench(project, env)
    summary = summary_line(refused.stdout)
    assert refused.returncode == 2 and summary.startswith("autoresearch: data_error"), summary
    assert "fineweb_train_000000.bin: shard changed" in summary
    row = ledger_rows(project)[-1]
    assert row["status"] == "data_error" and "returncode" not in row  # the trainer never started
    print(f"\n{summary}")


# --------------------------------------------------------------------------- the data view

def test_slices_are_disjoint_and_full_sees_everything():
    s = dataview.plan_slices(100_000, 16_384, 16_384)
    assert s.selection == (0, 16_385) and s.holdout == (100_000 - 16_385, 100_000)
    tight = dataview.plan_slices(20_000, 16_384, 16_384)  # both do not fit: the holdout shrinks
    assert tight.holdout[0] == tight.selection[1] and "too small" in tight.holdout_note
    full = dataview.plan_slices(100_000, 0, 16_384)
    assert full.selection == (0, 100_000) and full.holdout is None


def test_view_holds_train_shards_and_only_the_selection(data, tmp_path):
    dataset, _ = data
    view, record = dataview.build_view(dataset, tmp_path / "view", 4096, 4096)
    assert sorted(p.name for p in view.iterdir()) == [f"fineweb_train_00000{i}.bin" for i in range(4)] + \
        ["fineweb_val_000000.bin"]
    for i in range(4):
        name = f"fineweb_train_00000{i}.bin"
        assert (view / name).read_bytes() == (dataset / name).read_bytes()
        assert os.path.realpath(view / name) == str(view / name)  # a hard link names no other folder
    full_val = read_tokens(dataset / "fineweb_val_000000.bin")
    seen = read_tokens(view / "fineweb_val_000000.bin")
    assert np.array_equal(seen, full_val[:4097]) and record["selection"]["tokens"] == 4096
    assert record["holdout"]["start"] >= 4097 and record["links"] == ["hard"]
    full_view, full_record = dataview.build_view(dataset, tmp_path / "full", 0, 4096)
    assert np.array_equal(read_tokens(full_view / "fineweb_val_000000.bin"), full_val)
    assert full_record["holdout"] is None


def test_trainer_cannot_open_the_holdout_through_its_view(data, tmp_path):
    """A real run of a trainer that goes looking for the holdout in DATA_PATH."""
    dataset, tokenizer = data
    val = read_tokens(dataset / "fineweb_val_000000.bin")
    write_shard(dataset / "fineweb_val_000001.bin", val[-5000:])  # a second val shard: all holdout
    write_shard(dataset / "fineweb_val_000000.bin", val[:-5000])
    from autogolf.data.cache import write_manifest
    write_manifest(dataset, tokenizer, source="tests", is_fineweb=False)
    project = make_project(tmp_path / "project")
    snoop = (  # (the harness's scorer imports the trainer too, without DATA_PATH)
        "import glob as _g, os as _o\n"
        "_view = _o.environ.get('DATA_PATH')\n"
        "if _view:\n"
        "    print('snoop: val files', sorted(_o.path.basename(p) for p in _g.glob(_view + '/fineweb_val_*')))\n"
        "    try:\n"
        "        open(_o.path.join(_view, 'fineweb_val_000001.bin'), 'rb')\n"
        "        print('snoop: opened the holdout')\n"
        "    except FileNotFoundError as _e:\n"
        "        print('snoop: no such file', _e.filename)\n")
    trainer = tmp_path / "train_gpt_mlx.py"
    text = (project / "benchmark" / "train_gpt_mlx.py").read_text(encoding="utf-8")
    trainer.write_text(text.replace("import mlx.core as mx", "import mlx.core as mx  # noqa\n" + snoop, 1))
    out = run_bench(project, bench_env(dataset, tokenizer, tmp_path / "lock", AUTOGOLF_TRAINER=str(trainer)))
    assert out.returncode == 0, out.stdout[-2000:]
    assert "snoop: val files ['fineweb_val_000000.bin']" in out.stdout
    assert "snoop: no such file" in out.stdout and "opened the holdout" not in out.stdout
    row = ledger_rows(project)[-1]
    assert row["data_view"]["holdout"]["stop"] == val.size and row["holdout"]["tokens"] == 4096
    assert not (project / "logs" / "views").exists() or not any((project / "logs" / "views").iterdir())
