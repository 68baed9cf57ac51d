"""Build a dataset cache from local documents (this is `just corpus SRC`).

    python -m autogolf.data.corpus SRC --name NAME [--tokenizer PATH] [--val-docs N]
                              [--shard-tokens N] [--data-root data] [--force] [--fineweb]

SRC is a file or a folder (searched recursively, files taken in sorted path order):
  *.jsonl    one JSON object per line with a "text" field (upstream's docs_selected.jsonl)
  *.parquet  a "text" column, read in record batches so memory stays bounded
  *.txt      the whole file is ONE document (a folder of .txt files is a corpus)

Each document is cleaned as upstream cleans tokenizer input (NUL -> space, stripped) and
skipped when empty. The first --val-docs documents become the validation split, the rest
train. Every document is written as BOS followed by its token ids, packed into shards of
--shard-tokens tokens. Without --tokenizer, an sp1024 BPE tokenizer is trained on the corpus
with upstream's SentencePiece options (see train_tokenizer).

Everything is built in a hidden folder and renamed into place at the end, after the manifest
is written, so an interrupted import never leaves a cache that looks finished.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from autogolf.data.cache import BOS_ID, CacheError, load_tokenizer, manifest_tokenizer_path, write_manifest
from autogolf.fsutil import atomic_write, file_sha256, pid_alive
from autogolf.data.shards import ShardError, write_shard

SUFFIXES = (".jsonl", ".parquet", ".txt")
DEFAULT_VAL_DOCS = 50_000       # upstream: the first 50,000 documents are validation
DEFAULT_SHARD_TOKENS = 10**8    # upstream: 100M tokens per full shard
VOCAB_SIZE = 1024
ENCODE_BATCH_DOCS = 1024        # upstream encodes lists of 1,024 documents at a time
PROGRESS_EVERY_S = 5.0
# SentencePiece records num_threads inside the .model file, so a machine-dependent value
# would give the same tokenizer a different sha256 (and the cache a different fingerprint).
# The learned pieces do not depend on it; we fix it.
TRAIN_THREADS = 4
BUILD_PREFIX = ".autogolf-build-"


# --------------------------------------------------------------------------- reading

def clean_text(text: str) -> str:
    """Upstream's cleaning of a document before SentencePiece sees it."""
    return text.replace("\x00", " ").strip()


def source_files(src: Path) -> list[Path]:
    src = Path(src).expanduser()
    if not src.exists():
        raise CacheError(f"{src}: corpus source does not exist; pass a .jsonl, .parquet or "
                         f".txt file, or a folder holding such files")
    if src.is_file():
        if src.suffix not in SUFFIXES:
            raise CacheError(f"{src}: unsupported file type {src.suffix!r}; use .jsonl (a "
                             f"\"text\" field per line), .parquet (a \"text\" column) or .txt "
                             f"(one document per file)")
        return [src]
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise CacheError(f"{src}: no .jsonl, .parquet or .txt files in this folder")
    return files


def _iter_jsonl(path: Path) -> Iterator[str]:
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CacheError(f"{path}:{lineno}: not valid JSON ({e}); each line must be "
                                 f"one JSON object with a \"text\" field") from e
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CacheError(f"{path}:{lineno}: no string \"text\" field; each line must "
                                 f"be one JSON object with a \"text\" field")
            yield text


def _parquet_text_file(path: Path):
    import pyarrow.parquet as pq

    try:
        # No pre-buffering and buffered column reads: pages stream in, so memory stays
        # bounded even when one row group holds the whole file.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CacheError(f"{path}: not a readable parquet file ({e})") from e
    if "text" not in pf.schema_arrow.names:
        raise CacheError(f"{path}: parquet file has no \"text\" column (columns: "
                         f"{pf.schema_arrow.names}); the importer reads documents from \"text\"")
    return pf


def _iter_parquet(path: Path) -> Iterator[str]:
    # Small record batches, never the whole table, and no read-ahead threads (which buffer
    # several row groups at once): reading a 1 GB file grows memory by tens of MB.
    pf = _parquet_text_file(path)
    for batch in pf.iter_batches(batch_size=256, columns=["text"], use_threads=False):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def _iter_txt(path: Path) -> Iterator[str]:
    # newline="": keep \r\n as written; universal newlines would alter the document.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        yield f.read()


