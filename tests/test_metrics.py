"""Metrics and the extractor CLI on real logs and a real (tiny) shard cache."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from autogolf.measure import logparse, metrics
from autogolf.data.shards import write_shard
from conftest import REAL_LOGS, require_real_logs, REPO

M3_LOG = REAL_LOGS / "mlx_m3air_baseline_200steps.log"
TORCH_LOG = REAL_LOGS / "torch_8xh100_naive_baseline.log"
EXTRACTOR = REPO / "scripts" / "extract_parameter_golf_metrics.py"
METRIC_RE = re.compile(r"^METRIC\s+([\w.µ]+)=(\S+)\s*$")


@pytest.fixture(autouse=True)
def _logs():
    require_real_logs(M3_LOG, TORCH_LOG)


def extract(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXTRACTOR), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def parse_metric_output(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        m = METRIC_RE.match(line)
        assert m, f"not a METRIC line: {line!r}"
        assert math.isfinite(float(m[2]))
        found[m[1]] = m[2]
    return found


def test_extractor_m3_log(tmp_path):
    # a real cache of 3 train shards: 1,000,000 + 1,000,000 + 500,000 tokens
    for i, n in enumerate((1_000_000, 1_000_000, 500_000)):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.ones(n, dtype=np.uint16))
    out = extract(M3_LOG, "--cache-dir", tmp_path)
    assert out.returncode == 0, out.stderr
    found = parse_metric_output(out.stdout)
    assert found["val_bpb"] == "2.30291435"
    assert found["pre_quant_val_bpb"] == "2.3013"
    assert found["delta_bpb_roundtrip"] == "0.00161435"
    assert found["step_ms"] == "1023.92"
    assert found["eval_ms"] == "1608580"
    assert found["train_tokens_consumed"] == str(200 * 8192)
    # 1,638,400 tokens: through shard 0 into shard 1
    assert found["train_shards_touched_est"] == "2"
    assert float(found["train_shard_coverage_pct"]) == pytest.approx(100 * 1_638_400 / 2_500_000)
    # code bytes = the source the log embeds (upstream's 50,195-byte script)
    assert found["total_bytes"] == str(50195 + 9642838)
    assert out.stdout.splitlines()[-1] == "METRIC val_bpb=2.30291435"


def test_extractor_torch_log():
    out = extract(TORCH_LOG)
    assert out.returncode == 0, out.stderr
    found = parse_metric_output(out.stdout)
    assert found["val_bpb"] == "1.22436570"
    assert found["total_bytes"] == "15863489"
    assert found["artifact_headroom_bytes"] == str(16_000_000 - 15_863_489)
    assert float(found["artifact_cap_used_pct"]) == pytest.approx(99.1468, abs=1e-4)
    assert found["train_tokens_consumed"] == str(13780 * 524288)


@pytest.mark.parametrize("path", [M3_LOG, TORCH_LOG], ids=["m3", "torch"])
def test_extractor_truncated_log_gives_no_score(tmp_path, path):
    data = path.read_bytes()
    cut = data.index(b"\nfinal_int8_zlib_roundtrip_exact") + 50  # mid-line
    for name, blob in (("mid_line.log", data[:cut]), ("half.log", data[: len(data) // 2])):
        (tmp_path / name).write_bytes(blob)
        out = extract(tmp_path / name)
        assert out.returncode == 1
        assert "val_bpb=" not in out.stdout.replace("pre_quant_val_bpb=", "")
        assert "no final_int8_zlib_roundtrip_exact line" in out.stderr
        parse_metric_output(out.stdout)  # whatever it did print is well-formed


def test_code_bytes_from_trainer_when_log_has_none(tmp_path):
    log = tmp_path / "ours.txt"
    log.write_text("iterations:2 train_batch_tokens:1024 grad_accum_steps:1\n"
                   "step:2/2 val_loss:5.0000 val_bpb:3.0000 train_time:10ms step_avg:5.00ms\n"
                   "serialized_model_int8_zlib:1000 bytes (payload:2000 raw_pickle:2100 payload_ratio:2.00x)\n"
                   "final_int8_zlib_roundtrip val_loss:5.0100 val_bpb:3.0100 eval_time:7ms\n"
                   "final_int8_zlib_roundtrip_exact val_loss:5.01000000 val_bpb:3.01000000\n")
    trainer = tmp_path / "trainer.py"
    trainer.write_text("print('é')\n", encoding="utf-8")  # 12 bytes, 11 characters
    found = parse_metric_output(extract(log, "--trainer", trainer).stdout)
    assert found["total_bytes"] == str(1000 + 12)
    found = parse_metric_output(extract(log, "--code-bytes", 500).stdout)
    assert found["total_bytes"] == "1500"
    out = extract(log)
    assert "total_bytes" not in parse_metric_output(out.stdout) and "Code size" in out.stderr


def test_nan_score_is_refused():
    text = ("step:1/1 val_loss:nan val_bpb:nan train_time:1ms step_avg:1.00ms\n"
            "final_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan\n")
    result = metrics.compute(logparse.parse_text(text))
    assert not result.ok and "nan" in result.reason
    assert "pre_quant_val_bpb" not in result.metrics


def test_shards_touched():
    sizes = [100, 100, 50]
    assert metrics.shards_touched(0, sizes) == 1  # the loader opens shard 0 up front
    assert metrics.shards_touched(100, sizes) == 1
    assert metrics.shards_touched(101, sizes) == 2
    assert metrics.shards_touched(250, sizes) == 3
    assert metrics.shards_touched(10_000, sizes) == 3  # wrapped around: every shard
    assert metrics.shards_touched(5, []) == 0


def test_metric_lines_format_and_order():
    lines = metrics.metric_lines({"val_bpb": 1.5, "total_bytes": 10, "step_ms": float("nan"),
                                  "extra_thing": 2.0})
    assert all(METRIC_RE.match(l) for l in lines)
    assert lines[-1] == "METRIC val_bpb=1.50000000"
    assert not any("step_ms" in l for l in lines)  # non-finite values are never printed


def test_code_bytes_are_the_trainer_files_not_what_the_log_says():
    """A submission counts the trainer file's bytes: a `Code size:` or `Total submission size`
    line the trainer printed (an edited trainer could print anything) does not replace them."""
    text = ("serialized_model_int8_zlib:1000 bytes (payload:2000 raw_pickle:2100 payload_ratio:2.00x)\n"
            "Code size: 10 bytes\n"
            "Total submission size int8+zlib: 1010 bytes\n"
            "final_int8_zlib_roundtrip_exact val_loss:5.01000000 val_bpb:3.01000000\n")
    result = metrics.compute(logparse.parse_text(text), code_bytes=53_000)
    assert result.metrics["code_bytes"] == 53_000 and result.metrics["total_bytes"] == 54_000
    # without the file, the log's own line is all there is
    assert metrics.compute(logparse.parse_text(text)).metrics["total_bytes"] == 1010
