"""Stand-ins for the network, for tests of `just bootstrap`.

- FakeHub: a local HTTP server answering like the Hugging Face Hub does for
  `hf_hub_download` (HEAD with ETag / X-Repo-Commit / Content-Length, GET with Range), under
  `/datasets/<repo_id>/resolve/<revision>/<path>`. It counts every request, can throttle
  one file (to interrupt a download mid-way) and serves whatever bytes a test gives it.
- make_upstream_repo: a bare git repository standing in for github's parameter-golf. It
  holds STANDIN_DOWNLOADER, our own small script with the same command line, environment
  variables, huggingface_hub calls and local layout as upstream's
  data/cached_challenge_fineweb.py (upstream's code is never copied into this project; the
  tests that run the real one read it from the local mirror when it exists).
- make_hub_files: a small sp1024 export (manifest.json, shards, tokenizer) built from the
  real FineWeb documents and the real tokenizer in ../shared/fixtures.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from autogolf.data.shards import write_shard

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
DATASET = "fineweb10B_sp1024"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex id will do

STANDIN_DOWNLOADER = '''\
"""Test stand-in for parameter-golf's data/cached_challenge_fineweb.py, written for
autogolf's tests: the same command line, environment variables, huggingface_hub call and
local layout (data/manifest.json, data/datasets/<name>/, data/tokenizers/), and the same
trust in any file that already exists."""
import argparse
import json
import os
import shutil
from pathlib import Path

from huggingface_hub import hf_hub_download

DATA = Path(__file__).resolve().parent
REPO_ID = os.environ.get("MATCHED_FINEWEB_REPO_ID", "willdepueoai/parameter-golf")
ROOT = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")


def fetch(name):
    """name is relative to the remote root, and to data/ locally."""
    local = DATA / name
    if local.exists():
        return
    remote = f"{ROOT}/{name}" if ROOT else name
    folder, _, base = remote.rpartition("/")
    cached = hf_hub_download(repo_id=REPO_ID, filename=base, subfolder=folder or None,
                             repo_type="dataset")
    blob = Path(cached).resolve(strict=True)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, local)
    except OSError:
        shutil.copyfile(blob, local)


def main():
    parser = argparse.ArgumentParser(description="stand-in sp1024 cache downloader")
    parser.add_argument("--variant", default="sp1024")
    parser.add_argument("--train-shards", type=int, default=80)
    args = parser.parse_args()
    fetch("manifest.json")
    manifest = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
    name = "fineweb10B_" + args.variant
    dataset = next(d for d in manifest["datasets"] if d["name"] == name)
    tokenizer = next(t for t in manifest["tokenizers"] if t["name"] == dataset["tokenizer_name"])
    if args.train_shards > dataset["stats"]["files_train"]:
        raise SystemExit(f"{name} has only {dataset['stats']['files_train']} train shards")
    for i in range(dataset["stats"]["files_val"]):
        fetch(f"datasets/{name}/fineweb_val_{i:06d}.bin")
    for i in range(args.train_shards):
        fetch(f"datasets/{name}/fineweb_train_{i:06d}.bin")
    for key in ("model_path", "vocab_path"):
        if tokenizer.get(key):
            fetch(tokenizer[key])


if __name__ == "__main__":
    main()
'''

STANDIN_GITIGNORE = "data/datasets\ndata/tokenizers\ndata/manifest.json\n__pycache__/\n"


# --------------------------------------------------------------------------- git

def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "standin", "GIT_AUTHOR_EMAIL": "standin@example.invalid",
           "GIT_COMMITTER_NAME": "standin", "GIT_COMMITTER_EMAIL": "standin@example.invalid",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_upstream_repo(root: Path, downloader: str = STANDIN_DOWNLOADER) -> tuple[Path, str, str]:
    """A bare repo at root/parameter-golf.git with two commits: the one a test pins, and a
    later one on main (so the pinned commit is not a branch tip, like upstream's).
    Returns (bare_path, pinned_commit, later_commit)."""
    work = root / "parameter-golf-src"
    (work / "data").mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "data" / "cached_challenge_fineweb.py").write_text(downloader, encoding="utf-8")
    (work / ".gitignore").write_text(STANDIN_GITIGNORE, encoding="utf-8")
    (work / "README.md").write_text("stand-in for parameter-golf\n", encoding="utf-8")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "pinned", cwd=work)
    pinned = _git("rev-parse", "HEAD", cwd=work)
    (work / "README.md").write_text("stand-in for parameter-golf, a later commit\n", encoding="utf-8")
    _git("commit", "-q", "-am", "later", cwd=work)
    later = _git("rev-parse", "HEAD", cwd=work)
    bare = root / "parameter-golf.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare, pinned, later


# --------------------------------------------------------------------------- data

def shard_bytes(tokens: np.ndarray) -> bytes:
    """The exact bytes autogolf.data.shards.write_shard writes (so our writer defines the format)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fineweb_val_000000.bin"
        write_shard(path, np.asarray(tokens, dtype=np.uint16))
        return path.read_bytes()


def make_hub_files(tokenizer_model: Path, docs_jsonl: Path, *, train_shards: int = 3,
                   val_docs: int = 20, max_docs: int = 80) -> dict[str, bytes]:
    """A small sp1024 export shaped like the published one: {remote path: bytes}.
    The first val_docs documents are validation, the rest train, each as BOS + tokens."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    texts = [json.loads(line)["text"] for line in docs_jsonl.read_text(encoding="utf-8").splitlines()
             if line.strip()][:max_docs]
    docs = [np.array([sp.bos_id(), *sp.encode(t.replace("\x00", " ").strip())], dtype=np.uint16)
            for t in texts]
    val = np.concatenate(docs[:val_docs])
    train = np.concatenate(docs[val_docs:])
    pieces = np.array_split(train, train_shards)
    files = {f"{REMOTE_ROOT}/datasets/{DATASET}/fineweb_val_000000.bin": shard_bytes(val)}
    for i, piece in enumerate(pieces):
        files[f"{REMOTE_ROOT}/datasets/{DATASET}/fineweb_train_{i:06d}.bin"] = shard_bytes(piece)
    files[f"{REMOTE_ROOT}/tokenizers/fineweb_1024_bpe.model"] = tokenizer_model.read_bytes()
    files[f"{REMOTE_ROOT}/tokenizers/fineweb_1024_bpe.vocab"] = \
        tokenizer_model.with_suffix(".vocab").read_bytes()
    manifest = {
        "version": "10B",
        "datasets": [{
            "name": DATASET, "tokenizer_name": "sp_bpe_1024", "tokenizer_kind": "sentencepiece_bpe",
            "vocab_size": int(sp.vocab_size()), "bos_id": 1, "eos_id": 2,
            "stats": {"docs_val": val_docs, "docs_train": len(docs) - val_docs,
                      "files_val": 1, "files_train": train_shards, "files_total": train_shards + 1,
                      "tokens_val": int(val.size), "tokens_train": int(train.size)}}],
        "tokenizers": [{
            "name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": int(sp.vocab_size()),
            "bos_id": 1, "eos_id": 2, "model_path": "tokenizers/fineweb_1024_bpe.model",
            "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    files[f"{REMOTE_ROOT}/manifest.json"] = json.dumps(manifest, indent=2).encode()
    return files


# --------------------------------------------------------------------------- the hub

class FakeHub:
    """A Hub-shaped HTTP server on 127.0.0.1. Use as a context manager; point HF_ENDPOINT at
    `hub.url`. `requests` lists every (method, remote path); `throttle[path]` limits one
    file to that many bytes per second; `bytes_sent[path]` counts body bytes served."""

    def __init__(self, files: dict[str, bytes], repo_id: str = REPO_ID):
        self.files = dict(files)
        self.repo_id = repo_id
        self.requests: list[tuple[str, str]] = []
        self.throttle: dict[str, float] = {}
        self.bytes_sent: Counter = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str, name_part: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and name_part in p)

    def __enter__(self) -> "FakeHub":
        hub = self
        prefix = f"/datasets/{self.repo_id}/resolve/"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _lookup(self) -> str | None:
                path = unquote(self.path.split("?", 1)[0])
                if not path.startswith(prefix):
                    return None
                _revision, _, remote = path[len(prefix):].partition("/")
                return remote

            def _head_common(self, remote: str | None) -> bytes | None:
                with hub._lock:
                    hub.requests.append((self.command, remote or self.path))
                data = hub.files.get(remote) if remote else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", HUB_COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return data

            def _headers(self, status: int, data: bytes, length: int) -> None:
                self.send_response(status)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", HUB_COMMIT)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))

            def do_HEAD(self):
                data = self._head_common(self._lookup())
                if data is not None:
                    self._headers(200, data, len(data))
                    self.end_headers()

            def do_GET(self):
                remote = self._lookup()
                data = self._head_common(remote)
                if data is None:
                    return
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
                    start = min(int(rng[6:].split("-")[0]), len(data))
                body = data[start:]
                self._headers(206 if start else 200, data, len(body))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                rate = hub.throttle.get(remote)
                step = 4096 if rate else 1 << 20
                try:
                    for i in range(0, len(body), step):
                        chunk = body[i:i + step]
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        with hub._lock:
                            hub.bytes_sent[remote] += len(chunk)
                        if rate:
                            time.sleep(len(chunk) / rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed mid-download: exactly what some tests do

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
