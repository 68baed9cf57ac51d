"""Scale-out: the trainer as several data-parallel processes, launched by MLX's own `mlx.launch`.

    NPROC=2 PROFILE=smoke bash autoresearch.sh        2 processes on this machine (ring, 127.0.0.1)
    HOSTS=hosts.json PROFILE=confirm bash autoresearch.sh   one process per hostfile entry

Upstream's trainer, the project's default, is one process; the harness hook near its top
(cpu_speed.install) makes its ranks one data-parallel run (run/data_parallel.py: every rank
computes on its rows of each global batch and the outputs are summed over the group, one
clock, rank 0 alone writes). A trainer that calls mx.distributed.init() itself is launched
as it is. A trainer with neither is refused (require_support). This module only builds the
launch command, and reads back what mlx.launch does not say in its exit status.

For run.py the launched group is one trainer: it is one process tree in one process group, so
the run lock, the hard timeout (which kills the whole tree) and the ledger see one run. Facts
about mlx.launch (0.32) this relies on:
  - the ring backend needs IP addresses; on one host the literal 127.0.0.1, which it runs
    without ssh; other hosts are reached with `ssh HOST` and must hold this repository and
    its .venv at the same path;
  - when one rank exits non-zero it terminates the others, but it exits 0 itself whatever
    the ranks did: the first failing rank's code is read from its warning lines here;
  - it starts the ranks with close_fds, so they cannot inherit the run lock: each rank is
    started through `python -m autogolf.run.distributed rank`, which makes the kernel kill it
    when mlx.launch dies (PR_SET_PDEATHSIG), as run.py does for mlx.launch itself.
A rank stuck in a collective (MLX issue #4475: a CPU all_sum can deadlock) blocks the others
forever; run.py's hard timeout ends it, and its reason names that case.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import signal
import socket
import sys
from pathlib import Path

from autogolf import settings

HOSTFILE_HELP = ('a JSON list of hosts, e.g. [{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, '
                 '{"ssh": "mac2.local", "ips": ["10.0.0.2"]}] (or {"hosts": [...]}); '
                 'see README "Several processes or machines"')
HANG_NOTE = (" with all its ranks (one may have hung in a collective: a CPU all_sum can deadlock, "
             "MLX issue #4475; running again usually passes)")
# mlx.launch's warning when a rank ends badly, colour codes aside
_RANK_EXIT = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


class LaunchError(ValueError):
    """A bad NPROC or HOSTS; the message says which and how to fix it."""


def _nproc(env: dict) -> int:
    raw = env.get("NPROC", "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise LaunchError(f"NPROC={raw!r} is not a positive whole number of processes; use e.g. NPROC=2")
    return n


def read_hostfile(path: Path) -> list[dict]:
    """The hosts of an mlx.launch hostfile, checked for what the ring backend needs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LaunchError(f"HOSTS={path}: cannot read the hostfile ({e.strerror}); it must be {HOSTFILE_HELP}")
    except ValueError as e:
        raise LaunchError(f"HOSTS={path}: not JSON ({e}); it must be {HOSTFILE_HELP}")
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise LaunchError(f"HOSTS={path}: no hosts in it; it must be {HOSTFILE_HELP}")
    for i, h in enumerate(hosts):
        if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h.get("ips"):
            raise LaunchError(f"HOSTS={path}: entry {i} needs \"ssh\" (a host name) and \"ips\" (its IP "
                              f"addresses: the ring backend connects to IPs); it must be {HOSTFILE_HELP}")
    return hosts


def _hostfile_backend(path: Path) -> str:
    """The hostfile's own "backend" (mlx.launch's format allows one, e.g. nccl), else ring."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return str(data.get("backend") or "ring") if isinstance(data, dict) else "ring"


def free_port_base(count: int, host: str = "127.0.0.1") -> int:
    """A first port P such that P..P+count-1 are free here now (the ring listens on one port
    per rank), so parallel runs and tests do not collide on mlx.launch's fixed default."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise LaunchError(f"found no {count} free consecutive TCP ports on {host} for the ring backend")


def plan(env: dict) -> dict | None:
    """What NPROC / HOSTS ask for: None for one plain process, else the ledger's description."""
    nproc, hosts_path = _nproc(env), env.get("HOSTS", "").strip()
    if hosts_path:
        if env.get("NPROC", "").strip():
            raise LaunchError("set NPROC or HOSTS, not both (a hostfile runs one process per entry; "
                              "repeat an entry to run more on that host)")
        hosts = read_hostfile(Path(hosts_path))
        return {"backend": _hostfile_backend(Path(hosts_path)), "world_size": len(hosts), "hostfile": str(Path(hosts_path).resolve()),
                "hosts": [h["ssh"] for h in hosts]}
    if nproc == 1:
        return None
    return {"backend": "ring", "world_size": nproc, "hosts": ["127.0.0.1"] * nproc}


