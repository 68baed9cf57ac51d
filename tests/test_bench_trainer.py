"""scripts/bench_trainer.py runs real trainers as subprocesses on a tiny config and prints
consistent figures. Only consistency is checked, never speed."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

BENCH = REPO / "scripts" / "bench_trainer.py"
TRAINER = REPO / "benchmark" / "train_gpt_mlx.py"
PYTHON = REPO / ".venv" / "bin" / "python"

BENCH_LINE = re.compile(
    r"^BENCH name=(?P<name>\S+) config=(?P<config>\S+) flops_per_token=(?P<fpt>\d+) tok_s=(?P<tok_s>[\d.]+) "
    r"gflop_s=(?P<gflop_s>[\d.]+) sgemm_gflop_s=(?P<peak>[\d.]+) peak_ratio=(?P<ratio>[\d.]+) "
    r"steps_timed=(?P<steps>\d+) model_params=(?P<params>\d+|-)$", re.MULTILINE)
FLOPS_LINE = re.compile(r"^flops_per_token:(?P<total>\d+) matmul:(?P<mm>\d+) \(6 x (?P<n>\d+) matmul params\) "
                        r"attention:(?P<attn>\d+) ", re.MULTILINE)
TABLE_ROW = re.compile(r"^\| (?P<name>\w+) \| (?P<tok_s>[\d.]+) \| (?P<ms>\d+) \| (?P<gflop_s>[\d.]+) \| "
                       r"(?P<pct>[\d.]+)% \|", re.MULTILINE)


def run_bench(tokenizer, *extra: str, timeout: float = 600) -> str:
    if not TRAINER.is_file():
        pytest.skip(f"{TRAINER} is not there yet")
    cmd = [str(PYTHON), str(BENCH), "--config", "tiny", "--random-data", "--warmup", "1",
           "--tokenizer-path", str(tokenizer), "--probe-size", "256", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def check_consistent(out: str, names: list[str]) -> dict[str, dict]:
    flops = FLOPS_LINE.search(out)
    assert flops, out
    total, mm, n, attn = (int(flops[k]) for k in ("total", "mm", "n", "attn"))
    assert total == mm + attn and mm == 6 * n
    rows = {m["name"]: m for m in BENCH_LINE.finditer(out)}
    assert sorted(rows) == sorted(names), out
    table = {m["name"]: m for m in TABLE_ROW.finditer(out)}
    for name, row in rows.items():
        tok_s, gflop_s, peak = float(row["tok_s"]), float(row["gflop_s"]), float(row["peak"])
        assert int(row["fpt"]) == total
        assert tok_s > 0 and peak > 0 and int(row["steps"]) >= 1
        # GFLOP/s is FLOPs per token times tok/s, to the printed rounding
        assert gflop_s == pytest.approx(total * tok_s / 1e9, rel=1e-3, abs=2e-3)
        # the peak is printed to 0.1 GFLOP/s: allow for that rounding in the ratio
        assert float(row["ratio"]) == pytest.approx(gflop_s / peak, rel=1e-3 + 0.05 / peak, abs=1e-4)
        # the human table shows the same figures
        assert float(table[name]["tok_s"]) == pytest.approx(tok_s, abs=0.1)
        assert float(table[name]["gflop_s"]) == pytest.approx(gflop_s, abs=0.01)
    return rows


def test_bench_ours_tiny(corpus):
    out = run_bench(corpus.tokenizer, "--steps", "3", "--no-upstream")
    rows = check_consistent(out, ["ours"])
    assert rows["ours"]["steps"] == "2"  # the first of 3 steps is not timed
    # the FLOPs formula describes the trainer's architecture: its parameter count matches
    assert "architecture differs" not in out
    assert rows["ours"]["params"] != "-"
    assert "sgemm_probe: 256^3 fp32" in out


def test_bench_rejects_missing_trainer(tmp_path):
    proc = subprocess.run([str(PYTHON), str(BENCH), "--trainer", str(tmp_path / "nope.py"), "--config", "tiny",
                           "--no-upstream"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nope.py not found" in proc.stderr


def test_bench_side_by_side_with_upstream_tiny(corpus):
    """Upstream's trainer from .upstream/ when bootstrapped, else from this repository's git
    history (autogolf/measure/upstream.py): found offline too."""
    from autogolf.measure.upstream import UpstreamMissing, upstream_bytes

    try:
        upstream_bytes()
    except UpstreamMissing as e:
        pytest.skip(str(e))
    out = run_bench(corpus.tokenizer, "--steps", "2", "--upstream-steps", "1", timeout=1200)
    check_consistent(out, ["ours", "upstream_as_is", "upstream_fp32"])
    assert re.search(r"^RATIO ours/upstream_as_is=[\d.]+$", out, re.MULTILINE)
    assert re.search(r"^RATIO ours/upstream_fp32=[\d.]+$", out, re.MULTILINE)
    # the patched copy really computes in float32; as-is keeps upstream's bfloat16
    assert re.search(r"\[upstream_fp32 +[\d.]+s\] compute_dtype:mlx.core.float32", out)
    assert re.search(r"\[upstream_as_is +[\d.]+s\] compute_dtype:mlx.core.bfloat16", out)
