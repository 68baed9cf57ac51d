"""Shared test fixtures. Real data comes from ../shared/fixtures (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("AUTOGOLF_FIXTURES", REPO.parent / "shared" / "fixtures"))
REAL_TOKENIZER = FIXTURES / "tokenizer" / "fineweb_1024_bpe.model"
REAL_DOCS = FIXTURES / "fineweb_docs_200.jsonl"
REAL_LOGS = FIXTURES / "logs"


def require_fixtures() -> None:
    if not REAL_TOKENIZER.is_file() or not REAL_DOCS.is_file():
        pytest.skip(f"real fixtures not found at {FIXTURES} (set AUTOGOLF_FIXTURES)")


@pytest.fixture
def fixtures_dir() -> Path:
    require_fixtures()
    return FIXTURES
