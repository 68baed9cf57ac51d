"""`just report`: where the research stands, from the ledger (logs/runs.jsonl).

Prints a table per profile and dataset (experiments, kept, discarded, crashes, the best
kept val_bpb and, where the harness scored one, its holdout value beside it), then the last
runs; draws logs/progress.png and writes logs/report.html (the same picture, embedded, and
the tables: one self-contained file to open in a browser).

The picture has one column per profile: on top val_bpb per experiment (a REPEATS group is
one experiment: its median, with a bar from its lowest to its highest run), kept runs as
green dots, discarded runs as grey crosses, crashes as red marks along the bottom, the
running best of the kept runs as a line and holdout values as hollow diamonds, each joined to
its run's val_bpb by a dotted line (the gap between the selection slice and the hidden
holdout: a change tuned to the selection opens it); below it the
artifact size against the 16,000,000-byte cap.

"Kept" is the one definition of autogolf/judge/verdict.is_kept, which the VERDICT, `just
status` and the ledger's best marker use too: honest (ok, checks passed, no overrides),
VERDICT keep, and a trainer version committed in HEAD's history (merges included). A run
of committed code that the VERDICT discarded, or whose checks failed, is discarded here.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

from autogolf.judge import ledger
from autogolf.measure.metrics import ARTIFACT_CAP_BYTES
from autogolf.judge import verdict
from autogolf.paths import REPO_ROOT



def _holdout(exp: verdict.Experiment) -> float | None:
    values = [(m.get("holdout") or {}).get("val_bpb") for m in exp.members]
    values = [v for v in values if isinstance(v, (int, float))]
    return values[-1] if values else None


def classify(exp: verdict.Experiment, kept: set[str]) -> str:
    """running, crash (no result), kept (verdict.is_kept; `kept` is the set of trainer
    hashes in HEAD's history) or discarded (everything else with a result)."""
    if exp.members[-1].get("status") == "running":
        return "running"
    if exp.val_bpb is None:
        return "crash"
    return "kept" if verdict.is_kept(exp, kept) else "discarded"


def by_profile(runs: list[dict]) -> dict[tuple, list[verdict.Experiment]]:
    """Experiments per (profile, dataset). A run that died before it saw its data (a start
    line only, a lock or config error) goes with its profile's first dataset."""
    exps = verdict.experiments(runs)
    seen: dict[str, str] = {}
    for exp in exps:
        name = (exp.members[-1].get("dataset") or {}).get("name")
        if name:
            seen.setdefault(str(exp.members[-1].get("profile")), str(name))
    groups: dict[tuple, list[verdict.Experiment]] = {}
    for exp in exps:
        profile = str(exp.members[-1].get("profile") or "?")
        name = (exp.members[-1].get("dataset") or {}).get("name") or seen.get(profile, "?")
        groups.setdefault((profile, str(name)), []).append(exp)
    return groups


def _noise(runs: list[dict], exps: list[verdict.Experiment], best) -> str:
    """The noise floor of the best kept experiment's comparable set (else the latest's)."""
    done = [e for e in exps if e.val_bpb is not None]
    key = best.key if best else done[-1].key if done else None
    noise = verdict.noise_floor(runs, key) if key else None
    return "-" if noise is None else f"{noise.sd:.4f} ({noise.df} df)"


def summary_rows(groups: dict, kept: set[str], runs: list[dict]) -> list[list[str]]:
    out = []
    for (profile, dataset), exps in sorted(groups.items()):
        calls = [classify(e, kept) for e in exps]
        # the best within the latest budget: runs on another budget are not comparable
        current = verdict.budget_text(exps[-1].members[-1])
        kept_exps = [e for e, c in zip(exps, calls) if c == "kept"]
        same = [e for e in kept_exps if verdict.budget_text(e.members[-1]) == current]
        best = min(same, key=lambda e: e.val_bpb) if same else None
        hold = _holdout(best) if best else None
        out.append([profile, dataset, str(len(exps)), str(calls.count("kept")),
                    str(calls.count("discarded")), str(calls.count("crash")),
                    f"{best.val_bpb:.6f}" if best else "-", f"{hold:.6f}" if hold is not None else "-",
                    best.run_id if best else "-", _noise(runs, exps, best), current])
    return out


SUMMARY_HEAD = ["profile", "dataset", "experiments", "kept", "discarded", "crashes",
                "best kept val_bpb", "its holdout", "best run", "noise floor", "budget"]
RUNS_HEAD = ["run", "profile", "status", "val_bpb", "holdout", "n", "tok_s", "verdict", "kept", "budget"]


def run_rows(exps: list[verdict.Experiment], kept: set[str], last: int) -> list[list[str]]:
    out = []
    for exp in exps[-last:] if last else exps:
        m = exp.members[-1]
        hold = _holdout(exp)
        call = (m.get("verdict") or {}).get("call", "-")
        out.append([exp.run_id, str(m.get("profile")), str(m.get("status")),
                    f"{exp.val_bpb:.6f}" if exp.val_bpb is not None else "-",
                    f"{hold:.6f}" if hold is not None else "-", str(exp.n),
                    f"{exp.tok_s:.0f}" if exp.tok_s else "-", call, classify(exp, kept),
                    verdict.budget_text(m) if m.get("budget") else "-"])
    return out


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def draw(groups: dict, kept: set[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    keys = sorted(groups)
    fig, axes = plt.subplots(2, len(keys), figsize=(max(9.0, 5.5 * len(keys)), 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3]})
    for col, key in enumerate(keys):
        _draw_profile(axes[0][col], axes[1][col], key, groups[key], kept)
    fig.suptitle("autogolf progress: val_bpb after the int8+zlib round trip (lower is better)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_profile(ax, ax_size, key: tuple, exps: list[verdict.Experiment], kept: set[str]) -> None:
    calls = [classify(e, kept) for e in exps]
    xs = list(range(1, len(exps) + 1))
    for call, style in (("kept", dict(marker="o", color="tab:green", ls="none", label="kept")),
                        ("discarded", dict(marker="x", color="0.55", ls="none", label="discarded"))):
        pts = [(x, e) for x, e, c in zip(xs, exps, calls) if c == call]
        if not pts:
            continue
        ys = [e.val_bpb for _, e in pts]
        lo = [e.val_bpb - min(_values(e)) for _, e in pts]
        hi = [max(_values(e)) - e.val_bpb for _, e in pts]
        ax.errorbar([x for x, _ in pts], ys, yerr=[lo, hi], capsize=2, **style)
    best, line = None, []
    for x, e, c in zip(xs, exps, calls):
        if c == "kept" and (best is None or e.val_bpb < best):
            best = e.val_bpb
        line.append(best)
    if any(v is not None for v in line):
        ax.step(xs, [v if v is not None else float("nan") for v in line], where="post",
                color="tab:green", alpha=0.6, label="running best (kept)")
    holds = [(x, _holdout(e)) for x, e in zip(xs, exps) if _holdout(e) is not None]
    if holds:
        ax.plot(*zip(*holds), marker="D", mfc="none", color="tab:blue", ls="none", label="holdout")
        # the gap between what the trainer was selected on and the hidden holdout: a change
        # tuned to the selection slice opens it (the VERDICT refuses such a keep)
        gaps = [(x, e.val_bpb, _holdout(e)) for x, e in zip(xs, exps)
                if _holdout(e) is not None and e.val_bpb is not None]
        if gaps:
            ax.vlines([g[0] for g in gaps], [g[1] for g in gaps], [g[2] for g in gaps], colors="tab:blue",
                      linestyles=":", alpha=0.7, label="holdout - selection gap")
    crashes = [x for x, c in zip(xs, calls) if c == "crash"]
    if crashes:
        ax.plot(crashes, [0.02] * len(crashes), "v", color="tab:red", transform=ax.get_xaxis_transform(),
                ls="none", label="crash / no result")
    ax.set_title(f"{key[0]} on {key[1]}: {len(exps)} experiments")
    ticks = list(range(1, len(exps) + 1, max(1, len(exps) // 10)))
    ax.set_xticks(ticks)
    ax.set_xlim(0.5, len(exps) + 0.5)  # every experiment has its place, running ones too
    ax.set_ylabel("val_bpb")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", framealpha=0.6)
    sizes = [(x, (e.members[-1].get("metrics") or {}).get("total_bytes")) for x, e in zip(xs, exps)]
    sizes = [(x, s / 1e6) for x, s in sizes if isinstance(s, (int, float))]
    if sizes:
        ax_size.bar(*zip(*sizes), color="tab:purple", alpha=0.7, label="artifact")
    ax_size.axhline(ARTIFACT_CAP_BYTES / 1e6, color="tab:red", ls="--", label="16 MB cap")
    ax_size.set_ylim(0, ARTIFACT_CAP_BYTES / 1e6 * 1.1)
    ax_size.set_xlabel("experiment (in order)")
    ax_size.set_ylabel("artifact MB")
    ax_size.legend(fontsize=8, loc="center right")
    ax_size.set_xlim(ax.get_xlim())
    ax_size.set_xticks(ticks)


def _values(exp: verdict.Experiment) -> list[float]:
    vals = [(m.get("metrics") or {}).get("val_bpb") for m in exp.members]
    return [v for v in vals if isinstance(v, (int, float))] or [exp.val_bpb]


def write_html(path: Path, png: Path, summary: str, runs: str, ledger_path: Path) -> None:
    image = base64.b64encode(png.read_bytes()).decode()
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>autogolf report</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;"
            f"margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;"
            f"text-align:left}}th{{background:#eee}}</style></head><body>"
            f"<h1>autogolf report</h1><p>from {html.escape(str(ledger_path))}</p>"
            f"<h2>Per profile and dataset</h2>{summary}"
            f"<img alt='progress' style='max-width:100%' src='data:image/png;base64,{image}'>"
            f"<h2>Experiments</h2>{runs}</body></html>")
    path.write_text(page, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="just report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=None,
                        help=f"ledger file (default: {ledger.default_path(REPO_ROOT)})")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for progress.png and report.html (default: the ledger's folder)")
    parser.add_argument("--last", type=int, default=20,
                        help="experiments listed in the terminal (default 20; 0 = all; the HTML lists all)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT,
                        help="git checkout whose history says which trainer versions were kept")
    args = parser.parse_args(argv)
    path = args.path or ledger.default_path(args.repo)
    ledger.reconcile(path)
    runs = ledger.runs(path)
    if not runs:
        print(f"report: {path} holds no runs yet; run `bash autoresearch.sh` first")
        return 1
    kept = verdict.kept_trainer_hashes(args.repo)
    groups = by_profile(runs)
    summary = summary_rows(groups, kept, runs)
    exps = verdict.experiments(runs)  # in the order they started
    print(text_table(SUMMARY_HEAD, summary))
    for change in verdict.budget_changes(runs):
        print(f"budget change: {change['profile']} from {change['from']} to {change['to']} at run "
              f"{change['run_id']} ({change['source']}): a new baseline; runs on either side are not compared")
    print()
    print(text_table(RUNS_HEAD, run_rows(exps, kept, args.last)))
    out = args.out or path.parent
    png, page = out / "progress.png", out / "report.html"
    draw(groups, kept, png)
    write_html(page, png, html_table(SUMMARY_HEAD, summary), html_table(RUNS_HEAD, run_rows(exps, kept, 0)), path)
    print(f"\nreport: {len(runs)} runs, {len(exps)} experiments -> {png} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
