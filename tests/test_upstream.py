"""Upstream's trainer at the pinned commit, found offline (autogolf/measure/upstream.py), the
diff `just upstream-diff` prints, and the fidelity figures (scripts/upstream_fidelity.py)."""

from __future__ import annotations

import subprocess
import sys

from autogolf.measure import upstream
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import upstream_fidelity  # noqa: E402


def test_upstream_trainer_is_found_and_verified():
    data, where = upstream.upstream_bytes()
    assert upstream.blob_id(data) == upstream.UPSTREAM_TRAINER_BLOB
    assert len(data) == upstream.UPSTREAM_TRAINER_BYTES
    assert data.startswith(b"#!/usr/bin/env python3") and b"def main() -> None:" in data
    assert where


def test_the_diff_rebuilds_our_trainer_from_upstream(tmp_path):
    """`patch -p1` of the printed diff onto upstream's file gives our trainer byte for byte."""
    out = subprocess.run([sys.executable, "-m", "autogolf.measure.upstream"], cwd=REPO, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"--- a/benchmark/train_gpt_mlx.py\n+++ b/benchmark/train_gpt_mlx.py\n")
    assert b"lines changed" in out.stderr
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "train_gpt_mlx.py").write_bytes(upstream.upstream_bytes()[0])
    subprocess.run(["patch", "-p1", "-s"], input=out.stdout, cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "benchmark" / "train_gpt_mlx.py").read_bytes() == (REPO / "benchmark" / "train_gpt_mlx.py").read_bytes()


def test_fidelity_figures():
    source = upstream.upstream_source()
    same = upstream_fidelity.figures(source, source)
    assert same["fidelity"] == 1.0 and same["missing_names"] == [] and same["diff_lines"] == 0
    # a comment and a blank line are not code; a changed line and a removed function are
    edited = source.replace("def rms_norm(", "# a note\n\ndef rms_norm(", 1)
    assert upstream_fidelity.figures(source, edited)["fidelity"] == 1.0
    edited = edited.replace("    return x.astype(g.dtype)\n", "    return x\n", 1)
    start = edited.index("def accumulate_flat_grads(")
    edited = edited[:start] + edited[edited.index("# ====", start):]
    f = upstream_fidelity.figures(source, edited)
    assert f["missing_names"] == ["accumulate_flat_grads"]
    assert f["kept_in_order"] == f["upstream_code_lines"] - 1 - 11  # the changed line, the function's 11
    assert f["diff_lines"] > 0
