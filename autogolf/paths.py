"""Where things are: the repository root and the standard paths below it, defined once.

Every module that needs the checkout's root or one of these places imports it from here,
so the layout can move without a hunt for `Path(__file__).parents[n]`.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGS_DIR = REPO_ROOT / "logs"  # run logs, the ledger, artifacts, data views (git-ignored)
DATA_DIR = REPO_ROOT / "data"  # datasets/ and tokenizers/ (git-ignored)
TRAINER_RELPATH = Path("benchmark") / "train_gpt_mlx.py"  # the one file the agent edits
TRAINER = REPO_ROOT / TRAINER_RELPATH
UPSTREAM_COMMIT_FILE = REPO_ROOT / "benchmark" / "UPSTREAM_COMMIT.txt"
UPSTREAM_DIR = REPO_ROOT / ".upstream" / "parameter-golf"
AGENT_DIR = REPO_ROOT / "agent"  # the agent's pins (package.json, tools.json)
TOOLS_DIR = REPO_ROOT / ".tools"  # Node, when the system has none recent enough

