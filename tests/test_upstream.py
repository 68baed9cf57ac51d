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


# Edits as the challenge's records make them, on upstream's text: a real record's hunk that
# drops lr_mul's wall-clock branch, fields added before out_dir (pull request #1766), and
# edits of attention, Muon, quantization and main(). Where the fences sit was chosen by
# applying 105 real diffs of the file (README, "The trainer"): with the token budget after
# `out_dir`, 11 leave conflicts under `git apply --3way`; after lr_mul, 19.
RECORD_EDITS = {
    "lr_mul_without_the_wallclock_branch": (
        """    def lr_mul(self, step: int, elapsed_ms: float) -> float:
        if self.warmdown_iters <= 0:
            return 1.0
        if self.max_wallclock_seconds <= 0:
            warmdown_start = max(self.iterations - self.warmdown_iters, 0)
            return max((self.iterations - step) / max(self.warmdown_iters, 1), 0.0) if warmdown_start <= step < self.iterations else 1.0
        step_ms = elapsed_ms / max(step, 1)
        warmdown_ms = self.warmdown_iters * step_ms
        remaining_ms = max(1000.0 * self.max_wallclock_seconds - elapsed_ms, 0.0)
        return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
""",
        """    def lr_mul(self, step: int, elapsed_ms: float) -> float:
        if self.warmdown_iters <= 0:
            return 1.0
        warmdown_start = max(self.iterations - self.warmdown_iters, 0)
        if warmdown_start <= step < self.iterations:
            return max((self.iterations - step) / max(self.warmdown_iters, 1), 0.0)
        return 1.0
"""),
    "a_new_hyperparameter": (
        '    grad_clip_norm: float = float(os.environ.get("GRAD_CLIP_NORM", 0.0))\n',
        '    grad_clip_norm: float = float(os.environ.get("GRAD_CLIP_NORM", 0.0))\n'
        '    ema_decay: float = float(os.environ.get("EMA_DECAY", 0.0))\n'),
    # fields added right before out_dir (as pull request #1766 does): its context reaches the fence
    "fields_before_out_dir": ('    out_dir: str = os.environ.get("OUT_DIR", "logs")\n',
                              '    loop_start: int = int(os.environ.get("LOOP_START", 3))\n\n'
                              '    out_dir: str = os.environ.get("OUT_DIR", "logs")\n'),
    "sliding_window_attention": ('mask="causal")', 'mask=window_mask(seqlen, 256))'),
    "muon_scale": ("scale = math.sqrt(max(1.0, float(p.shape[0]) / float(p.shape[1])))",
                   "scale = 0.2 * math.sqrt(max(float(p.shape[0]), float(p.shape[1])))"),
    "quantization_clip": ("INT8_CLIP_PERCENTILE = 99.99984", "INT8_CLIP_PERCENTILE = 99.9"),
    "a_line_in_main": ('log(f"compute_dtype:{COMPUTE_DTYPE} compile:True")',
                       'log(f"compute_dtype:{COMPUTE_DTYPE} compile:True ema:{args.ema_decay}")'),
}


def _edit(text: str, edits: list[str]) -> str:
    for name in edits:
        old, new = RECORD_EDITS[name]
        assert text.count(old) == 1, name
        text = text.replace(old, new)
    return text


def test_record_style_diffs_apply_to_our_trainer(tmp_path):
    """A record's diff, made against upstream's file at its top-level path, applies to ours
    with the README's recipe (`git apply --3way --directory=benchmark`, in a repository whose
    history holds upstream's file, as ours does), alone and all together, and lands where the
    same edit of our file would."""
    source = upstream.upstream_source()
    ours = (REPO / "benchmark" / "train_gpt_mlx.py").read_text(encoding="utf-8")
    target = tmp_path / "benchmark" / "train_gpt_mlx.py"
    target.parent.mkdir()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    git("init", "-q")
    for text in (source, ours):  # upstream's blob, then ours on top (the e70465f layout)
        target.write_text(text, encoding="utf-8")
        assert git("add", "-A").returncode == 0 and git("commit", "-qm", "x").returncode == 0
    for edits in [[name] for name in RECORD_EDITS] + [list(RECORD_EDITS)]:
        record = _edit(source, edits)
        (tmp_path / "up.py").write_text(source, encoding="utf-8")
        (tmp_path / "rec.py").write_text(record, encoding="utf-8")
        diff = git("diff", "--no-index", "--full-index", "up.py", "rec.py").stdout
        diff = diff.replace("a/up.py", "a/train_gpt_mlx.py").replace("b/rec.py", "b/train_gpt_mlx.py")
        (tmp_path / "record.diff").write_text(diff, encoding="utf-8")
        out = git("apply", "--3way", "--directory=benchmark", "record.diff")
        assert out.returncode == 0, (edits, out.stderr)
        assert target.read_text(encoding="utf-8") == _edit(ours, edits), edits
        git("reset", "-q", "--hard")
