#!/usr/bin/env python3
"""How close the trainer is to upstream's train_gpt_mlx.py: fidelity figures for issue 17.

  fidelity      share of upstream's code lines (comments and blank lines excluded, each
                line stripped of surrounding whitespace) that appear verbatim and in the
                same order in ours: the longest common subsequence of the two code-line
                lists, divided by upstream's code-line count
  missing names upstream's top-level names (imports, functions, classes, assigned names) that
                our file no longer defines at top level
  diff lines    lines of `diff -u upstream ours` that add or remove a line
  bytes         both files' sizes (the code bytes a submission counts)

Usage: python scripts/upstream_fidelity.py [--ours PATH] [--upstream PATH] [--json]
Upstream's file comes from .upstream/parameter-golf/train_gpt_mlx.py when bootstrapped,
else from --upstream, else from a git object (autogolf/measure/upstream.py explains where).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import json
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autogolf.measure.upstream import UpstreamMissing, upstream_source  # noqa: E402


def code_lines(source: str) -> list[str]:
    """The source's lines that hold code: comments removed (by the tokenizer, so a `#`
    inside a string stays), then blank lines dropped, each line stripped."""
    kept = []
    comments: dict[int, int] = {}  # line number -> column where its comment starts
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.start[1]
    for number, line in enumerate(source.splitlines(), start=1):
        if number in comments:
            line = line[:comments[number]]
        if line.strip():
            kept.append(line.strip())
    return kept


def kept_in_order(upstream: list[str], ours: list[str]) -> int:
    """Length of the longest common subsequence of the two line lists (exact dynamic
    programming, one row at a time: ~1 s for two 1,000-line files)."""
    ids: dict[str, int] = {}
    a = [ids.setdefault(line, len(ids)) for line in upstream]
    b = [ids.setdefault(line, len(ids)) for line in ours]
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def top_level_names(source: str) -> set[str]:
    """Names the module binds at top level: imports, functions, classes, assignments."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def diff_lines(upstream: str, ours: str) -> int:
    diff = difflib.unified_diff(upstream.splitlines(), ours.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))


def figures(upstream: str, ours: str) -> dict:
    up_code, our_code = code_lines(upstream), code_lines(ours)
    kept = kept_in_order(up_code, our_code)
    missing = sorted(top_level_names(upstream) - top_level_names(ours))
    return {
        "upstream_code_lines": len(up_code), "our_code_lines": len(our_code), "kept_in_order": kept,
        "fidelity": round(kept / max(len(up_code), 1), 4),
        "upstream_top_level_names": len(top_level_names(upstream)), "missing_names": missing,
        "diff_lines": diff_lines(upstream, ours),
        "upstream_bytes": len(upstream.encode("utf-8")), "our_bytes": len(ours.encode("utf-8")),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ours", type=Path, default=REPO / "benchmark" / "train_gpt_mlx.py")
    p.add_argument("--upstream", type=Path, default=None, help="upstream's train_gpt_mlx.py (default: found)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    try:
        upstream = args.upstream.read_text(encoding="utf-8") if args.upstream else upstream_source()
    except (UpstreamMissing, OSError) as e:
        print(f"upstream_fidelity: {e}", file=sys.stderr)
        return 2
    f = figures(upstream, args.ours.read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(f))
        return 0
    print(f"fidelity: {f['kept_in_order']}/{f['upstream_code_lines']} upstream code lines kept verbatim, in "
          f"order ({100 * f['fidelity']:.1f}%); ours has {f['our_code_lines']} code lines")
    print(f"missing upstream top-level names: {len(f['missing_names'])} of {f['upstream_top_level_names']}"
          + (f" ({', '.join(f['missing_names'])})" if f["missing_names"] else ""))
    print(f"diff: {f['diff_lines']} lines added or removed")
    print(f"bytes: ours {f['our_bytes']:,}, upstream {f['upstream_bytes']:,} "
          f"({f['our_bytes'] - f['upstream_bytes']:+,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
