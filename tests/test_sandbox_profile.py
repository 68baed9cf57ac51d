"""The sandbox's parts, without a trainer: the macOS Seatbelt profile's text (there is no Mac
here: this is all that is tested of it), tiny real processes confined by each Linux mechanism
that works here, the out dir's collection, and the integrity hashes' comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autogolf import sandbox
from autogolf.judge import integrity
from autogolf.run import outputs


# --------------------------------------------------------------------------- Seatbelt (text only)

def sexprs(text: str) -> list:
    """A small reader for SBPL's S-expressions: lists, "strings" with escapes, #"regex"
    literals, symbols; ';;' comments. Raises on unbalanced input."""
    pos, out, stack = 0, [], []
    current = out
    while pos < len(text):
        c = text[pos]
        if c == ";":
            pos = text.index("\n", pos)
        elif c == "(":
            stack.append(current)
            current.append([])
            current = current[-1]
        elif c == ")":
            assert stack, f"unbalanced ')' at {pos}"
            current = stack.pop()
        elif c == '"' or text.startswith('#"', pos):
            pos += 2 if c == "#" else 1
            value = ""
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                value += text[pos]
                pos += 1
            current.append(("str", value))
        elif not c.isspace():
            end = pos
            while end < len(text) and not text[end].isspace() and text[end] not in "()":
                end += 1
            current.append(text[pos:end])
            pos = end - 1
        pos += 1
    assert not stack, "unclosed '('"
    return out


def rules(profile: str) -> list[tuple[str, str, list]]:
    """(allow|deny, operation, filters) for every rule."""
    return [(r[0], r[1], r[2:]) for r in sexprs(profile) if r[0] in ("allow", "deny")]


def strings(filters) -> set[str]:
    return {f[1][1] for f in filters if isinstance(f, list) and len(f) == 2 and isinstance(f[1], tuple)}


def test_seatbelt_profile_denies_what_matters_and_allows_the_jail(tmp_path):
    home, repo = Path("/Users/me"), Path("/Users/me/golf")
    out = repo / "logs" / "work" / "run1"
    view = repo / "logs" / "views" / "run1"
    jail = sandbox.Jail(reads=[repo / "benchmark" / "train_gpt_mlx.py", view], writes=[out])
    profile = sandbox.seatbelt_profile(jail, out / ".home", real_home=home, repo=repo)
    parsed = rules(profile)
    assert sexprs(profile)[0] == ["version", "1"]
    assert parsed[0] == ("allow", "default", [])  # allow by default: Metal and frameworks work
    ops = [(verb, op) for verb, op, _ in parsed]
    # SBPL: the last matching rule wins, so each deny comes before its exceptions
    assert ops.index(("deny", "file-read-data")) < ops.index(("allow", "file-read-data"))
    assert ops.index(("deny", "file-write*")) < ops.index(("allow", "file-write*"))
    denied_reads = strings(next(f for v, o, f in parsed if (v, o) == ("deny", "file-read-data")))
    assert denied_reads == {str(home), str(repo / "data"), str(repo / "logs"), str(repo / ".git")}
    allowed_reads = strings(next(f for v, o, f in parsed if (v, o) == ("allow", "file-read-data")))
    assert {str(view), str(out), str(repo / "benchmark" / "train_gpt_mlx.py")} <= allowed_reads
    assert str(Path(sys.prefix).resolve()) in allowed_reads  # the Python environment
    allowed_writes = strings(next(f for v, o, f in parsed if (v, o) == ("allow", "file-write*")))
    assert str(out) in allowed_writes and not any(str(repo / "logs") == w for w in allowed_writes)
    assert ("deny", "network*") in ops and ("allow", "network*") not in ops


def test_seatbelt_profile_network_modes_and_quoting():
    jail = sandbox.Jail(reads=[Path('/odd "name"\\dir')], writes=[Path("/w")], network="loopback")
    profile = sandbox.seatbelt_profile(jail, Path("/w/.home"), real_home=Path("/h"), repo=Path("/r"))
    parsed = rules(profile)
    assert '/odd "name"\\dir' in strings(next(f for v, o, f in parsed if (v, o) == ("allow", "file-read-data")))
    loop = next(f for v, o, f in parsed if (v, o) == ("allow", "network*"))
    assert [(x[0], x[1], x[-1][1]) for x in loop] == [("local", "ip", "localhost:*"), ("remote", "ip", "localhost:*")]
    hosts = sandbox.seatbelt_profile(sandbox.Jail(reads=[], writes=[Path("/w")], network="hosts"),
                                     Path("/w/.home"), real_home=Path("/h"), repo=Path("/r"))
    assert not any(op.startswith("network") for _, op, _ in rules(hosts))


# --------------------------------------------------------------------------- Linux, for real

PROBE = r"""
import os, sys, socket
def attempt(what, fn):
    try:
        fn(); print(what, "allowed")
    except OSError as e:
        print(what, "denied", e.errno)
