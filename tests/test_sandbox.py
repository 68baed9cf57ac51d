"""The trainer runs in a sandbox (autogolf/sandbox.py), and the harness checks its own
integrity during a run (autogolf/judge/integrity.py). Each tamper below is a real run of a
modified trainer through `bash autoresearch.sh` in a throw-away project, and each is caught:
the run is not `ok`, the reason on its summary line names what was denied or changed, and the
target (the ledger, the venv, a harness file, a listener on the host) is untouched.

Tampers are inserted just before the trainer's final `if __name__ == "__main__":` line (code
that runs when the trainer is imported, and monkeypatches of its module-level names), so they
do not depend on the body of the trainer, which changes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from autogolf import sandbox
from autoresearch_helpers import bench_env, git, ledger_rows, make_project, run_bench, summary_line

TRAINER = "benchmark/train_gpt_mlx.py"
MAIN_GUARD = 'if __name__ == "__main__":'

pytestmark = pytest.mark.skipif(sandbox.problem("bwrap") != "", reason="bwrap cannot start here")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("sandbox") / "project")


def tampered(project: Path, code: str) -> str:
    text = (project / TRAINER).read_text(encoding="utf-8")
    at = text.rindex(MAIN_GUARD)
    return text[:at] + "# --- tamper\n" + code.strip() + "\n\n\n" + text[at:]


def run(project, tiny_data, tmp_path, code: str, **extra):
    dataset, tokenizer = tiny_data
    path = tmp_path / f"train_{uuid.uuid4().hex[:6]}.py"
    path.write_text(tampered(project, code), encoding="utf-8")
    env = bench_env(dataset, tokenizer, tmp_path / "lock", AUTOGOLF_TRAINER=str(path), **extra)
    out = run_bench(project, env, timeout=400)
    return out, ledger_rows(project)[-1], summary_line(out.stdout)


def reason(summary: str) -> str:
    return summary.split("reason: ", 1)[1]


def assert_denied(out, row, summary, *words):
    assert out.returncode != 0 and row["status"] != "ok", out.stdout[-3000:]
    assert " sandbox=" in summary and row["sandbox"]["honest"], summary
    for word in words:
        assert word in summary, summary
    print(f"\n  caught ({row['status']}, sandbox={row['sandbox']['label']}): {reason(summary)}")


# --------------------------------------------------------------------------- reading outside the view

VAL_FROM_TOKENIZER = """
_data_root = Path(os.environ["TOKENIZER_PATH"]).resolve().parents[1]  # data/tokenizers -> data/
_val = _data_root / "datasets" / Path(os.environ["DATA_PATH"]).name / "fineweb_val_000000.bin"
_LEAK = np.fromfile(_val, dtype=np.uint16)  # the whole validation split, holdout included
"""


def test_validation_split_outside_the_view_is_unreadable(project, tiny_data, tmp_path):
    dataset, _ = tiny_data
    assert (dataset / "fineweb_val_000000.bin").is_file()  # the path the tamper computes is real
    out, row, summary = run(project, tiny_data, tmp_path, VAL_FROM_TOKENIZER)
    assert_denied(out, row, summary, "No such file or directory", "fineweb_val_000000.bin")


def test_validation_split_by_its_literal_path_under_landlock(project, tiny_data, tmp_path):
    """The same leak written differently (the path as a literal, read by os.open), and
    confined by the fallback mechanism: Landlock denies what bubblewrap hides."""
    dataset, _ = tiny_data
    code = f"_FD = os.open({str(dataset / 'fineweb_val_000000.bin')!r}, os.O_RDONLY)\n"
    out, row, summary = run(project, tiny_data, tmp_path, code, AUTOGOLF_SANDBOX="landlock")
    assert row["sandbox"]["mechanism"] == "landlock"
    assert_denied(out, row, summary, "Permission denied", "fineweb_val_000000.bin")


# --------------------------------------------------------------------------- writes outside the out dir

def test_forged_ledger_row_is_not_written(project, tiny_data, tmp_path):
    forged = {"record": "run", "run_id": "forged", "status": "ok", "metrics": {"val_bpb": 0.1}}
    code = f"""
with open(os.path.join(os.getcwd(), "logs", "runs.jsonl"), "a") as _f:  # cwd: the repository
    _f.write({json.dumps(json.dumps(forged))} + "\\n")
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "logs/runs.jsonl")
    assert not any(r.get("run_id") == "forged" for r in ledger_rows(project))
    assert '"run_id": "forged"' not in (project / "logs" / "runs.jsonl").read_text()


