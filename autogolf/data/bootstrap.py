"""`just bootstrap`: upstream parameter-golf at the pinned commit, then its sp1024 data cache.

Phases:
  1. upstream  `.upstream/parameter-golf` at the commit in benchmark/UPSTREAM_COMMIT.txt: a
               depth-1 fetch of that one commit when the server allows it, else the full
               history. A checkout with local modifications is never touched.
  2. fetch     upstream's own downloader, `data/cached_challenge_fineweb.py --variant sp1024
               --train-shards N`, run with this venv's Python. It uses huggingface_hub, so
               HF_ENDPOINT, HF_HOME, HF_TOKEN and MATCHED_FINEWEB_REPO_ID work as upstream.
  3. verify    every shard, the tokenizer and upstream's manifest.json. The downloader trusts
               any file that already exists and may copy non-atomically, so a file that fails
               is deleted and the downloader runs once more; a second failure stops bootstrap.
  4. place     hard links (or atomic copies) in data/datasets/fineweb10B_sp1024/ and
               data/tokenizers/, then autogolf_manifest.json with the cache's fingerprint.

When github or the data host cannot be reached, bootstrap says so in one line and builds the
offline default dataset instead (autogolf_synth_sp1024, NOT FineWeb). A host that answers but
serves something broken is an error, never a silent fallback. A second run with a complete
cache does only cheap local checks and fetches nothing.

Environment: AUTOGOLF_UPSTREAM_URL, AUTOGOLF_UPSTREAM_COMMIT, TRAIN_SHARDS (defaults for the
flags below), AUTOGOLF_GIT_TIMEOUT (seconds, hard cap per git command, default 1800),
AUTOGOLF_SYNTH_SCALE (shrinks the offline default, for tests), and huggingface_hub's own
HF_ENDPOINT, HF_HOME, HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT, HF_HUB_OFFLINE.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autogolf import settings
from autogolf.textutil import sayer
from autogolf.data import cache
from autogolf.data.shards import ShardError, list_shards, remove_partials, validate_shard
from autogolf.paths import REPO_ROOT as REPO, UPSTREAM_COMMIT_FILE

DEFAULT_UPSTREAM_URL = "https://github.com/openai/parameter-golf.git"
DEFAULT_TRAIN_SHARDS = 10
# Defaults of upstream's downloader, which reads the same two environment variables.
DEFAULT_HF_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"
VARIANT = "sp1024"
FINEWEB = cache.FINEWEB_DATASET
SYNTH = cache.SYNTH_DATASET
# A hanging network must not hang bootstrap: git over http(s) gives up below 1 kB/s for 60 s,
# and every git command has a hard cap on top.
GIT_LOW_SPEED = ("-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60")
GIT_PROBE_TIMEOUT_S = 120.0
# huggingface_hub leaves `<blob>.<id>.incomplete` behind when killed; one untouched this long
# belongs to a dead download.
STALE_DOWNLOAD_S = 600.0
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


class Unreachable(Exception):
    """The network or an upstream host could not be reached: build the offline default."""


class BootstrapError(Exception):
    """Reachable but broken, or a local problem: stop with a non-zero exit."""


say = sayer("bootstrap: ")


def rel(path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def one_line(text: str, limit: int = 160) -> str:
    """The last meaningful line of a tool's error output, short enough for one status line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else "no error message"
    line = re.sub(r"^(fatal|error):\s*", "", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


@contextmanager
def exclusive_lock(path: Path):
    """One bootstrap at a time per folder: two would download into and link the same files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BootstrapError(f"another bootstrap is running (it holds {path}); wait for it "
                                 f"to finish, then re-run `just bootstrap`") from None
        yield


# --------------------------------------------------------------------------- phase 1: git

def git(args: list[str], cwd: Path | None = None, *, capture: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    timeout = timeout or float(settings.get("AUTOGOLF_GIT_TIMEOUT"))
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password nobody types
    cmd = ["git", *GIT_LOW_SPEED, *args]
    # Output goes to a temp file, not a pipe: when git is killed on timeout, a helper it
    # started (git-remote-https) can keep a pipe open and block the reader forever.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as out:
        sink = out if capture else None
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=sink)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise Unreachable(f"git {args[0]} did not finish within {timeout:.0f} s") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        text = out.read() if capture else ""
    return subprocess.CompletedProcess(cmd, returncode, text, "")


def probe_git(url: str) -> None:
    """Can we talk to the upstream repository at all? (`git ls-remote` is one round trip.)"""
    result = git(["ls-remote", url, "HEAD"], timeout=GIT_PROBE_TIMEOUT_S)
    if result.returncode != 0:
        raise Unreachable(f"git: {one_line(result.stdout)}")


def has_commit(repo_dir: Path, commit: str) -> bool:
    return git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo_dir).returncode == 0


def fetch_commit(repo_dir: Path, url: str, commit: str) -> str:
    """Bring `commit` into repo_dir; return how ("depth-1 fetch" or "full history")."""
    result = git(["fetch", "-q", "--depth", "1", url, commit], cwd=repo_dir)
    if result.returncode == 0 and has_commit(repo_dir, commit):
        return "depth-1 fetch"
    say(f"the server would not send that one commit ({one_line(result.stdout)}); "
        f"fetching the full history instead")
    args = ["fetch", "--tags", url, "+refs/heads/*:refs/remotes/origin/*"]
    if (repo_dir / ".git" / "shallow").exists():
        args.insert(1, "--unshallow")
    result = git(args, cwd=repo_dir, capture=False)  # git's own progress stays visible
    if result.returncode != 0:
        probe_git(url)  # raises Unreachable if the connection dropped meanwhile
        raise BootstrapError(f"git fetch from {url} failed (exit {result.returncode}; git's "
                             f"message is above) although the server answers; check the URL "
                             f"and re-run `just bootstrap`")
    if not has_commit(repo_dir, commit):
        raise BootstrapError(f"{url} does not contain the pinned commit {commit}; check "
                             f"--upstream-url / AUTOGOLF_UPSTREAM_URL and "
                             f"benchmark/UPSTREAM_COMMIT.txt")
    return "full history"


def checkout(repo_dir: Path, commit: str) -> None:
    result = git(["checkout", "-q", "--detach", commit], cwd=repo_dir)
    if result.returncode != 0:
        raise BootstrapError(f"{repo_dir}: git checkout {commit[:12]} failed: "
                             f"{one_line(result.stdout)}")


def ensure_upstream(upstream_dir: Path, url: str, commit: str) -> None:
    say(f"[1/4] upstream parameter-golf @ {commit[:12]} in {rel(upstream_dir)}")
    if (upstream_dir / ".git").exists():
        update_checkout(upstream_dir, url, commit)
        return
    if upstream_dir.exists() and any(upstream_dir.iterdir()):
        raise BootstrapError(f"{upstream_dir} exists but is not a git checkout; move it away "
                             f"(or delete it) and re-run `just bootstrap`")
    probe_git(url)
    # Clone into a side folder and rename it into place, so an interrupted clone never
    # leaves a half-checked-out tree that later looks like local modifications.
    for stale in upstream_dir.parent.glob(f".{upstream_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = upstream_dir.with_name(f".{upstream_dir.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        if git(["init", "-q", str(tmp)]).returncode != 0:
            raise BootstrapError(f"git init {tmp} failed")
        how = fetch_commit(tmp, url, commit)
        checkout(tmp, commit)
        git(["remote", "add", "origin", url], cwd=tmp)
        if upstream_dir.exists():
            upstream_dir.rmdir()  # it was empty
        os.rename(tmp, upstream_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"cloned {url} at {commit[:12]} ({how})")


def update_checkout(upstream_dir: Path, url: str, commit: str) -> None:
    top = git(["rev-parse", "--show-toplevel"], cwd=upstream_dir)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != upstream_dir.resolve():
        raise BootstrapError(f"{upstream_dir}/.git is not a usable git checkout; move the folder "
                             f"away and re-run `just bootstrap`")
    status = git(["status", "--porcelain"], cwd=upstream_dir)
    if status.returncode != 0:
        raise BootstrapError(f"{upstream_dir}: git status failed: {one_line(status.stdout)}")
    changed = status.stdout.splitlines()
    if changed:
        raise BootstrapError(
            f"{upstream_dir} has local modifications ({len(changed)} path(s), e.g. "
            f"'{changed[0].strip()}'); bootstrap will not overwrite them. Commit or stash them "
            f"there (or move the folder away), then re-run `just bootstrap`")
    head = git(["rev-parse", "-q", "--verify", "HEAD^{commit}"], cwd=upstream_dir)
    head_sha = head.stdout.strip() if head.returncode == 0 else ""
    if head_sha == commit:
        say("already at the pinned commit, clean; nothing to fetch")
        return
    probe_git(url)
    how = fetch_commit(upstream_dir, url, commit)
    checkout(upstream_dir, commit)
    say(f"moved {rel(upstream_dir)} from {head_sha[:12] or 'no commit'} to {commit[:12]} ({how})")


# --------------------------------------------------------------------------- phase 2: fetch

@dataclass
class Hub:
    """Where upstream's downloader fetches from; the names follow its environment variables."""
    repo_id: str
    root: str
    endpoint: str

    @classmethod
    def from_env(cls) -> "Hub":
        from huggingface_hub import constants  # reads HF_ENDPOINT
        return cls(repo_id=os.environ.get("MATCHED_FINEWEB_REPO_ID", DEFAULT_HF_REPO_ID),
                   root=os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", DEFAULT_REMOTE_ROOT),
                   endpoint=constants.ENDPOINT)

    def remote(self, rel_path: str) -> str:
        return f"{self.root}/{rel_path}" if self.root else rel_path

    @property
    def source(self) -> str:
        return f"huggingface:{self.repo_id}@{self.endpoint}"


def probe_hub(hub: Hub) -> None:
    """One HEAD request for manifest.json, through huggingface_hub's own HTTP stack (same
    proxies, token, timeouts). No answer at all -> Unreachable; a wrong answer -> error."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise Unreachable("HF_HUB_OFFLINE is set")
    url = hf_hub_url(hub.repo_id, hub.remote("manifest.json"), repo_type="dataset")
    try:
        meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as e:
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        if status in (408, 429, 500, 502, 503, 504):
            raise Unreachable(f"{hub.endpoint} answered HTTP {status}") from None
        raise BootstrapError(f"{url} answered HTTP {status} ({one_line(str(e).splitlines()[0])}); "
                             f"the data host is reachable but does not serve {hub.repo_id}; check "
                             f"HF_ENDPOINT and MATCHED_FINEWEB_REPO_ID (and HF_TOKEN if the "
                             f"repository is gated)") from None
    except OfflineModeIsEnabled:
        raise Unreachable("HF_HUB_OFFLINE is set") from None
    except Exception as e:  # DNS, refused, timeout, TLS, proxy: no usable answer
        raise Unreachable(f"{hub.endpoint}: {type(e).__name__}: {one_line(str(e))}") from None
    if not meta.commit_hash or not meta.etag:
        raise BootstrapError(f"{url} answered, but not like a Hugging Face Hub (no X-Repo-Commit "
                             f"or ETag header); check HF_ENDPOINT")


def remove_stale_downloads(hub: Hub) -> None:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo_folder = repo_folder_name(repo_id=hub.repo_id, repo_type="dataset")
    blobs = Path(constants.HF_HUB_CACHE) / repo_folder / "blobs"
    now = time.time()
    for part in blobs.glob("*.incomplete"):
        try:
            st = part.stat()
            if now - st.st_mtime > STALE_DOWNLOAD_S:
                part.unlink()
                say(f"removed {st.st_size / 1e6:.1f} MB left by an interrupted download ({part})")
        except OSError:
            pass


class NewFiles:
    """Prints one line per file the downloader finishes (it prints none itself)."""

    def __init__(self, up_data: Path):
        self.up_data = up_data
        self.seen = set(self._files())

    def _files(self) -> list[Path]:
        found = [p for p in (self.up_data / "manifest.json",) if p.is_file()]
        for sub in (self.up_data / "datasets" / FINEWEB, self.up_data / "tokenizers"):
            if sub.is_dir():
                found += [p for p in sub.iterdir() if p.is_file()]
        return sorted(found)

    def report(self) -> None:
        for path in self._files():
            if path not in self.seen:
                self.seen.add(path)
                size = path.stat().st_size if path.exists() else 0
                if sys.stdout.isatty():  # start clean of a half-drawn tqdm bar (it redraws)
                    print("\r\x1b[K", end="")
                say(f"  got {path.relative_to(self.up_data)} ({size / 1e6:.1f} MB)")


def run_downloader(upstream_dir: Path, train_shards: int) -> int:
    script = upstream_dir / "data" / "cached_challenge_fineweb.py"
    if not script.is_file():
        raise BootstrapError(f"{script} is missing; {upstream_dir} is not a parameter-golf "
                             f"checkout with upstream's downloader; move it away and re-run")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cmd = [sys.executable, str(script), "--variant", VARIANT, "--train-shards", str(train_shards)]
    watcher = NewFiles(upstream_dir / "data")
    # Same process group as us: Ctrl-C (or a killed session) stops the download too. Its
    # stdout/stderr are ours, so huggingface_hub's tqdm bars show on a terminal.
    proc = subprocess.Popen(cmd, cwd=upstream_dir, env=env, stdin=subprocess.DEVNULL)
    try:
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                watcher.report()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    watcher.report()
    return proc.returncode


# --------------------------------------------------------------------------- phase 3: verify

@dataclass
class Bad:
    path: Path        # the rejected file under .upstream/parameter-golf/data
    remote: str       # its name relative to the remote root, e.g. datasets/<ds>/<shard>
    reason: str
    check: Callable[[Path], object]  # raises on a bad file; used on the HF cache's copy too


@dataclass
class Fetched:
    files_val: int
    files_train: int
    vocab_size: int | None = None
    shards: list[Path] = field(default_factory=list)
    tokenizer: list[Path] = field(default_factory=list)  # .model first
    bad: list[Bad] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    tokens_val: int = 0
    tokens_val_expected: int | None = None


def short_reason(error: Exception, path: Path) -> str:
    """What is wrong, without the path and the "delete it and re-run" advice our checks
    append: here bootstrap itself deletes the file and re-fetches it."""
    text = str(error)
    if text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    return text.split("; ")[0]


def check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e


def check_vocab_file(vocab_size: int | None) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable ({e})") from e
        if vocab_size is not None and len(lines) != vocab_size:
            raise ValueError(f"{path}: {len(lines)} pieces, expected {vocab_size}")
    return check


def check_model_file(vocab_size: int | None) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        got = int(cache.load_tokenizer(path).vocab_size())
        if vocab_size is not None and got != vocab_size:
            raise ValueError(f"{path}: vocab size {got}, the manifest says {vocab_size}")
    return check


def check_shard(vocab_size: int | None) -> Callable[[Path], object]:
    return lambda path: validate_shard(path, vocab_size)


def verify_fetched(up_data: Path, train_shards: int) -> Fetched | None:
    """Check what the downloader left under .upstream/parameter-golf/data. None when there is
    not even a manifest.json yet."""
    manifest_path = up_data / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        check_json(manifest_path)
    except ValueError as e:
        fetched = Fetched(files_val=0, files_train=0)
        fetched.bad.append(Bad(manifest_path, "manifest.json", short_reason(e, manifest_path), check_json))
        return fetched
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    dataset = next((d for d in manifest.get("datasets", []) if d.get("name") == FINEWEB), None)
    if dataset is None:
        raise BootstrapError(f"{manifest_path}: the host's manifest lists no dataset {FINEWEB}")
    tokenizer = next((t for t in manifest.get("tokenizers", [])
                      if t.get("name") == dataset.get("tokenizer_name")), None)
    if tokenizer is None or not tokenizer.get("model_path"):
        raise BootstrapError(f"{manifest_path}: no tokenizer model for {FINEWEB} in the host's manifest")
    stats = dataset.get("stats") or {}
    try:
        fetched = Fetched(files_val=int(stats["files_val"]), files_train=int(stats["files_train"]))
    except (KeyError, TypeError, ValueError):
        raise BootstrapError(f"{manifest_path}: {FINEWEB} has no stats.files_val/files_train") from None
    if "tokens_val" in stats:
        fetched.tokens_val_expected = int(stats["tokens_val"])
    if train_shards > fetched.files_train:
        raise BootstrapError(f"--train-shards {train_shards}: {FINEWEB} has only "
                             f"{fetched.files_train} training shards on the host; ask for at most that")
    expected_vocab = int(dataset["vocab_size"]) if dataset.get("vocab_size") else None

    def check(path: Path, remote: str, fn: Callable[[Path], object]):
        """fn's result for a good file; None (recorded as missing or bad) otherwise."""
        if not path.is_file():
            fetched.missing.append(path)
            return None
        try:
            return fn(path) or True
        except (ValueError, OSError) as e:  # ShardError and CacheError are ValueErrors
            fetched.bad.append(Bad(path, remote, short_reason(e, path), fn))
            return None

    model_rel = str(tokenizer["model_path"])
    if check(up_data / model_rel, model_rel, check_model_file(expected_vocab)):
        fetched.vocab_size = int(cache.load_tokenizer(up_data / model_rel).vocab_size())
        fetched.tokenizer.append(up_data / model_rel)
    vocab = fetched.vocab_size or expected_vocab
    if tokenizer.get("vocab_path"):
        vocab_rel = str(tokenizer["vocab_path"])
        if check(up_data / vocab_rel, vocab_rel, check_vocab_file(vocab)):
            fetched.tokenizer.append(up_data / vocab_rel)

    shard_dir = up_data / "datasets" / FINEWEB
    names = [f"fineweb_val_{i:06d}.bin" for i in range(fetched.files_val)]
    # Train shards: the N asked for, plus any further ones a bigger earlier run left in order.
    count = train_shards
    while count < fetched.files_train and (shard_dir / f"fineweb_train_{count:06d}.bin").is_file():
        count += 1
    names += [f"fineweb_train_{i:06d}.bin" for i in range(count)]
    for name in names:
        path = shard_dir / name
        info = check(path, f"datasets/{FINEWEB}/{name}", check_shard(vocab))
        if info:
            fetched.shards.append(path)
            if info.split == "val":
                fetched.tokens_val += info.num_tokens
            say(f"  ok {name}: {info.num_tokens:,} tokens, every id < {vocab}")
    return fetched


def reject(bad: Bad, hub: Hub) -> None:
    """Delete a file that failed verification. If huggingface_hub's cached copy is bad too
    (the downloader hard-links it), delete that as well, so the next run really re-fetches."""
    from huggingface_hub import try_to_load_from_cache

    say(f"rejected {rel(bad.path)}: {bad.reason}; deleting it")
    bad.path.unlink(missing_ok=True)
    cached = try_to_load_from_cache(hub.repo_id, hub.remote(bad.remote), repo_type="dataset")
    if not isinstance(cached, str):
        return
    pointer = Path(cached)
    try:
        bad.check(pointer)
        return  # the cached copy is fine: the re-run links it again without downloading
    except (ValueError, OSError):
        pass
    blob = pointer.resolve()
    try:
        blob.unlink(missing_ok=True)
        pointer.unlink(missing_ok=True)
        say(f"  also deleted the bad copy in the Hugging Face cache ({blob})")
    except OSError as e:
        say(f"  could not delete the bad copy in the Hugging Face cache ({e}); the re-run "
            f"may get the same bad file")


def fetch_and_verify(upstream_dir: Path, train_shards: int, hub: Hub) -> Fetched:
    up_data = upstream_dir / "data"
    for attempt in (1, 2):
        say(f"[2/4] fetching {FINEWEB} (all val shards, {train_shards} train shards) from "
            f"{hub.source} with upstream's data/cached_challenge_fineweb.py"
            + (" (second attempt)" if attempt == 2 else ""))
        returncode = run_downloader(upstream_dir, train_shards)
        if returncode != 0:
            probe_hub(hub)  # raises Unreachable if the host went away mid-download
        say("[3/4] verifying what the downloader left in " + rel(up_data))
        fetched = verify_fetched(up_data, train_shards)
        if fetched is not None and returncode == 0 and not fetched.bad and not fetched.missing:
            break
        for bad in (fetched.bad if fetched else []):
            reject(bad, hub)
        if attempt == 1:
            say("running the downloader once more; it skips the files that are already there")
            continue
        if fetched and fetched.bad:
            raise BootstrapError(
                f"{len(fetched.bad)} file(s) failed verification again after a fresh download, so "
                f"the host ({hub.source}) serves broken data; first: {fetched.bad[0].path.name}: "
                f"{fetched.bad[0].reason}. "
                f"Nothing broken was placed in data/; report it upstream or point HF_ENDPOINT / "
                f"MATCHED_FINEWEB_REPO_ID at a good copy")
        if returncode != 0:
            raise BootstrapError(f"upstream's downloader failed twice (exit {returncode}; its error "
                                 f"is printed above) although {hub.endpoint} answers")
        first = fetched.missing[0] if fetched else up_data / "manifest.json"
        raise BootstrapError(f"the downloader exited cleanly but {first} is missing")
    if fetched.tokens_val_expected is not None and fetched.tokens_val != fetched.tokens_val_expected:
        raise BootstrapError(f"the val shards hold {fetched.tokens_val:,} tokens but the host's "
                             f"manifest.json says {fetched.tokens_val_expected:,}; the host serves "
                             f"an inconsistent export")
    return fetched


# --------------------------------------------------------------------------- phase 4: place

def link_or_copy(src: Path, dst: Path) -> str:
    """Put src at dst atomically: a hard link when possible (no extra disk), else a copy."""
    if dst.exists() and os.path.samefile(src, dst):
        return "kept"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError:  # another filesystem, or links not supported
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 24)
                fout.flush()
                os.fsync(fout.fileno())
            how = "copied"
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return how


