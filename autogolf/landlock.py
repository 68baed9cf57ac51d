"""Landlock, the Linux sandbox without namespaces: a ruleset applied to this process by raw
system calls (ctypes), then `exec` of the confined command. The fallback of autogolf/sandbox.py
where bubblewrap cannot start (user namespaces restricted); Landlock needs no privilege.

    python -I -m autogolf.landlock RULES_JSON -- COMMAND...

RULES_JSON: {"read": [paths], "write": [paths], "tcp": bool}. Read paths get read and
execute, write paths everything; every other path is denied. With "tcp": false (ABI >= 4) no
TCP bind or connect is allowed. From ABI 6 the process also cannot signal, or reach by
abstract unix socket, anything outside its own domain. What Landlock cannot filter (UDP,
the address of a TCP peer) is stated in README "Sandbox".
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

# System call numbers (the same on x86_64 and aarch64, the two Linux machines we run on).
_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446
_VERSION_FLAG = 1  # LANDLOCK_CREATE_RULESET_VERSION
_RULE_PATH, _RULE_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
# per ABI: every file-system right that version knows (v2 adds REFER, v3 TRUNCATE, v5 IOCTL_DEV)
_FS_ALL = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION_FLAG))
    return max(int(version), 0)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return result


def restrict(read: list[str], write: list[str], tcp: bool, listed: list[str] = ()) -> int:
    """Confine this process (and all it will exec) to the rules; returns the ABI used.
    `listed`: folders whose entries may be listed (names only, no file's content)."""
    abi = abi_version()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fs_all = _FS_ALL.get(abi, _FS_ALL[5])
    attr = _RulesetAttr(fs=fs_all, net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 and not tcp else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # older kernels reject fields they do not know
    ruleset = _check(libc.syscall(ctypes.c_long(_CREATE), ctypes.byref(attr), ctypes.c_size_t(size),
                                  ctypes.c_uint32(0)), "create_ruleset")
    try:
        for paths, rights in ((listed, _READ_DIR), (read, _READ), (write, fs_all)):
            for path in paths:
                _add_path(libc, ruleset, path, rights, fs_all)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(libc.syscall(ctypes.c_long(_RESTRICT), ctypes.c_int(ruleset), ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_path(libc, ruleset: int, path: str, rights: int, fs_all: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this machine does not have (e.g. /lib32) needs no rule
    try:
        if not os.path.isdir(path):  # a file takes only the rights that apply to files
            rights &= _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)
        rule = _PathBeneath(allowed=rights & fs_all, parent_fd=fd)
        _check(libc.syscall(ctypes.c_long(_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH),
                            ctypes.byref(rule), ctypes.c_uint32(0)), f"add_rule {path}")
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -I -m autogolf.landlock RULES_JSON -- COMMAND...")
    rules = json.loads(argv[0])
    try:
        restrict(rules["read"], rules["write"], bool(rules.get("tcp")), rules.get("list") or [])
    except OSError as e:
        sys.exit(f"sandbox (landlock): {e}; the run cannot be confined")
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