def test_protected_record_is_not_rewritten(project, tiny_data, tmp_path):
    before = (project / "logs" / "protected.json").read_bytes()
    code = """
import pathlib as _pl
_pl.Path.cwd().joinpath("logs/protected.json").write_text("{}")
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "protected.json")
    assert (project / "logs" / "protected.json").read_bytes() == before


def test_pth_in_site_packages_is_not_written(project, tiny_data, tmp_path):
    import site
    name = f"zz_tamper_{uuid.uuid4().hex[:8]}.pth"
    code = f"""
import site as _site
Path(_site.getsitepackages()[0], {name!r}).write_text("import sys\\n")
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "Read-only file system", name)
    assert not any((Path(d) / name).exists() for d in site.getsitepackages())


def test_harness_file_and_bytecode_cache_are_not_written(project, tiny_data, tmp_path):
    score = project / "autogolf" / "measure" / "score.py"
    before = score.read_bytes()
    code = """
_harness = Path.cwd() / "autogolf" / "measure" / "score.py"
_text = _harness.read_text()
_harness.write_text(_text.replace("abs_diff", "abs_diff"))  # same bytes: any write is the tamper
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "Read-only file system", "autogolf/measure/score.py")
    assert score.read_bytes() == before
    pyc = f"verdict.cpython-{sys.version_info.major}{sys.version_info.minor}.pyc"
    code = f"""
_cache = os.path.join(os.getcwd(), "autogolf", "judge", "__pycache__")
os.makedirs(_cache, exist_ok=True)
with open(os.path.join(_cache, {pyc!r}), "wb") as _f:
    _f.write(b"poisoned bytecode")
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "autogolf/judge/__pycache__")
    assert not (project / "autogolf" / "judge" / "__pycache__" / pyc).exists()


# --------------------------------------------------------------------------- weights outside the artifact

WEIGHTS_IN_HOME_CACHE = """
_WEIGHTS = Path(os.path.expanduser("~/.cache/golf/weights.npz"))
_real_quantize = quantize_state_dict_int8


def quantize_state_dict_int8(flat, keep_fp32):
    _WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    mx.savez(str(_WEIGHTS), **flat)
    return _real_quantize(flat, keep_fp32)


def dequantize_state_dict_int8(obj):
    return dict(mx.load(str(_WEIGHTS)))  # the artifact is only a key; the weights live in ~/.cache
"""


def test_weights_kept_in_home_do_not_reach_the_scorer(project, tiny_data, tmp_path):
    home_cache = Path.home() / ".cache" / "golf" / "weights.npz"
    out, row, summary = run(project, tiny_data, tmp_path, WEIGHTS_IN_HOME_CACHE)
    assert out.returncode != 0 and row["status"] != "ok", out.stdout[-3000:]
    assert not home_cache.exists()  # the trainer's HOME was a private folder, deleted with the run
    assert not (project / "logs" / "work" / row["run_id"]).exists()
    print(f"\n  caught ({row['status']}): {reason(summary)}")


def test_weights_written_to_the_real_home_by_its_password_entry(project, tiny_data, tmp_path):
    code = """
import pwd as _pwd
_real_home = Path(_pwd.getpwuid(os.getuid()).pw_dir)  # not $HOME: the account's own folder
(_real_home / ".golf_weights.bin").write_bytes(b"w" * 1024)
"""
    out, row, summary = run(project, tiny_data, tmp_path, code)
    assert_denied(out, row, summary, "Read-only file system", ".golf_weights.bin")
    assert not (Path.home() / ".golf_weights.bin").exists()


# --------------------------------------------------------------------------- network

class Listener:
    """A TCP and a UDP socket on the host's loopback that record whatever reaches them."""

    def __init__(self):
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(4)
        self.tcp.settimeout(0.5)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.5)
        self.got: list[str] = []
        self.done = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.done:
            for sock, what in ((self.tcp, "tcp"), (self.udp, "udp")):
                try:
                    if what == "tcp":
                        sock.accept()[0].close()
                    else:
                        sock.recv(100)
                    self.got.append(what)
                except OSError:
                    pass


def test_network_under_a_computed_module_name(project, tiny_data, tmp_path):
    listener = Listener()
    tcp_port, udp_port = listener.tcp.getsockname()[1], listener.udp.getsockname()[1]
    code = f"""
_net = __import__("so" + "cket")
_u = _net.socket(_net.AF_INET, _net.SOCK_DGRAM)
_u.sendto(b"val_bpb", ("127.0.0.1", {udp_port}))  # UDP first: no error even when nobody is there
_net.create_connection(("127.0.0.1", {tcp_port}), timeout=5).sendall(b"val_bpb")
"""
    try:
        out, row, summary = run(project, tiny_data, tmp_path, code)
        time.sleep(1.0)
    finally:
        listener.done = True
    assert_denied(out, row, summary, "Connection refused")
    assert listener.got == []  # the host's loopback is another network: nothing arrived
    assert row["distributed"] is None