def place_cache(fetched: Fetched, data_root: Path) -> tuple[Path, Path]:
    dataset_dir = data_root / "datasets" / FINEWEB
    tokenizer_dir = data_root / "tokenizers"
    say(f"[4/4] placing {len(fetched.shards)} shards in {rel(dataset_dir)} and the tokenizer "
        f"in {rel(tokenizer_dir)}")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    # A half-placed folder must never look finished: the manifest goes first, returns last.
    (dataset_dir / cache.MANIFEST_NAME).unlink(missing_ok=True)
    remove_partials(dataset_dir)
    wanted = {p.name for p in fetched.shards}
    for split in ("train", "val"):
        for old in list_shards(dataset_dir, split):
            if old.name not in wanted:
                old.unlink()
                say(f"  removed {old.name}: not part of the verified set")
    counts: dict[str, int] = {}
    for src in fetched.shards + fetched.tokenizer:
        dst = (tokenizer_dir if src in fetched.tokenizer else dataset_dir) / src.name
        how = link_or_copy(src, dst)
        counts[how] = counts.get(how, 0) + 1
    say("  " + ", ".join(f"{n} {how}" for how, n in sorted(counts.items())))
    return dataset_dir, tokenizer_dir / fetched.tokenizer[0].name


# --------------------------------------------------------------------------- the whole