HOOK_MODULE = "autogolf.run.cpu_speed"


def _calls(tree) -> list:
    """The dotted names called in a module, e.g. "mx.distributed.init" or "_autogolf_install"."""
    import ast

    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                names.append(".".join([f.id, *reversed(parts)]))
    return names


def _parse(text: str):
    import ast

    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def joins_group_itself(text: str) -> bool:
    """Whether a trainer's source calls mx.distributed.init() (then it splits the batches
    itself, and the harness's hook leaves data parallelism to it)."""
    tree = _parse(text)
    if tree is None:
        return "mx.distributed.init(" in text
    return any(name == "distributed.init" or name.endswith(".distributed.init") for name in _calls(tree))


def goes_through_hook(text: str) -> bool:
    """Whether a trainer imports the harness hook (cpu_speed.install) and calls it: then
    run/data_parallel.py makes its ranks one data-parallel run."""
    import ast

    tree = _parse(text)
    if tree is None:
        return False
    aliases = {a.asname or a.name for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module == HOOK_MODULE
               for a in node.names if a.name == "install"}
    return bool(aliases & set(_calls(tree)))


def require_support(trainer: Path) -> None:
    """Refuse NPROC / HOSTS for a trainer that nothing makes data parallel: started N times
    it would train N separate models on the same batches. Upstream's train_gpt_mlx.py is one
    process, but through the harness hook (cpu_speed.install, which the project's trainer
    calls) run/data_parallel.py splits its batches over the ranks; a trainer that calls
    mx.distributed.init() itself (a record, or the agent) splits them on its own."""
    try:
        text = Path(trainer).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LaunchError(f"NPROC / HOSTS: cannot read the trainer {trainer} ({e})") from None
    if not goes_through_hook(text) and not joins_group_itself(text):
        raise LaunchError(f"NPROC / HOSTS: {trainer} is a single-process trainer: it neither calls the "
                          f"harness hook ({HOOK_MODULE}.install, which makes its ranks data parallel) nor "
                          f"mx.distributed.init(), so several processes would each train their own model; "
                          f"unset NPROC and HOSTS, or restore the hook's fenced block near the trainer's top")


def trainer_command(python: str, trainer: Path, launch: dict | None, cwd: Path,
                    forward: dict | None = None) -> list[str]:
    """The command run.py starts: the trainer itself, or mlx.launch running it on every rank.
    `forward` are the trainer's settings: ranks started over ssh do not inherit this
    process's environment, so mlx.launch exports them on every rank (--env)."""
    if launch is None:
        return [python, str(trainer)]
    launcher = Path(python).parent / "mlx.launch"
    if not launcher.exists():
        raise LaunchError(f"{launcher} is missing: NPROC/HOSTS need MLX's launcher; re-run scripts/setup.sh")
    port = settings.get("AUTOGOLF_RING_PORT") or str(free_port_base(launch["world_size"]))
    where = ["--hostfile", launch["hostfile"]] if "hostfile" in launch \
        else ["--hosts", "127.0.0.1", "-n", str(launch["world_size"])]
    env = [arg for k, v in sorted((forward or {}).items()) for arg in ("--env", f"{k}={v}")]
    return [python, str(launcher), "--backend", launch["backend"], *where, "--starting-port", port, "--cwd", str(cwd),
            *env, "--", python, "-m", "autogolf.run.distributed", "rank", str(trainer)]


def rank_returncode(returncode: int, console_text: str) -> tuple[int, str]:
    """mlx.launch exits 0 even when a rank failed: the first failing rank's exit code (negative:
    killed by that signal) and a note naming it, else the launcher's own code and ''."""
    for m in _RANK_EXIT.finditer(console_text):
        if m[2] is not None and int(m[2]) != 0:
            code = int(m[2])
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return (returncode or code), f"rank {m[1]} {how}; mlx.launch ended the other ranks"
    return returncode, ""


def _exec_rank(trainer: str) -> None:
    """One rank: die with mlx.launch (PR_SET_PDEATHSIG survives exec), then become the trainer."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    os.execv(sys.executable, [sys.executable, trainer])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "rank":
        sys.exit("usage: python -m autogolf.run.distributed rank TRAINER  (mlx.launch runs this on every rank)")
    _exec_rank(sys.argv[2])
