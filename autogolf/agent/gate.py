"""The guard's decisions: what pi may do, decided by the harness, never by the agent.

    python -m autogolf.agent.gate TOOL [--root DIR] < input.json    -> one JSON object

The pi extension agent/guard/index.ts calls this synchronously before every run_experiment,
log_experiment, edit, write and bash call, with the call's input as JSON on stdin, and acts on
the answer: {"allow": bool, "kind": str, "reason": str, "input": {...}?}. `input`, when present,
replaces the call's arguments (the guard sets run_experiment's timeout_seconds,
log_experiment's metric, and bash's command: rewritten to run in the jail, shell_jail.py). The rules are in gate_command (run_experiment), gate_keep
(log_experiment), gate_paths (edit, write) and gate_shell (bash), so they are tested in
Python and the TypeScript stays a thin adapter.

Every decision is one line of logs/agent/guard.jsonl: time, tool, kind, allowed, reason,
and for an allowed bash call `confined` (the jail's mechanism, or "none").
`just status` counts the blocks by kind. A decision that cannot be made (a bug, an unreadable
input) is a block: the guard fails closed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from autogolf.agent import gate_command, gate_keep, gate_paths, gate_shell
from autogolf.judge import ledger
from autogolf.paths import REPO_ROOT

JOURNAL_RELPATH = Path("logs") / "agent" / "guard.jsonl"
# The rule each tool falls under: the kind its decisions are counted by.
KINDS = {"run_experiment": "command", "log_experiment": "keep", "edit": "scope", "write": "scope",
         "bash": "shell"}


def journal_path(root: Path) -> Path:
    return Path(root) / JOURNAL_RELPATH


def decide(tool: str, tool_input: dict, root: Path) -> dict:
    """The decision on one call (see the module doc); not yet journaled."""
    kind = KINDS.get(tool)
    if kind is None:
        return {"allow": True, "kind": "other", "reason": f"{tool} is not guarded"}
    if not isinstance(tool_input, dict):
        return {"allow": False, "kind": kind, "reason": f"{tool}: its input is not an object"}
    if tool == "run_experiment":
        decision = gate_command.decide(tool_input, root)
    elif tool == "log_experiment":
        decision = gate_keep.decide(tool_input, root, journal=read_journal(root))
    elif tool in ("edit", "write"):
        decision = gate_paths.decide(tool, tool_input, root)
    else:
        decision = gate_shell.decide(tool_input, root)
    return {"kind": kind, **decision}


def record(root: Path, tool: str, decision: dict, tool_input: dict) -> None:
    """One journal line per decision, appended whole under a lock (ledger.append)."""
    what = tool_input.get("command") or tool_input.get("path") or tool_input.get("status") \
        if isinstance(tool_input, dict) else None
    ledger.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": round(time.time(), 3),
                   "tool": tool, "kind": decision.get("kind"), "allowed": bool(decision.get("allow")),
                   "reason": decision.get("reason", ""), "what": str(what)[:300] if what is not None else None,
                   **({"run_id": decision["run_id"]} if decision.get("run_id") else {}),
                   **({"confined": decision["confined"]} if decision.get("confined") else {})},
                  journal_path(root))


def read_journal(root: Path) -> list[dict]:
    rows, _ = ledger.read(journal_path(root))
    return rows


def block_counts(root: Path) -> Counter:
    """Blocked calls by kind, from the journal."""
    return Counter(r.get("kind") or "?" for r in read_journal(root) if r.get("allowed") is False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.gate", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", help="the pi tool being called (run_experiment, log_experiment, edit, write, bash)")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the project root (default: this checkout)")
    args = parser.parse_args(argv)
    tool_input: dict = {}
    try:
        tool_input = json.loads(sys.stdin.read() or "{}")
        decision = decide(args.tool, tool_input, args.root)
    except Exception as e:  # fail closed: a guard that cannot decide blocks
        decision = {"allow": False, "kind": KINDS.get(args.tool, "other"),
                    "reason": f"the autogolf guard could not decide ({type(e).__name__}: {e}); blocked"}
    if decision.get("kind") != "other":
        try:
            record(args.root, args.tool, decision, tool_input)
        except OSError as e:  # the decision stands; the count is lost, and says so
            print(f"gate: could not journal the decision: {e}", file=sys.stderr)
    print(json.dumps(decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
