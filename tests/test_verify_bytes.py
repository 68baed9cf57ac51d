"""The harness's own byte table (autogolf/measure/bytecount.py): over a document, the bytes it
counts equal the UTF-8 length of the text the tokenizer decodes, on the real tokenizer with
real FineWeb documents and on the project-made tokenizer with its own documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from autoresearch_helpers import make_synth_dataset
from autogolf.data.synth import generate_documents
from autogolf.measure.bytecount import byte_table, count_bytes
from conftest import REAL_DOCS, REAL_TOKENIZER, require_fixtures


def mismatches(sp, texts) -> tuple[int, int]:
    """(documents compared, documents whose counted bytes differ from the decoded text's).
    Documents with an unknown token are left out: it decodes to " ⁇ " but stands for no
    known bytes, so the metric (upstream's rule) counts it as none."""
    table = byte_table(sp)
    compared = bad = 0
    for text in texts:
        ids = [sp.bos_id(), *sp.encode(text)]
        if sp.unk_id() in ids:
            continue
        a = np.array(ids)
        compared += 1
        bad += int(count_bytes(a[:-1], a[1:], table).sum()) != len(sp.decode(ids[1:]).encode("utf-8"))
    return compared, bad


def test_real_tokenizer_on_real_documents():
    require_fixtures()
    sp = spm.SentencePieceProcessor(model_file=str(REAL_TOKENIZER))
    texts = [json.loads(line)["text"] for line in REAL_DOCS.read_text(encoding="utf-8").splitlines()]
    compared, bad = mismatches(sp, texts)
    assert compared >= 30 and bad == 0


def test_project_made_tokenizer_on_its_documents(tmp_path):
    _, tokenizer = make_synth_dataset(tmp_path / "data")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    compared, bad = mismatches(sp, list(generate_documents(0, 200)))
    assert compared >= 100 and bad == 0


def test_boundaries_drop_the_leading_space():
    require_fixtures()
    sp = spm.SentencePieceProcessor(model_file=str(REAL_TOKENIZER))
    table = byte_table(sp)
    word = sp.piece_to_id("\u2581the")
    assert sp.id_to_piece(word).startswith("\u2581")
    after_bos = count_bytes(np.array([sp.bos_id()]), np.array([word]), table)[0]
    after_word = count_bytes(np.array([word]), np.array([word]), table)[0]
    assert (after_bos, after_word) == (3, 4)


@pytest.mark.parametrize("special", ["bos", "eos", "unk"])
def test_special_tokens_count_no_bytes(special):
    require_fixtures()
    sp = spm.SentencePieceProcessor(model_file=str(REAL_TOKENIZER))
    token = getattr(sp, f"{special}_id")()
    assert count_bytes(np.array([5]), np.array([token]), byte_table(sp))[0] == 0
