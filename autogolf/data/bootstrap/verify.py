"""`just bootstrap` phase 3: every file the downloader left is checked; a bad one is deleted
and the downloader runs once more; a second failure stops bootstrap."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autogolf.data import cache
from autogolf.data.shards import validate_shard
from autogolf.data.bootstrap.common import BootstrapError, FINEWEB, rel, say
from autogolf.data.bootstrap.fetch import Hub, probe_hub, run_downloader


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