_READERS = {".jsonl": _iter_jsonl, ".parquet": _iter_parquet, ".txt": _iter_txt}


def iter_raw_documents(src: Path) -> Iterator[str]:
    for path in source_files(src):
        yield from _READERS[path.suffix](path)


def iter_documents(src: Path) -> Iterator[str]:
    """Cleaned, non-empty documents of SRC in order."""
    for text in iter_raw_documents(src):
        text = clean_text(text)
        if text:
            yield text


def count_records(src: Path) -> int:
    """Number of records in SRC (an upper bound on documents: empty ones are skipped later).
    Cheap: parquet metadata, a byte scan for newlines in jsonl, a file count for txt."""
    total = 0
    for path in source_files(src):
        if path.suffix == ".parquet":
            total += _parquet_text_file(path).metadata.num_rows
        elif path.suffix == ".txt":
            total += 1
        else:
            with open(path, "rb") as f:
                last = b"\n"
                while chunk := f.read(1 << 24):
                    total += chunk.count(b"\n")
                    last = chunk[-1:]
                total += last != b"\n"  # a final line without a newline
    return total


# --------------------------------------------------------------------------- tokenizer

# Upstream's SentencePiece options (data/download_hf_docs_and_tokenize.py). Everything it
# leaves at SentencePiece's default we leave too, notably max_sentence_length (4,192 bytes:
# the trainer skips longer documents) and input_sentence_size (0: use all input).
SENTENCEPIECE_OPTIONS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)


