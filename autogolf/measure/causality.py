"""The causality probe, drawn at random for every run so that it cannot be planned around.

A model may read, at position t, the tokens ids[:t+1] only. The probe takes ROWS windows of
the selection slice and, in each, a cut c: the tokens after c are replaced by the tokens
of another window of the slice (real text, so the change does not look like a probe), and
the token right after the cut is forced to differ. The logits at positions <= c must not
move. A model that reads its next token at position t shows it only when t is a cut, so
one forward batch tests ROWS positions, one per row:
  - the windows, the cuts and the donor windows are drawn from a fresh random seed per run
    (recorded in the ledger with the draw);
  - the first six cuts fall in the six classes of position mod 6, in a random order, so
    both parities and every class mod 3 are tested on every run; one of them lies in the
    first eighth of the window and one in the last eighth;
  - the other cuts are uniform over the window.
The unchanged windows' logits come from the selection's own scoring (no extra forward);
the probe costs one forward of ROWS windows.
"""

from __future__ import annotations

import secrets

import numpy as np

# Six rows: the six classes mod 6, two of them in the window's first and last eighths; a
# seventh and eighth row (uniform cuts) added 0.6% of a breadth run for no class not covered.
ROWS = 6
TOLERANCE = 1e-3  # logits (softcapped at 30); same shapes and kernels: ~1e-6 in practice
RESIDUES = 6  # both parities and every class mod 3


def _cut_in(rng, lo: int, hi: int, residue: int | None) -> int:
    """A random position in [lo, hi] (with the given residue mod RESIDUES when there is one)."""
    choices = np.arange(lo, hi + 1)
    if residue is not None and (choices % RESIDUES == residue).any():
        choices = choices[choices % RESIDUES == residue]
    return int(rng.choice(choices))


def draw(windows: int, seq_len: int, seed: int | None = None) -> dict:
    """The probe's random plan: windows, donors and cuts (JSON-ready, for the ledger)."""
    seed = secrets.randbits(63) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    rows = min(ROWS, windows)
    picked = [int(w) for w in rng.choice(windows, size=rows, replace=False)]
    donors = [int(rng.choice([w for w in range(windows) if w != base] or [base])) for base in picked]
    last, edge = seq_len - 2, max(seq_len // 8, 1)
    residues = [int(r) for r in rng.permutation(RESIDUES)]
    cuts = []
    for i in range(rows):
        residue = residues[i] if i < RESIDUES else None
        lo, hi = (0, min(edge, last)) if i == 0 else (max(last - edge, 0), last) if i == 1 else (0, last)
        cuts.append(_cut_in(rng, lo, hi, residue))
    return {"seed": seed, "windows": picked, "donors": donors, "cuts": cuts}


def spliced(plan: dict, window_ids, vocab: int) -> np.ndarray:
    """The probe's batch: each picked window with its tail after the cut from its donor."""
    rows = []
    for base, donor, cut in zip(plan["windows"], plan["donors"], plan["cuts"]):
        x, d = window_ids(base).copy(), window_ids(donor)
        x[cut + 1:] = d[cut + 1:]
        if x[cut + 1] == window_ids(base)[cut + 1]:  # the next token must change
            x[cut + 1] = (x[cut + 1] + 1) % vocab
        rows.append(x)
    return np.stack(rows).astype(np.int32)


def check(plan: dict, base_logits: dict, probed: np.ndarray) -> dict:
    """Compare each probed row with its window's own logits: at and before the cut they must
    be equal (within TOLERANCE); after it they may move."""
    worst, moved_after, failing = 0.0, 0.0, []
    for row, (window, cut) in enumerate(zip(plan["windows"], plan["cuts"])):
        base = base_logits[window]
        before = float(np.abs(probed[row, :cut + 1] - base[:cut + 1]).max())
        if cut + 1 < base.shape[0]:
            moved_after = max(moved_after, float(np.abs(probed[row, cut + 1:] - base[cut + 1:]).max()))
        if before > TOLERANCE:
            failing.append(cut)
        worst = max(worst, before)
    return {"passed": not failing, "max_abs_diff_before_cut": worst, "max_abs_diff_after_cut": moved_after,
            "failing_cuts": failing, "rows": len(plan["windows"]), "tolerance": TOLERANCE, "draw": plan}