# --------------------------------------------------------------------------- integrity during a run
# These run unconfined (AUTOGOLF_SANDBOX=off, accepted): the sandbox would stop the writes
# themselves; the hashes must catch them anyway.

def test_harness_file_changed_with_its_mtime_restored_fails_integrity(project, tiny_data, tmp_path):
    target = project / "autogolf" / "measure" / "metrics.py"
    before = target.read_bytes()
    code = f"""
_t = Path({str(target)!r})
_st = _t.stat()
_t.write_bytes(_t.read_bytes() + b"\\n# edited by the trainer\\n")
os.utime(_t, ns=(_st.st_atime_ns, _st.st_mtime_ns))  # the old mtime: only a content hash sees it
"""
    try:
        out, row, summary = run(project, tiny_data, tmp_path, code, AUTOGOLF_SANDBOX="off")
    finally:
        target.write_bytes(before)
    assert row["sandbox"]["label"] == "none(AUTOGOLF_SANDBOX=off)" and "sandbox=none(AUTOGOLF_SANDBOX=off)" in summary
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert "harness integrity: changed autogolf/measure/metrics.py" in summary, summary
    print(f"\n  caught: {reason(summary)}")


@pytest.mark.alone  # it adds a .pth to the shared venv, which every run beside it would catch
def test_pth_added_during_the_run_fails_integrity(project, tiny_data, tmp_path):
    import site
    name = f"zz_tamper_{uuid.uuid4().hex[:8]}.pth"
    target = Path(site.getsitepackages()[0]) / name
    code = f"""
Path({str(target)!r}).write_text("# a start-up hook: a line starting with import would run in every process\\n")
"""
    try:
        out, row, summary = run(project, tiny_data, tmp_path, code, AUTOGOLF_SANDBOX="off")
    finally:
        target.unlink(missing_ok=True)
    assert out.returncode == 4 and row["status"] == "integrity_failed", out.stdout[-3000:]
    assert "harness integrity: added " in summary and name in summary, summary
    print(f"\n  caught: {reason(summary)}")


def test_planted_bytecode_is_never_run_by_the_harness(project, tiny_data, tmp_path):
    """A .pyc planted in the repository's __pycache__, with the source's mtime and size in
    its header (what CPython checks), is never read: the harness keeps its bytecode under
    pycache_prefix (autoresearch.sh)."""
    import importlib.util
    import marshal
    source = project / "autogolf" / "judge" / "repeats.py"
    st = source.stat()
    code = compile("raise SystemExit('POISONED BYTECODE RAN')\n", str(source), "exec")
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + \
        int(st.st_mtime).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(code))
    try:  # the poisoned file works: a plain interpreter from the project runs it
        plain = subprocess.run([sys.executable, "-c", "import autogolf.judge.repeats"], cwd=project,
                               capture_output=True, text=True)
        assert "POISONED BYTECODE RAN" in plain.stderr
        out, row, summary = run(project, tiny_data, tmp_path, "")
    finally:
        pyc.unlink()
    assert "POISONED" not in out.stdout + out.stderr
    assert out.returncode == 0 and row["status"] == "ok", out.stdout[-3000:]


# --------------------------------------------------------------------------- untampered

def test_untampered_run_is_ok_in_the_sandbox(project, tiny_data, tmp_path):
    out, row, summary = run(project, tiny_data, tmp_path, "")
    assert out.returncode == 0 and row["status"] == "ok", out.stdout[-3000:]
    assert row["sandbox"] == {"mechanism": "bwrap", "label": "bwrap", "honest": True}
    assert " sandbox=bwrap " in summary
    assert {f"{row['run_id']}.txt", f"{row['run_id']}_mlx_model.int8.ptz"} <= set(row["outputs"]["moved"])
    assert (project / "logs" / f"{row['run_id']}.txt").is_file()
    assert not (project / "logs" / "work" / row["run_id"]).exists()


def test_no_mechanism_is_never_kept_unless_accepted(project, tiny_data, tmp_path):
    """With no working mechanism (one forced that cannot start here) the run says so and its
    VERDICT cannot be keep; AUTOGOLF_SANDBOX=off accepts it, shown on the line."""
    out, row, summary = run(project, tiny_data, tmp_path, "", AUTOGOLF_SANDBOX="seatbelt")
    assert out.returncode == 0 and row["sandbox"]["mechanism"] == "none" and not row["sandbox"]["honest"]
    assert " sandbox=none " in summary and row["verdict"]["call"] != "keep"
    assert "sandbox: none" in out.stdout.splitlines()[-1]
    git(project, "status")  # the project is still a clean git checkout