def current_fineweb(data_root: Path, train_shards: int, *, quiet: bool = False) -> dict | None:
    """The FineWeb cache's fast-check report if it is complete for `train_shards`, else None.
    Fast: manifest, tokenizer hash, shard headers and sizes; no network, no re-hash."""
    dataset_dir = data_root / "datasets" / FINEWEB
    if not (dataset_dir / cache.MANIFEST_NAME).is_file():
        return None
    try:
        report = cache.verify_cache(dataset_dir, deep=False)
        manifest = cache.read_manifest(dataset_dir)
    except (cache.CacheError, ShardError) as e:
        if not quiet:
            say(f"the existing cache fails the fast check ({e}); fetching again")
        return None
    files_val = (manifest.get("upstream") or {}).get("files_val")
    if not report["is_fineweb"] or report["splits"]["val"]["shards"] != files_val:
        return None
    if report["splits"]["train"]["shards"] < train_shards:
        if not quiet:
            say(f"the cache has {report['splits']['train']['shards']} train shards, "
                f"{train_shards} asked for; fetching the rest")
        return None
    return report


def bootstrap_fineweb(args) -> dict:
    ensure_upstream(args.upstream_dir, args.upstream_url, args.upstream_commit)
    report = current_fineweb(args.data_root, args.train_shards)
    if report is not None:
        say(f"[2/4] {FINEWEB} is already complete and verified (fast check: manifest, "
            f"tokenizer hash, shard headers and sizes); nothing to fetch")
        return report
    hub = Hub.from_env()
    probe_hub(hub)
    remove_stale_downloads(hub)
    fetched = fetch_and_verify(args.upstream_dir, args.train_shards, hub)
    dataset_dir, tokenizer_path = place_cache(fetched, args.data_root)
    say(f"  hashing {len(fetched.shards)} shards for the manifest fingerprint")
    cache.write_manifest(dataset_dir, tokenizer_path, source=hub.source, is_fineweb=True, extra={
        "upstream": {"url": args.upstream_url, "commit": args.upstream_commit,
                     "hf_repo_id": hub.repo_id, "hf_endpoint": hub.endpoint,
                     "files_val": fetched.files_val, "files_train_published": fetched.files_train,
                     "train_shards_requested": args.train_shards}})
    return cache.verify_cache(dataset_dir, tokenizer_path, deep=False)


