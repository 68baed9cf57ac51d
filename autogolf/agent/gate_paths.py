"""The guard's rule for pi's `edit` and `write` tools: only the files in scope.

The agent's job is the trainer and its two notebooks; everything else is the harness, the
data or the record, which the checks catch only after a run -- and pi-autoresearch's revert
skips `autoresearch.*`, so an edit of autoresearch.checks.sh stayed in force. A path is
allowed only when it names one of IN_SCOPE exactly: resolved against the project root the
way pi resolves it (a leading `@` stripped, `~` expanded), with no `..` in it, and with no
symbolic link anywhere on the way (a link could point the write elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

IN_SCOPE = ("benchmark/train_gpt_mlx.py", "autoresearch.md", "autoresearch.ideas.md")


def scope_text() -> str:
    return ", ".join(IN_SCOPE)


def in_scope(raw: str, root: Path) -> tuple[bool, str]:
    """(allowed, why not) for one path as the agent gave it."""
    text = raw.strip()
    if text.startswith("@"):
        text = text[1:]  # pi strips it too (path-utils resolveToCwd)
    text = os.path.expanduser(text)
    if ".." in Path(text).parts:
        return False, f"`{raw}` contains `..`"
    root = Path(os.path.realpath(root))
    candidate = Path(text) if os.path.isabs(text) else root / text
    lexical = Path(os.path.normpath(candidate))
    try:
        rel = lexical.relative_to(root).as_posix()
    except ValueError:
        return False, f"`{raw}` is outside the project"
    if rel not in IN_SCOPE:
        return False, f"`{rel}` is not in scope"
    if Path(os.path.realpath(lexical)) != lexical:
        return False, f"`{rel}` goes through a symbolic link"
    return True, ""


def decide(tool: str, tool_input: dict, root: Path) -> dict:
    path = tool_input.get("path")
    if not isinstance(path, str) or not path.strip():
        return {"allow": False, "reason": f"{tool} needs a path; the files in scope are {scope_text()}"}
    ok, why = in_scope(path, root)
    if ok:
        return {"allow": True, "reason": f"{path} is in scope"}
    return {"allow": False, "reason": (
        f"{tool} refused: {why}. The files in scope are {scope_text()}; the harness, the checks, "
        f"the data and the logs are not yours to change.")}
