"""Shared test fixtures.

Real material (the challenge's sp1024 tokenizer, 200 FineWeb documents, two upstream logs)
comes from ../shared/fixtures, beside our own checkouts and in CI; it is never copied here.
A user's fresh clone has no ../shared. There the tests that only need *a* tokenizer and *a*
corpus run on stand-ins the project makes itself (`corpus` below); only the tests that need
the real FineWeb material skip, and the summary line says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("AUTOGOLF_FIXTURES", REPO.parent / "shared" / "fixtures"))
REAL_TOKENIZER = FIXTURES / "tokenizer" / "fineweb_1024_bpe.model"
REAL_DOCS = FIXTURES / "fineweb_docs_200.jsonl"
REAL_LOGS = FIXTURES / "logs"
NEEDS_FINEWEB = "needs the real fixtures (FineWeb, upstream's logs) from ../shared/fixtures or AUTOGOLF_FIXTURES"
STANDIN_DOCS = 200  # as many documents as the real sample...
STANDIN_PARTS = 4  # ...each joined from 4 generated ones: about as many tokens (~600k) too


def have_fixtures() -> bool:
    return REAL_TOKENIZER.is_file() and REAL_DOCS.is_file()


def require_fixtures() -> None:
    """Skip a test that needs the real FineWeb material itself, not just some corpus."""
    if not have_fixtures():
        pytest.skip(f"{NEEDS_FINEWEB}: not found at {FIXTURES}")


def require_real_logs(*logs: Path) -> None:
    """Skip a test that reads upstream's real logs."""
    missing = [p.name for p in logs if not p.is_file()]
    if missing:
        pytest.skip(f"{NEEDS_FINEWEB}: {', '.join(missing)} not found in {REAL_LOGS}")


@dataclass(frozen=True)
class Corpus:
    tokenizer: Path  # a 1024-piece SentencePiece model (pad 0, bos 1, eos 2, unk 3)
    docs: Path  # one {"text": ...} per line
    real: bool  # True: FineWeb and the challenge's tokenizer; False: the project's stand-ins

    def texts(self) -> list[str]:
        return [json.loads(line)["text"] for line in self.docs.read_text(encoding="utf-8").splitlines()
                if line.strip()]


def make_standin_corpus(root: Path) -> Corpus:
    """STANDIN_DOCS documents of the offline default corpus and a 1024-piece tokenizer
    trained on them with upstream's options: what a clone makes without any download
    (about a second)."""
    from autogolf.data.corpus import clean_text, train_tokenizer
    from autogolf.data.synth import generate_documents

    parts = list(generate_documents(0, STANDIN_DOCS * STANDIN_PARTS))
    docs = ["\n".join(parts[i:i + STANDIN_PARTS]) for i in range(0, len(parts), STANDIN_PARTS)]
    root.mkdir(parents=True, exist_ok=True)
    docs_path = root / "synth_docs_200.jsonl"
    docs_path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tokenizer = train_tokenizer((clean_text(d) for d in docs), root / "tokenizer" / "synth_1024_bpe.model")
    return Corpus(tokenizer, docs_path, real=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    """The real tokenizer and documents when ../shared/fixtures is there, else the stand-ins."""
    if have_fixtures():
        return Corpus(REAL_TOKENIZER, REAL_DOCS, real=True)
    return make_standin_corpus(tmp_path_factory.mktemp("standin_corpus"))


# --------------------------------------------------------------------------- benchmark runs
# Shared by every module that runs `bash autoresearch.sh` in a throw-away project copy
# (tests/autoresearch_helpers.py builds them; imported late: that module imports this one).

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, corpus) -> tuple[Path, Path]:
    """A tiny real cache (dataset_dir, tokenizer), built once per session."""
    from autoresearch_helpers import make_tiny_dataset

    if not (REPO / "benchmark" / "train_gpt_mlx.py").is_file():
        pytest.skip("benchmark/train_gpt_mlx.py is not there yet")
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), corpus)


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh throw-away git project with this checkout's harness files."""
    from autoresearch_helpers import make_project

    return make_project(tmp_path / "project")


@pytest.fixture
def env(tiny_data, tmp_path) -> dict:
    """The environment of a smoke run on tiny_data, with its own machine lock."""
    from autoresearch_helpers import bench_env

    dataset, tokenizer = tiny_data
    return bench_env(dataset, tokenizer, tmp_path / "machine.lock")


# --------------------------------------------------------------------------- the two tiers
# Tests that start the trainer, the harness (bash autoresearch.sh), tmux, pi or npm are
# marked `integration`, here and nowhere else; the rest is the fast tier (`just test-fast`,
# pytest -m "not integration"). A test is integration when its module is listed below, or
# when its own code, a fixture it uses, or a test helper either calls reaches one of the
# helpers that start such a process.
INTEGRATION_MODULES = {
    "test_autoresearch", "test_distributed", "test_integrity", "test_checks", "test_sizing_runs",  # the harness
    "test_harness_authority", "test_split_scorer", "test_sandbox",  # the harness's authority (issue 15)
    "test_trainer", "test_backends", "test_bench_trainer", "test_upstream",  # the trainer, upstream's
    "test_supervisor", "test_agent_e2e", "test_agent_launch", "test_agent_install",  # tmux, pi, npm
    "test_shell_scripts",  # runs every shell script, tmux's included
    "test_bootstrap",  # git, upstream's downloader and a stand-in data host, end to end
}
PROCESS_HELPERS = {"run_bench", "run_trainer", "import_trainer", "tmux", "loop"}


def _code_names(code) -> set[str]:
    """The global names a function's code (and the code nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


def _reaches_a_process(func, seen: set) -> bool:
    """True when `func`, or a test-suite function it calls by name, uses PROCESS_HELPERS."""
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names = _code_names(code)
    if names & PROCESS_HELPERS:
        return True
    tests_dir = str(Path(__file__).parent)
    for name in names:
        callee = getattr(func, "__globals__", {}).get(name)
        if callable(callee) and str(getattr(getattr(callee, "__code__", None), "co_filename", "")).startswith(tests_dir):
            if _reaches_a_process(callee, seen):
                return True
    return False


def _is_integration(item) -> bool:
    if Path(str(item.fspath)).stem in INTEGRATION_MODULES:
        return True
    seen: set = set()
    funcs = [item.function] if hasattr(item, "function") else []
    for defs in getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).values():
        funcs += [d.func for d in defs]
    return any(_reaches_a_process(f, seen) for f in funcs)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _is_integration(item):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say, in one line, how many tests skipped for want of the real fixtures."""
    skipped = terminalreporter.stats.get("skipped", [])
    fineweb = sum(1 for r in skipped if NEEDS_FINEWEB in str(r.longrepr))
    if not have_fixtures():
        terminalreporter.write_line(
            f"autogolf: no real fixtures at {FIXTURES}: {fineweb} test(s) that need the real material "
            f"(FineWeb, upstream's logs) skipped; the others ran on the project's own stand-in corpus "
            f"and tokenizer")
    elif fineweb:
        terminalreporter.write_line(f"autogolf: {fineweb} test(s) skipped for want of real fixtures")