attempt("read", lambda: open(sys.argv[1]).read())
attempt("write-outside", lambda: open(sys.argv[2], "w").close())
attempt("write-out", lambda: open(os.path.join(sys.argv[3], "f"), "w").close())
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=3))
print("home", os.environ["HOME"])
"""


@pytest.mark.parametrize("mechanism", ["bwrap", "landlock"])
def test_a_confined_process_reads_and_writes_only_what_it_is_given(mechanism, tmp_path, monkeypatch):
    if sandbox.problem(mechanism):
        pytest.skip(f"{mechanism}: {sandbox.problem(mechanism)}")
    import socket
    secret, allowed = tmp_path / "secret.txt", tmp_path / "allowed.txt"
    secret.write_text("s")
    allowed.write_text("a")
    out = tmp_path / "out"
    out.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    monkeypatch.setenv("AUTOGOLF_SANDBOX", mechanism)
    results = {}
    for target, reads in ((secret, []), (allowed, [allowed])):
        argv, env = sandbox.wrap([sys.executable, "-c", PROBE, str(target), str(tmp_path / "x"), str(out),
                                  str(listener.getsockname()[1])],
                                 dict(os.environ, SOME_API_KEY="k"), sandbox.Jail(reads=reads, writes=[out]))
        assert "SOME_API_KEY" not in env
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        results[target.name] = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    listener.close()
    assert results["secret.txt"]["read"].startswith("denied")
    assert results["allowed.txt"]["read"] == "allowed"
    for r in results.values():
        assert r["write-outside"].startswith("denied") and r["write-out"] == "allowed", r
        assert r["tcp"].startswith("denied") and r["home"] == str(out / ".home")
    assert not (tmp_path / "x").exists()


def test_unknown_choice_and_network_are_clear_errors(monkeypatch):
    monkeypatch.setenv("AUTOGOLF_SANDBOX", "firejail")
    with pytest.raises(ValueError, match="AUTOGOLF_SANDBOX='firejail'"):
        sandbox.mechanism()
    monkeypatch.setenv("AUTOGOLF_SANDBOX", "off")
    assert sandbox.mechanism() == "none" and sandbox.label() == "none(AUTOGOLF_SANDBOX=off)"
    assert sandbox.record()["honest"] is True
    with pytest.raises(ValueError, match="Jail.network='wan'"):
        sandbox.wrap(["true"], {}, sandbox.Jail(reads=[], writes=[Path("/tmp")], network="wan"))


# --------------------------------------------------------------------------- after the run

def test_only_the_runs_regular_files_leave_the_out_dir(tmp_path):
    out, logs = tmp_path / "work" / "r1", tmp_path / "logs"
    (out / ".home" / ".cache").mkdir(parents=True)
    logs.mkdir()
    (out / "r1.txt").write_text("log")
    (out / "r1_mlx_model.npz").write_bytes(b"raw")
    (out / ".home" / ".cache" / "weights.bin").write_bytes(b"w")
    (out / "other.bin").write_bytes(b"x")
    os.symlink("/etc/hostname", out / "r1_mlx_model.int8.ptz")
    record = outputs.collect(out, logs, "r1")
    assert record["moved"] == ["r1.txt", "r1_mlx_model.npz"]
    assert record["refused"] == ["r1_mlx_model.int8.ptz"]
    assert set(record["left"]) == {".home/.cache/weights.bin", "other.bin"}
    assert (logs / "r1.txt").read_text() == "log" and not (logs / "r1_mlx_model.int8.ptz").exists()


def test_integrity_names_what_changed(tmp_path):
    before = {"a.py": "1", "b.py": "2"}
    assert integrity.changes(before, dict(before)) == []
    assert integrity.changes(before, {"a.py": "9", "c.pth": "3"}) == ["changed a.py", "added c.pth", "removed b.py"]
    hooks = integrity.startup_hooks()
    assert any(p.suffix == ".pth" for p in hooks)  # the editable install's own .pth at least


# --------------------------------------------------------------------------- MLX's kernel cache

def test_kernel_cache_takes_back_only_small_elf_kernels_and_seeds_copies(tmp_path):
    from autogolf import kernelcache
    run_tmp, cache = tmp_path / "run" / ".tmp", tmp_path / "cache"
    cpu = run_tmp / "mlx" / "0.32.4" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "libAf4OAdd_VV_f4_123_contiguous.so").write_bytes(b"\x7fELF" + b"\0" * 100)
    (cpu / ("lib" + "A" * 245 + ".so")).write_bytes(b"\x7fELF")  # a name at NAME_MAX (255)
    (cpu / "Af4OAdd_VV_f4_123_contiguous.cpp").write_text("// source: not needed to load")
    (cpu / "libBig_1_contiguous.so").write_bytes(b"\x7fELF" + b"\0" * kernelcache.MAX_KERNEL_BYTES)
    (cpu / "libNotElf_1_contiguous.so").write_bytes(b"weights" * 10)
    (cpu / "weights.npz").write_bytes(b"\x7fELF")
    os.symlink(cpu / "libAf4OAdd_VV_f4_123_contiguous.so", cpu / "libLink_1_contiguous.so")
    record = kernelcache.harvest(run_tmp, cache)
    assert record == {"cached": 2, "new": 2, "refused": 2}
    assert sorted(p.name for p in (cache / "0.32.4" / "cpu").iterdir()) == [
        "lib" + "A" * 245 + ".so", "libAf4OAdd_VV_f4_123_contiguous.so"]
    assert kernelcache.harvest(run_tmp, cache) == {"cached": 2, "new": 0, "refused": 2}  # nothing new
    fresh = tmp_path / "next" / ".tmp"
    assert kernelcache.seed(fresh, cache) == 2
    seeded = fresh / "mlx" / "0.32.4" / "cpu" / "libAf4OAdd_VV_f4_123_contiguous.so"
    seeded.write_bytes(b"\x7fELF poisoned")  # a copy: the cache itself is untouched
    assert (cache / "0.32.4" / "cpu" / seeded.name).read_bytes() == b"\x7fELF" + b"\0" * 100
