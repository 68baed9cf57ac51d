"""The log parser on the two real upstream logs: real lines only, never the embedded source."""

from __future__ import annotations

import pytest

from autogolf.measure import logparse
from conftest import REAL_LOGS, require_real_logs

M3_LOG = REAL_LOGS / "mlx_m3air_baseline_200steps.log"
TORCH_LOG = REAL_LOGS / "torch_8xh100_naive_baseline.log"


@pytest.fixture(autouse=True)
def _logs():
    require_real_logs(M3_LOG, TORCH_LOG)


def test_m3_log_real_lines():
    log = logparse.parse_file(M3_LOG)
    assert log.roundtrip_exact == (3.88837442, 2.30291435)
    assert log.roundtrip == (3.8884, 2.3029, 1608580)
    assert [(v.step, v.val_bpb) for v in log.val_steps] == [(200, 2.3013)]
    assert log.steps_done == 200
    assert log.train_batch_tokens == 8192
    assert log.model_params == 17059912
    assert log.serialized_int8_zlib_bytes == 9642838
    assert log.code_bytes is None and log.total_submission_bytes is None
    assert log.val_progress == (60568, 60568)
    assert log.val_tokens == 62021632
    assert log.mlx_version == "0.29.3" and log.run_id == "mlx_smoke"
    # upstream's partial-download form of the train_loader line
    assert (log.train_dataset, log.train_shards, log.train_shards_expected) == ("fineweb10B_sp1024", 1, 195)
    # 10 early steps + step 200, exactly as logged
    assert [s.step for s in log.train_steps] == list(range(1, 11)) + [200]
    # the source the script logged about itself is skipped, and measured
    assert log.source_lines_skipped > 1000
    assert log.embedded_source_bytes == 50195


def test_embedded_source_gives_no_matches():
    """The source at the top of the M3 log holds every format string; alone it must parse
    to nothing at all."""
    text = M3_LOG.read_text(encoding="utf-8")
    source = text[: text.index("=" * 100 + "\nRunning Python")]
    assert "final_int8_zlib_roundtrip_exact val_loss:" in source  # the f-strings are there
    log = logparse.parse_text(source)
    assert log.kinds == set()
    assert log.roundtrip_exact is None and log.val_steps == [] and log.train_steps == []


def test_source_docstring_example_is_not_a_score():
    """An agent-edited trainer may hold a complete example log line in a docstring at
    column 0; a log that crashes right after the header must still have no score."""
    fake_source = ('"""Example output:\nfinal_int8_zlib_roundtrip_exact val_loss:1.00000000 '
                   'val_bpb:0.50000000\n"""\nprint("hi")\n')
    header = "=" * 100 + "\nRunning Python 3.11\nRunning MLX 0.32\n" + "=" * 100 + "\n"
    log = logparse.parse_text(fake_source + "\n" + header + "run_id:x\nTraceback (most recent call last):\n")
    assert log.roundtrip_exact is None
    assert log.run_id == "x"


def test_torch_log_real_lines():
    log = logparse.parse_file(TORCH_LOG)
    assert log.roundtrip_exact == (2.07269931, 1.2243657)
    assert log.total_submission_bytes == 15863489
    assert log.code_bytes == 47642
    assert log.serialized_int8_zlib_bytes == 15815847
    assert log.stopping_early == (600038, 13780, 20000)
    assert log.steps_done == 13780
    assert log.train_time_ms == 600038
    assert log.train_batch_tokens == 524288
    assert log.train_dataset == "fineweb10B_sp1024" and log.train_shards == 25
    assert log.val_steps[-1].val_bpb == 1.2172
    assert log.source_lines_skipped == 0


@pytest.mark.parametrize("path", [M3_LOG, TORCH_LOG], ids=["m3", "torch"])
def test_truncated_logs_have_no_score(path):
    text = path.read_text(encoding="utf-8")
    exact_at = text.index("\nfinal_int8_zlib_roundtrip_exact") + 1
    # cut inside the final line (mid-number), right before it, and half-way through the run
    for cut in (len(text) - 5, exact_at + 60, exact_at, len(text) // 2):
        log = logparse.parse_text(text[:cut])
        assert log.roundtrip_exact is None, cut


def test_partial_last_line_is_ignored():
    log = logparse.parse_text("final_int8_zlib_roundtrip_exact val_loss:3.88837442 val_bpb:2.30291435")
    assert log.roundtrip_exact is None
    assert log.partial_tail.startswith("final_int8")
    log = logparse.parse_text("final_int8_zlib_roundtrip_exact val_loss:3.88837442 val_bpb:2.30291435\n")
    assert log.roundtrip_exact == (3.88837442, 2.30291435)


def test_our_contract_lines():
    text = "\n".join([
        "backend:mlx-cpu blas=mkl compute_dtype=float32",
        "train_loader:dataset:autogolf_synth_sp1024 train_shards:2/2",
        "val_loader:shards pattern=/d/fineweb_val_*.bin tokens:4096",
        "model_params:12345 vocab_size:1024 layers:2 dim:64 heads:2 kv_heads:1 seq_len:128 tie_embeddings:True",
        "iterations:4 train_batch_tokens:2048 grad_accum_steps:1 microbatch_tokens:2048 "
        "microbatch_batch_size:16 val_batch_size:4096 warmup_steps:1 max_wallclock_seconds:0.000",
        "step:4/4 train_loss:6.1000 train_time:400ms step_avg:100.00ms tok_s:20480",
        "val_progress:1/1",
        "step:4/4 val_loss:6.0000 val_bpb:nan train_time:401ms step_avg:100.25ms",
        "Code size: 40000 bytes",
        "Total submission size int8+zlib: 140000 bytes",
        "final_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan",
    ]) + "\n"
    log = logparse.parse_text(text)
    assert log.backend == "mlx-cpu blas=mkl compute_dtype=float32"
    assert (log.train_dataset, log.train_shards, log.train_shards_expected) == ("autogolf_synth_sp1024", 2, 2)
    assert log.config["microbatch_batch_size"] == "16"
    assert log.code_bytes == 40000 and log.total_submission_bytes == 140000
    assert log.roundtrip_exact is not None  # parsed; metrics.py refuses the nan
    assert log.kinds >= {"backend", "train_loader", "val_loader", "model_params", "config",
                         "train_step", "val_step", "code_size", "total_size", "roundtrip_exact"}