def build_offline_default(data_root: Path) -> dict:
    """autogolf.data.synth's cache. AUTOGOLF_SYNTH_SCALE (default 1) shrinks it for tests and
    quick trials; synth records its size, so a later full-size run rebuilds it."""
    from autogolf.data import synth

    try:
        scale = float(settings.get("AUTOGOLF_SYNTH_SCALE"))
    except ValueError:
        scale = -1.0
    if not 0 < scale <= 1:
        raise BootstrapError(f"AUTOGOLF_SYNTH_SCALE={settings.get('AUTOGOLF_SYNTH_SCALE')!r}: "
                             f"must be a number in (0, 1]; unset it for the full-size corpus")
    sizes = {}
    if scale != 1:
        sizes = {"val_docs": max(8, round(synth.DEFAULT_VAL_DOCS * scale)),
                 "train_docs": max(50, round(synth.DEFAULT_TRAIN_DOCS * scale)),
                 "tokenizer_train_docs": max(50, round(synth.TOKENIZER_TRAIN_DOCS * scale))}
        say(f"AUTOGOLF_SYNTH_SCALE={scale}: a reduced synthetic corpus ({sizes})")
    _manifest, built = synth.build_synth(data_root, **sizes)
    if not built:
        say(f"{SYNTH} is already built and verified (fast check); nothing to do")
    return cache.verify_cache(data_root / "datasets" / SYNTH, deep=False)


