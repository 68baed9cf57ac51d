"""`just bootstrap` phases 1 and 2: upstream at the pinned commit (git), and upstream's own
downloader run against the data host (huggingface_hub), with what probes them first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autogolf import settings
from autogolf.data.bootstrap.common import (BootstrapError, DEFAULT_HF_REPO_ID, DEFAULT_REMOTE_ROOT,
                                            FINEWEB, GIT_LOW_SPEED, GIT_PROBE_TIMEOUT_S,
                                            STALE_DOWNLOAD_S, Unreachable, VARIANT, error_line, rel,
                                            say)


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
        raise Unreachable(f"git: {error_line(result.stdout)}")


def has_commit(repo_dir: Path, commit: str) -> bool:
    return git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo_dir).returncode == 0


def fetch_commit(repo_dir: Path, url: str, commit: str) -> str:
    """Bring `commit` into repo_dir; return how ("depth-1 fetch" or "full history")."""
    result = git(["fetch", "-q", "--depth", "1", url, commit], cwd=repo_dir)
    if result.returncode == 0 and has_commit(repo_dir, commit):
        return "depth-1 fetch"
    say(f"the server would not send that one commit ({error_line(result.stdout)}); "
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
                             f"{error_line(result.stdout)}")


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
        raise BootstrapError(f"{upstream_dir}: git status failed: {error_line(status.stdout)}")
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
        raise BootstrapError(f"{url} answered HTTP {status} ({error_line(str(e).splitlines()[0])}); "
                             f"the data host is reachable but does not serve {hub.repo_id}; check "
                             f"HF_ENDPOINT and MATCHED_FINEWEB_REPO_ID (and HF_TOKEN if the "
                             f"repository is gated)") from None
    except OfflineModeIsEnabled:
        raise Unreachable("HF_HUB_OFFLINE is set") from None
    except Exception as e:  # DNS, refused, timeout, TLS, proxy: no usable answer
        raise Unreachable(f"{hub.endpoint}: {type(e).__name__}: {error_line(str(e))}") from None
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
