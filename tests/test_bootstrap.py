"""`just bootstrap` end to end: real processes, real git, real huggingface_hub downloads.

Only the network is stood in for (tests/standins.py): a local bare git repository plays
github's parameter-golf, and a local HTTP server plays the Hugging Face data host
(HF_ENDPOINT). The stand-in repository carries our own downloader with upstream's command
line and huggingface_hub calls, so these tests run on any machine; when the local mirror of
the real upstream repository exists, one more test clones the real pinned commit and runs
upstream's real data/cached_challenge_fineweb.py against the stand-in host.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autogolf.data import cache
from autogolf.data.shards import list_shards, validate_shard
from conftest import REPO
from standins import DATASET, REMOTE_ROOT, REPO_ID, FakeHub, make_hub_files, make_upstream_repo, shard_bytes

MIRROR = Path(os.environ.get("AUTOGOLF_UPSTREAM_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))
PINNED = (REPO / "benchmark" / "UPSTREAM_COMMIT.txt").read_text().strip()
SHARDS = f"{REMOTE_ROOT}/datasets/{DATASET}"
FALLBACK = "building the offline default dataset autogolf_synth_sp1024 (not FineWeb)"


@pytest.fixture(scope="module")
def hub_files(corpus) -> dict[str, bytes]:
    return make_hub_files(corpus.tokenizer, corpus.docs, train_shards=3)


@pytest.fixture
def upstream(tmp_path):
    """(bare repo path, pinned commit, later commit) of the stand-in upstream."""
    return make_upstream_repo(tmp_path / "remote")


def bootstrap_cmd(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "autogolf.data.bootstrap", "--upstream-dir",
            str(tmp / "up" / "parameter-golf"), "--data-root", str(tmp / "data"), *args]


def bootstrap_env(tmp: Path, hub: FakeHub | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "AUTOGOLF_", "MATCHED_FINEWEB_", "GIT_"))
           and k != "TRAIN_SHARDS"}
    env.update(HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1", AUTOGOLF_SYNTH_SCALE="0.02")
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    env.update(extra)
    return env


def run_bootstrap(tmp: Path, hub: FakeHub | None, *args: str, timeout: float = 120,
                  **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(bootstrap_cmd(tmp, *args), cwd=REPO, env=bootstrap_env(tmp, hub, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    print(result.stdout)  # shown by pytest when a test fails
    return result


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def shard_gets(hub: FakeHub) -> int:
    return hub.count("GET", f"{SHARDS}/")


def assert_fineweb_cache(tmp: Path, hub: FakeHub, files: dict[str, bytes], train_shards: int) -> dict:
    """The placed cache is exactly what the host serves, deep-verified, with its manifest."""
    dataset_dir = tmp / "data" / "datasets" / DATASET
    names = sorted(p.name for p in dataset_dir.glob("fineweb_*.bin"))
    assert names == ["fineweb_train_%06d.bin" % i for i in range(train_shards)] + ["fineweb_val_000000.bin"]
    for name in names:
        assert (dataset_dir / name).read_bytes() == files[f"{SHARDS}/{name}"]
    for suffix in ("model", "vocab"):
        placed = tmp / "data" / "tokenizers" / f"fineweb_1024_bpe.{suffix}"
        assert placed.read_bytes() == files[f"{REMOTE_ROOT}/tokenizers/fineweb_1024_bpe.{suffix}"]
    report = cache.verify_cache(dataset_dir, deep=True)
    manifest = cache.read_manifest(dataset_dir)
    assert report["is_fineweb"] is True and manifest["is_fineweb"] is True
    assert manifest["source"] == f"huggingface:{REPO_ID}@{hub.url}"
    assert report["fingerprint"] == manifest["fingerprint"]
    assert report["splits"]["train"]["shards"] == train_shards
    return manifest


def test_help_names_every_flag():
    out = subprocess.run([sys.executable, "-m", "autogolf.data.bootstrap", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--train-shards", "--upstream-url", "--upstream-commit", "--upstream-dir",
                 "--data-root", "--offline"):
        assert flag in out


def test_bootstrap_fetches_verifies_places_then_a_second_run_fetches_nothing(tmp_path, upstream, hub_files):
    bare, pinned, _later = upstream
    with FakeHub(hub_files) as hub:
        first = run_bootstrap(tmp_path, hub, "--upstream-url", str(bare), "--upstream-commit", pinned,
                              "--train-shards", "2")
        assert first.returncode == 0
        checkout = tmp_path / "up" / "parameter-golf"
        assert git_head(checkout) == pinned
        assert (checkout / ".git" / "shallow").is_file(), "expected a depth-1 fetch of one commit"
        manifest = assert_fineweb_cache(tmp_path, hub, hub_files, train_shards=2)
        assert manifest["fingerprint"] in first.stdout
        assert "FineWeb      yes" in first.stdout
        # each file fetched once; the third train shard was not asked for
        assert shard_gets(hub) == 3
        assert hub.count("GET", "fineweb_train_000002") == 0
        assert "unreachable" not in first.stdout

        # Second run: the upstream URL now points nowhere, so any git network access would
        # fail and fall back; and not one request may reach the data host.
        placed = tmp_path / "data" / "datasets" / DATASET / "fineweb_val_000000.bin"
        inode = placed.stat().st_ino
        hub.requests.clear()
        second = run_bootstrap(tmp_path, hub, "--upstream-url", str(tmp_path / "nowhere.git"),
                               "--upstream-commit", pinned, "--train-shards", "2")
        assert second.returncode == 0
        assert hub.requests == []
        assert "unreachable" not in second.stdout and "nothing to fetch" in second.stdout
        assert manifest["fingerprint"] in second.stdout
        assert placed.stat().st_ino == inode

        # Third run: no upstream checkout and no way to clone one. The verified FineWeb cache
        # needs no network, so it is kept: no fallback to the synthetic corpus.
        subprocess.run(["rm", "-rf", str(checkout)], check=True)
        third = run_bootstrap(tmp_path, hub, "--upstream-url", str(tmp_path / "nowhere.git"),
                              "--upstream-commit", pinned, "--train-shards", "2")
        assert third.returncode == 0
        assert f"keeping the verified {DATASET} cache" in third.stdout
        assert not (tmp_path / "data" / "datasets" / cache.SYNTH_DATASET).exists()
        assert hub.requests == []


def test_server_refusing_a_single_commit_gets_a_full_fetch(tmp_path, upstream, hub_files):
    # Protocol v0 servers only hand out advertised refs; the pinned commit is behind main.
    bare, pinned, _later = upstream
    with FakeHub(hub_files) as hub:
        result = run_bootstrap(tmp_path, hub, "--upstream-url", str(bare), "--upstream-commit", pinned,
                               "--train-shards", "1", GIT_CONFIG_COUNT="1",
                               GIT_CONFIG_KEY_0="protocol.version", GIT_CONFIG_VALUE_0="0")
        assert result.returncode == 0
        assert "fetching the full history instead" in result.stdout
        checkout = tmp_path / "up" / "parameter-golf"
        assert git_head(checkout) == pinned
        assert not (checkout / ".git" / "shallow").exists()
        assert_fineweb_cache(tmp_path, hub, hub_files, train_shards=1)


def test_checkout_at_another_commit_is_moved_and_a_dirty_one_is_refused(tmp_path, upstream, hub_files):
    bare, pinned, later = upstream
    checkout = tmp_path / "up" / "parameter-golf"
    subprocess.run(["git", "clone", "-q", str(bare), str(checkout)], check=True)
    assert git_head(checkout) == later
    with FakeHub(hub_files) as hub:
        moved = run_bootstrap(tmp_path, hub, "--upstream-url", str(bare), "--upstream-commit", pinned,
                              "--train-shards", "1")
        assert moved.returncode == 0
        assert f"from {later[:12]} to {pinned[:12]}" in moved.stdout
        assert git_head(checkout) == pinned

        readme = checkout / "README.md"
        readme.write_text("my local notes\n")
        refused = run_bootstrap(tmp_path, hub, "--upstream-url", str(bare), "--upstream-commit", later,
                                "--train-shards", "1")
    assert refused.returncode == 1
    assert "local modifications" in refused.stdout and "README.md" in refused.stdout
    assert "unreachable" not in refused.stdout
    assert readme.read_text() == "my local notes\n"
    assert git_head(checkout) == pinned


def test_killed_mid_download_leaves_nothing_partial_and_a_rerun_completes(tmp_path, upstream, hub_files):
    bare, pinned, _later = upstream
    slow = f"{SHARDS}/fineweb_train_000001.bin"
    args = ("--upstream-url", str(bare), "--upstream-commit", pinned, "--train-shards", "2")
    up_shards = tmp_path / "up" / "parameter-golf" / "data" / "datasets" / DATASET
    dataset_dir = tmp_path / "data" / "datasets" / DATASET
    with FakeHub(hub_files) as hub:
        hub.throttle[slow] = 16_000  # bytes/s: ~9 s for this shard
        log = open(tmp_path / "killed.log", "w")
        proc = subprocess.Popen(bootstrap_cmd(tmp_path, *args), cwd=REPO, env=bootstrap_env(tmp_path, hub),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while hub.bytes_sent[slow] < 16_384 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert 0 < hub.bytes_sent[slow] < len(hub_files[slow]), "the slow shard was not in flight"
        os.killpg(proc.pid, signal.SIGKILL)  # bootstrap and the downloader, mid-transfer
        proc.wait()
        log.close()

        # Nothing partial is anywhere a reader would take it for a shard.
        assert not (up_shards / "fineweb_train_000001.bin").exists()
        assert not (dataset_dir / cache.MANIFEST_NAME).exists()
        for split in ("train", "val"):
            for path in list_shards(dataset_dir, split) if dataset_dir.is_dir() else []:
                validate_shard(path, 1024)

        # What upstream's non-atomic copy fallback would leave when killed: a truncated file
        # under the final name (its own inode; the Hugging Face cache's copy is intact).
        val = up_shards / "fineweb_val_000000.bin"
        good_val = val.read_bytes()
        val.unlink()
        val.write_bytes(good_val[:5000])

        hub.throttle.clear()
        gets_before = hub.count("GET", "fineweb_val_000000")
        rerun = run_bootstrap(tmp_path, hub, *args)
        assert rerun.returncode == 0
        assert "rejected" in rerun.stdout and "fineweb_val_000000.bin" in rerun.stdout
        # the intact cached copy was linked again, not downloaded again
        assert hub.count("GET", "fineweb_val_000000") == gets_before
        assert hub.count("GET", "fineweb_train_000001") == 2
        assert_fineweb_cache(tmp_path, hub, hub_files, train_shards=2)


def test_corrupt_shard_from_the_host_is_refetched_once_then_refused(tmp_path, upstream, hub_files):
    bare, pinned, _later = upstream
    bad = f"{SHARDS}/fineweb_train_000000.bin"
    tokens = np.frombuffer(hub_files[bad][1024:], dtype="<u2").copy()
    tokens[100] = 5000  # a well-formed shard whose ids do not fit the tokenizer
    files = dict(hub_files, **{bad: shard_bytes(tokens)})
    with FakeHub(files) as hub:
        result = run_bootstrap(tmp_path, hub, "--upstream-url", str(bare), "--upstream-commit", pinned,
                               "--train-shards", "2")
        assert hub.count("GET", "fineweb_train_000000") == 2  # first try + one fresh re-fetch
    assert result.returncode == 1
    assert "fineweb_train_000000.bin" in result.stdout and "token id 5000" in result.stdout
    assert "serves broken data" in result.stdout
    assert "unreachable" not in result.stdout
    dataset_dir = tmp_path / "data" / "datasets" / DATASET
    assert not (dataset_dir / "fineweb_train_000000.bin").exists()
    assert not (dataset_dir / cache.MANIFEST_NAME).exists()
    assert not (tmp_path / "up" / "parameter-golf" / "data" / "datasets" / DATASET /
                "fineweb_train_000000.bin").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["git-missing", "hub-refused", "hub-silent"])
def test_unreachable_upstream_builds_the_offline_default(tmp_path, upstream, case):
    bare, pinned, _later = upstream
    url, extra, silent = str(bare), {}, None
    if case == "git-missing":
        url = str(tmp_path / "no-such-repo.git")
        extra["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    elif case == "hub-refused":
        extra["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    else:  # accepts connections, never answers: timeouts must end the wait
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        extra.update(HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}", HF_HUB_ETAG_TIMEOUT="1")
    try:
        start = time.monotonic()
        result = run_bootstrap(tmp_path, None, "--upstream-url", url, "--upstream-commit", pinned,
                               timeout=90, **extra)
        elapsed = time.monotonic() - start
    finally:
        if silent:
            silent.close()
    assert result.returncode == 0
    lines = [ln for ln in result.stdout.splitlines() if "upstream unreachable (" in ln]
    assert len(lines) == 1 and lines[0].startswith("bootstrap: ") and lines[0].endswith(FALLBACK)
    if case == "git-missing":
        assert "git:" in lines[0]
        assert not (tmp_path / "up" / "parameter-golf").exists()
    else:
        assert extra["HF_ENDPOINT"] in lines[0]
        assert git_head(tmp_path / "up" / "parameter-golf") == pinned
    if case == "hub-silent":
        assert elapsed < 60
    synth_dir = tmp_path / "data" / "datasets" / cache.SYNTH_DATASET
    report = cache.verify_cache(synth_dir, deep=False)
    assert report["is_fineweb"] is False
    assert "FineWeb      NO" in result.stdout and report["fingerprint"] in result.stdout
    assert not (tmp_path / "data" / "datasets" / DATASET / cache.MANIFEST_NAME).exists()


def test_offline_flag_builds_the_default_without_touching_upstream(tmp_path):
    result = run_bootstrap(tmp_path, None, "--offline", "--upstream-url", str(tmp_path / "unused.git"))
    assert result.returncode == 0
    assert f"--offline: {FALLBACK}" in result.stdout
    assert not (tmp_path / "up").exists()
    report = cache.verify_cache(tmp_path / "data" / "datasets" / cache.SYNTH_DATASET, deep=True)
    assert report["is_fineweb"] is False


@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no local mirror of upstream parameter-golf at {MIRROR}")
def test_real_upstream_commit_and_real_downloader(tmp_path, hub_files):
    """The real pinned commit, cloned from the local mirror, and upstream's own downloader."""
    with FakeHub(hub_files) as hub:
        result = run_bootstrap(tmp_path, hub, "--upstream-url", f"file://{MIRROR}", "--train-shards", "3")
        assert result.returncode == 0
        checkout = tmp_path / "up" / "parameter-golf"
        assert git_head(checkout) == PINNED
        blob = subprocess.run(["git", "-C", str(checkout), "rev-parse",
                               "HEAD:data/cached_challenge_fineweb.py"],
                              capture_output=True, text=True, check=True).stdout.strip()
        expected = subprocess.run(["git", "--git-dir", str(MIRROR), "rev-parse",
                                   f"{PINNED}:data/cached_challenge_fineweb.py"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert blob == expected
        assert_fineweb_cache(tmp_path, hub, hub_files, train_shards=3)
        assert shard_gets(hub) == 4