def print_summary(report: dict, elapsed: float) -> None:
    fineweb = ("yes" if report["is_fineweb"] else
               "NO: offline synthetic stand-in; its val_bpb is not comparable with FineWeb results")
    say("summary")
    rows = [("dataset", f"{report['dataset']} ({rel(report['dataset_dir'])})"),
            ("FineWeb", fineweb),
            ("source", report["source"]),
            ("tokenizer", f"{rel(report['tokenizer_path'])} (vocab {report['vocab_size']})")]
    for split in ("train", "val"):
        s = report["splits"][split]
        rows.append((split, f"{s['shards']} shards, {s['tokens']:,} tokens"))
    rows += [("fingerprint", report["fingerprint"]), ("elapsed", f"{elapsed:.1f} s")]
    for key, value in rows:
        print(f"  {key:<12} {value}", flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pinned_commit() -> str:
    try:
        return UPSTREAM_COMMIT_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="just bootstrap",
        description="Fetch upstream parameter-golf at the pinned commit and its sp1024 data "
                    "cache (FineWeb) into data/; without network, build the offline default "
                    f"dataset {SYNTH} instead (not FineWeb).")
    parser.add_argument("--train-shards", type=positive_int,
                        default=os.environ.get("TRAIN_SHARDS", str(DEFAULT_TRAIN_SHARDS)),
                        help="FineWeb training shards to fetch, 100M tokens (200 MB) each; the "
                             "validation split is always fetched whole (env TRAIN_SHARDS; "
                             f"default {DEFAULT_TRAIN_SHARDS})")
    parser.add_argument("--upstream-url",
                        default=settings.get("AUTOGOLF_UPSTREAM_URL"),
                        help="git URL of parameter-golf (env AUTOGOLF_UPSTREAM_URL; default "
                             f"{DEFAULT_UPSTREAM_URL})")
    parser.add_argument("--upstream-commit",
                        default=settings.get("AUTOGOLF_UPSTREAM_COMMIT") or pinned_commit(),
                        help="full 40-hex commit to check out (env AUTOGOLF_UPSTREAM_COMMIT; "
                             "default: benchmark/UPSTREAM_COMMIT.txt)")
    parser.add_argument("--upstream-dir", type=Path, default=REPO / ".upstream" / "parameter-golf",
                        help="where the upstream checkout lives (default: .upstream/parameter-golf)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data",
                        help="folder receiving datasets/ and tokenizers/ (default: data)")
    parser.add_argument("--offline", action="store_true",
                        help=f"touch no network: build the offline default dataset {SYNTH} "
                             f"(synthetic, not FineWeb)")
    args = parser.parse_args(argv)
    args.upstream_commit = args.upstream_commit.strip().lower()
    if not args.offline and not FULL_SHA.match(args.upstream_commit):
        parser.error(f"--upstream-commit must be a full 40-hex commit id, got "
                     f"{args.upstream_commit!r} (check benchmark/UPSTREAM_COMMIT.txt)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        with ExitStack() as locks:
            locks.enter_context(exclusive_lock(args.data_root / ".bootstrap.lock"))
            if args.offline:
                say(f"--offline: building the offline default dataset {SYNTH} (not FineWeb)")
                report = build_offline_default(args.data_root)
            else:
                upstream_lock = args.upstream_dir.parent / ".bootstrap.lock"
                if upstream_lock.resolve() != (args.data_root / ".bootstrap.lock").resolve():
                    locks.enter_context(exclusive_lock(upstream_lock))
                try:
                    report = bootstrap_fineweb(args)
                except Unreachable as e:
                    report = current_fineweb(args.data_root, args.train_shards, quiet=True)
                    if report is not None:  # a verified FineWeb cache needs no network
                        say(f"upstream unreachable ({e}); keeping the verified {FINEWEB} cache")
                    else:
                        say(f"upstream unreachable ({e}); building the offline default "
                            f"dataset {SYNTH} (not FineWeb)")
                        report = build_offline_default(args.data_root)
    except (BootstrapError, cache.CacheError, ShardError) as e:
        print(f"bootstrap: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("bootstrap: interrupted; re-run `just bootstrap` to resume (finished files are "
              "kept, nothing partial is ever used)", file=sys.stderr, flush=True)
        return 130
    print_summary(report, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