def train_tokenizer(texts: Iterable[str], model_path: Path, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train a SentencePiece BPE tokenizer with upstream's options; write MODEL and .vocab
    atomically. Texts should already be cleaned (clean_text)."""
    import io

    import sentencepiece as spm

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()  # model_writer: no temp path gets recorded inside the model
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size,
            num_threads=TRAIN_THREADS,
            minloglevel=2,  # the trainer's INFO chatter would drown our progress lines
            **SENTENCEPIECE_OPTIONS)
    except RuntimeError as e:  # e.g. too little text for the vocab size
        raise CacheError(f"{model_path}: SentencePiece could not train a {vocab_size}-token "
                         f"tokenizer on this corpus ({e}); use a larger corpus") from e
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab_lines = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    atomic_write(model_path.with_suffix(".vocab"), vocab_lines.encode("utf-8"))
    atomic_write(model_path, proto.getvalue())
    return model_path


def tokenizer_name_for(dataset_name: str, vocab_size: int = VOCAB_SIZE) -> str:
    """`foo_sp1024` -> `foo_1024_bpe.model` (upstream's naming: fineweb_1024_bpe.model)."""
    stem = dataset_name.removesuffix(f"_sp{vocab_size}")
    return f"{stem}_{vocab_size}_bpe.model"


# --------------------------------------------------------------------------- writing

class ShardWriter:
    """Packs BOS-prefixed documents into fixed-size shards, as upstream's exporter does:
    documents run across shard boundaries, and the buffer is flushed when the split
    changes so each split's shards are numbered from 000000."""

    def __init__(self, out_dir: Path, shard_tokens: int):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir, self.shard_tokens = Path(out_dir), shard_tokens
        self.buf = np.empty(shard_tokens, dtype=np.uint16)  # untouched pages cost nothing
        self.fill = 0
        self.split = "val"
        self.next_index = {"val": 0, "train": 0}
        self.tokens = {"val": 0, "train": 0}
        self.docs = {"val": 0, "train": 0}

    def flush(self) -> None:
        if self.fill:
            name = f"fineweb_{self.split}_{self.next_index[self.split]:06d}.bin"
            write_shard(self.out_dir / name, self.buf[:self.fill])
            self.next_index[self.split] += 1
            self.fill = 0

    def add(self, split: str, tokens: np.ndarray, num_docs: int) -> None:
        """Append already BOS-prefixed tokens of num_docs documents to SPLIT."""
        if split != self.split:
            self.flush()
            self.split = split
        self.docs[split] += num_docs
        self.tokens[split] += tokens.size
        pos = 0
        while pos < tokens.size:
            take = min(self.shard_tokens - self.fill, tokens.size - pos)
            self.buf[self.fill:self.fill + take] = tokens[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self.flush()


def encode_batch(sp, texts: list[str], num_threads: int) -> np.ndarray:
    """Encode documents and return them concatenated, each preceded by BOS, as uint16."""
    encoded = sp.encode(texts, out_type=int, num_threads=num_threads)
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.uint16, count=int(lengths.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.insert(flat, starts, np.uint16(BOS_ID))


def tokenize_to_shards(docs: Iterable[str], tokenizer_path: Path, out_dir: Path, *, val_docs: int,
                       shard_tokens: int = DEFAULT_SHARD_TOKENS, label: str = "corpus",
                       num_threads: int | None = None) -> dict:
    """Tokenize cleaned documents into shards in OUT_DIR. The first VAL_DOCS documents go
    to the validation split. Prints progress to stderr; returns counts."""
    sp = load_tokenizer(tokenizer_path)
    if sp.bos_id() != BOS_ID:
        raise CacheError(f"{tokenizer_path}: BOS id is {sp.bos_id()}, the trainer needs {BOS_ID}")
    if sp.vocab_size() > 1 << 16:
        raise CacheError(f"{tokenizer_path}: vocab size {sp.vocab_size()} does not fit the "
                         f"uint16 shard format")
    num_threads = num_threads or os.cpu_count() or 1
    writer = ShardWriter(out_dir, shard_tokens)
    docs = iter(docs)
    start = last = time.monotonic()
    text_bytes = 0
    seen = 0

    def report(final: bool = False) -> None:
        elapsed = max(time.monotonic() - start, 1e-9)
        total = writer.tokens["val"] + writer.tokens["train"]
        print(f"{label}: {'done ' if final else ''}{seen:,} docs, {text_bytes / 1e6:.1f} MB, "
              f"{total:,} tokens, {text_bytes / 1e6 / elapsed:.1f} MB/s", file=sys.stderr, flush=True)

    while True:
        # A batch never straddles the val/train boundary, so a split is one write call.
        room = val_docs - seen if seen < val_docs else ENCODE_BATCH_DOCS
        batch = list(itertools.islice(docs, min(ENCODE_BATCH_DOCS, room)))
        if not batch:
            break
        split = "val" if seen < val_docs else "train"
        writer.add(split, encode_batch(sp, batch, num_threads), len(batch))
        seen += len(batch)
        text_bytes += sum(len(t.encode("utf-8")) for t in batch)
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            report()
    writer.flush()
    report(final=True)
    return {"docs": dict(writer.docs), "tokens": dict(writer.tokens),
            "shards": {"val": writer.next_index["val"], "train": writer.next_index["train"]},
            "text_bytes": text_bytes, "seconds": time.monotonic() - start}


# --------------------------------------------------------------------------- building

def remove_stale_builds(datasets_dir: Path) -> list[Path]:
    """Delete build folders left by killed imports (their process is gone)."""
    removed = []
    for d in Path(datasets_dir).glob(f"{BUILD_PREFIX}*"):
        try:
            pid = int(d.name[len(BUILD_PREFIX):])
        except ValueError:
            continue
        if not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def build_cache(docs: Callable[[], Iterable[str]], *, name: str, data_root: Path, source: str,
                is_fineweb: bool = False, tokenizer: Path | None = None,
                tokenizer_name: str | None = None, tokenizer_train_docs: int | None = None,
                val_docs: int, shard_tokens: int = DEFAULT_SHARD_TOKENS, force: bool = False,
                extra: dict | None = None) -> dict:
    """Tokenize DOCS (a callable returning a fresh iterator each time: we may read twice,
    once to train the tokenizer and once to encode) into `<data_root>/datasets/<name>`.

    With TOKENIZER, it is copied into `<data_root>/tokenizers/` (unless already there).
    Without, one is trained on the first TOKENIZER_TRAIN_DOCS documents (all if None) and
    saved as `<data_root>/tokenizers/<tokenizer_name>`. Returns the manifest."""
    data_root = Path(data_root)
    datasets_dir, tokenizers_dir = data_root / "datasets", data_root / "tokenizers"
    final_dir = datasets_dir / name
    tokenizer, tokenizer_dest = _check_build_request(name, final_dir, tokenizers_dir, tokenizer,
                                                     tokenizer_name, force)
    datasets_dir.mkdir(parents=True, exist_ok=True)
    tokenizers_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(datasets_dir)
    build_root = datasets_dir / f"{BUILD_PREFIX}{os.getpid()}"
    shutil.rmtree(build_root, ignore_errors=True)
    build_dir = build_root / name
    build_dir.mkdir(parents=True)
    try:
        staged = tokenizer if tokenizer is not None else \
            _train_staged_tokenizer(docs, name, tokenizer_train_docs, build_root / tokenizer_dest.name)
        stats = tokenize_to_shards(docs(), staged, build_dir, val_docs=val_docs,
                                   shard_tokens=shard_tokens, label=name)
        if stats["docs"]["val"] == 0 or stats["docs"]["train"] == 0:
            raise CacheError(f"{source}: {stats['docs']['val']} validation and "
                             f"{stats['docs']['train']} training documents; a cache needs both; "
                             f"use a larger corpus or a smaller --val-docs")
        _install_tokenizer(staged, tokenizer_dest)  # first: the manifest records its final path
        manifest = write_manifest(build_dir, tokenizer_dest, source=source, is_fineweb=is_fineweb, final_dir=final_dir,
                                  extra={"val_docs": stats["docs"]["val"], "train_docs": stats["docs"]["train"],
                                         "shard_tokens": shard_tokens, **(extra or {})})
        if final_dir.exists():
            final_dir.rename(build_root / f"old-{name}")
        build_dir.rename(final_dir)
    except ShardError as e:
        raise CacheError(str(e)) from e
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return manifest


def _check_build_request(name: str, final_dir: Path, tokenizers_dir: Path, tokenizer: Path | None,
                         tokenizer_name: str | None, force: bool) -> tuple[Path | None, Path]:
    """Refuse, before any work, a build that would clobber a cache or another tokenizer.
    Returns (the given tokenizer, expanded, or None; where the cache's tokenizer goes)."""
    if not name or "/" in name or name.startswith("."):
        raise CacheError(f"{name!r}: dataset name must be a plain folder name")
    if final_dir.exists() and not force:
        raise CacheError(f"{final_dir}: dataset already exists; pass --force to rebuild it "
                         f"(the old cache is replaced only once the new one is complete)")
    tokenizer_name = tokenizer_name or (Path(tokenizer).name if tokenizer else tokenizer_name_for(name))
    tokenizer_dest = tokenizers_dir / tokenizer_name
    if tokenizer is not None:
        tokenizer = Path(tokenizer).expanduser()
        if not tokenizer.is_file():
            raise CacheError(f"{tokenizer}: tokenizer file does not exist; pass the path of a "
                             f"SentencePiece .model (e.g. data/tokenizers/fineweb_1024_bpe.model), "
                             f"or leave out --tokenizer to train one on the corpus")
        load_tokenizer(tokenizer)  # a clear error for a broken file, before any work
        if (tokenizer_dest.is_file() and tokenizer_dest.resolve() != tokenizer.resolve()
                and file_sha256(tokenizer_dest) != file_sha256(tokenizer)):
            raise CacheError(f"{tokenizer_dest}: a different tokenizer with this name is already "
                             f"in {tokenizers_dir}; other caches may depend on it; rename your "
                             f"tokenizer file or remove that one")
    elif tokenizer_dest.exists() and not force:
        raise CacheError(f"{tokenizer_dest}: tokenizer already exists; pass --force to retrain "
                         f"and replace it, or pass --tokenizer {tokenizer_dest} to reuse it")
    return tokenizer, tokenizer_dest


def _train_staged_tokenizer(docs: Callable[[], Iterable[str]], name: str, train_docs_limit: int | None,
                            staged: Path) -> Path:
    """Train the cache's tokenizer on the first `train_docs_limit` documents (all if None)
    into the build folder; it is put in place only once the cache is complete."""
    t0 = time.monotonic()
    train_docs = docs() if train_docs_limit is None else itertools.islice(docs(), train_docs_limit)
    print(f"{name}: training the {VOCAB_SIZE}-token BPE tokenizer "
          f"({'all' if train_docs_limit is None else f'the first {train_docs_limit:,}'} "
          f"documents)", file=sys.stderr, flush=True)
    staged = train_tokenizer(train_docs, staged)
    print(f"{name}: tokenizer trained in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return staged


def _install_tokenizer(staged: Path, tokenizer_dest: Path) -> None:
    """Copy the tokenizer (.model and .vocab) to its final place, each file atomically."""
    if staged.resolve() == tokenizer_dest.resolve():
        return
    for suffix in (".vocab", ".model"):
        src = staged.with_suffix(suffix)
        if src.is_file():
            tmp = tokenizer_dest.with_name(f".{tokenizer_dest.stem}{suffix}.{os.getpid()}.partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, tokenizer_dest.with_suffix(suffix))


def default_dataset_name(src: Path) -> str:
    """`~/corpora/climbmix/` -> `climbmix_sp1024`; `docs.jsonl` -> `docs_sp1024`."""
    stem = Path(src).expanduser().resolve().name.split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "corpus"
    return f"{stem}_sp{VOCAB_SIZE}"


def default_val_docs(num_records: int) -> int:
    """Upstream's 50,000, but at most a tenth of a small corpus (at least one document)."""
    return min(DEFAULT_VAL_DOCS, max(1, num_records // 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autogolf.data.corpus", description="Build a dataset cache from local documents.",
        epilog="SRC: a .jsonl file (\"text\" field per line), a .parquet file (\"text\" column), "
               "a .txt file (one document), or a folder of such files (searched recursively).")
    parser.add_argument("src", help="corpus file or folder (.jsonl, .parquet, .txt)")
    parser.add_argument("--name", default=None,
                        help="dataset name: the cache goes to DATA_ROOT/datasets/NAME (default: "
                             "SRC's file or folder name + _sp1024, e.g. climbmix_sp1024)")
    parser.add_argument("--tokenizer", default=None,
                        help="existing SentencePiece .model to tokenize with (e.g. the challenge's "
                             "fineweb_1024_bpe.model); copied into DATA_ROOT/tokenizers. Default: "
                             "train an sp1024 BPE tokenizer on the corpus with upstream's options")
    parser.add_argument("--tokenizer-train-docs", type=int, default=None,
                        help="train the tokenizer on only the first N documents (default: all, as "
                             "upstream; SentencePiece holds them in memory, so cap it for huge corpora)")
    parser.add_argument("--val-docs", type=int, default=None,
                        help=f"the first N documents form the validation split (default: "
                             f"{DEFAULT_VAL_DOCS:,} as upstream, capped at a tenth of the corpus's "
                             f"documents for small corpora)")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                        help=f"tokens per shard file (default: {DEFAULT_SHARD_TOKENS:,} as upstream)")
    parser.add_argument("--data-root", default="data",
                        help="folder holding datasets/ and tokenizers/ (default: data)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing dataset (and a trained tokenizer) of the same name")
    parser.add_argument("--fineweb", action="store_true",
                        help="mark the cache as the real challenge data (is_fineweb: true); only for "
                             "upstream's own FineWeb docs with the challenge tokenizer")
    args = parser.parse_args(argv)
    src = Path(args.src).expanduser()
    args.name = args.name or default_dataset_name(src)
    try:
        records = count_records(src)
        if args.val_docs is None:
            val_docs = default_val_docs(records)
            if val_docs < DEFAULT_VAL_DOCS:
                print(f"{args.name}: small corpus ({records:,} records): using the first {val_docs:,} "
                      f"documents for validation (a tenth; set --val-docs to choose)",
                      file=sys.stderr, flush=True)
        else:
            val_docs = args.val_docs
            if val_docs < 1 or val_docs >= records:
                raise CacheError(f"--val-docs {val_docs}: must be between 1 and the corpus's "
                                 f"{records:,} records minus one, so both splits get documents")
        manifest = build_cache(lambda: iter_documents(src), name=args.name, data_root=Path(args.data_root),
                               source=f"imported:{src.resolve()}", is_fineweb=args.fineweb,
                               tokenizer=Path(args.tokenizer) if args.tokenizer else None,
                               tokenizer_train_docs=args.tokenizer_train_docs, val_docs=val_docs,
                               shard_tokens=args.shard_tokens, force=args.force)
    except (CacheError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dataset_dir = Path(args.data_root) / "datasets" / args.name
    print(f"dataset: {manifest['dataset']} ({dataset_dir})")
    tokenizer = manifest_tokenizer_path(dataset_dir, manifest)  # the manifest's path is relative
    print(f"tokenizer: {tokenizer}")
    print(f"fingerprint: {manifest['fingerprint']}")
    for split in ("train", "val"):
        s = manifest["splits"][split]
        print(f"{split}: {s['shards']} shards, {s['tokens']:,} tokens")
    print(f"use it with: DATA_PATH={dataset_dir} TOKENIZER_PATH={tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
