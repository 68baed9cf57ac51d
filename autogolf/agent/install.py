"""`just setup-agent`: Node >= 22.19, pi and pi-autoresearch, pinned, inside the project.

    python -m autogolf.agent.install            (scripts/setup-agent.sh)

1. Node: the system's when it is new enough (pi needs >= 22.19); otherwise the pinned build
   from the npm registry's `node-<os>-<arch>` package (agent/tools.json: version and the
   registry's sha512 integrity), unpacked into .tools/ (git-ignored). macOS on Apple Silicon
   has no such package for Node 22: there it asks for `brew install node@22`.
2. npm: the system's when it runs under that Node; otherwise the pinned `npm` package.
3. `npm ci` of agent/package-lock.json into agent/node_modules: pi
   (@earendil-works/pi-coding-agent 1.6.0) and pi-autoresearch 1.6.0. Never global.
Idempotent: a stamp records what was installed; a second run checks and returns.

Environment: AUTOGOLF_NPM_REGISTRY (default $npm_config_registry, else the public registry).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from autogolf import settings
from autogolf.textutil import sayer
from autogolf.paths import AGENT_DIR, REPO_ROOT, TOOLS_DIR

PI_VERSION = "1.6.0"
EXTENSION_VERSION = "1.6.0"
DEFAULT_REGISTRY = "https://registry.npmjs.org"


class InstallError(RuntimeError):
    """Something the user must fix; the message says what."""


say = sayer("setup-agent: ")


def version_tuple(text: str) -> tuple[int, ...]:
    digits = text.strip().lstrip("v").split("-")[0].split(".")
    try:
        return tuple(int(d) for d in digits[:3])
    except ValueError:
        return ()


def pins() -> dict:
    return json.loads((AGENT_DIR / "tools.json").read_text(encoding="utf-8"))


def registry() -> str:
    return (settings.get("AUTOGOLF_NPM_REGISTRY") or os.environ.get("npm_config_registry")
            or DEFAULT_REGISTRY).rstrip("/")


def platform_key() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    return f"{system}-{arch}"


# --------------------------------------------------------------------------- node

def node_version(node: str | Path) -> str | None:
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pinned_node_dir(pin: dict) -> Path:
    return TOOLS_DIR / f"{pin['package']}-{pin['version']}"


def find_node(minimum: str) -> tuple[Path | None, str | None]:
    """(path to a node binary that is new enough, its version): ours in .tools/ first, then the
    system's. (None, best version seen) when there is none."""
    seen = None
    candidates = sorted(TOOLS_DIR.glob("node-*/bin/node"), reverse=True)
    system = shutil.which("node")
    if system:
        candidates.append(Path(system))
    for node in candidates:
        version = node_version(node)
        if version and version_tuple(version) >= version_tuple(minimum):
            return node, version
        seen = seen or version
    return None, seen


def fetch_package(package: str, version: str, integrity: str, dest: Path) -> None:
    """Download `package@version` from the registry, check the registry's sha512, unpack its
    `package/` folder to dest (atomically: a temp folder renamed into place)."""
    url = f"{registry()}/{package}/-/{package.split('/')[-1]}-{version}.tgz"
    say(f"fetching {package}@{version} from {url}")
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise InstallError(f"could not download {url}: {e}; check the network or set "
                           f"AUTOGOLF_NPM_REGISTRY to a reachable npm registry") from None
    algo, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise InstallError(f"{url}: integrity mismatch ({algo} {actual[:16]}... != pinned "
                           f"{expected[:16]}...); the download is corrupt or not the pinned release")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        archive = Path(tmp) / "package.tgz"
        archive.write_bytes(data)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith("package/") and ".." not in Path(m.name).parts]
            tar.extractall(tmp, members=members)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(Path(tmp) / "package", dest)
    shown = dest.relative_to(REPO_ROOT) if dest.is_relative_to(REPO_ROOT) else dest
    say(f"unpacked {package}@{version} ({len(data) / 1e6:.1f} MB) into {shown} in "
        f"{time.monotonic() - start:.1f} s")


def ensure_node(tools: dict) -> tuple[Path, str]:
    node, version = find_node(tools["node_min"])
    if node:
        return node, version
    key = platform_key()
    pin = tools["node"].get(key)
    if pin is None:
        hint = ("brew install node@22 (and put it first on PATH)" if key.startswith("darwin")
                else "install Node.js >= 22.19 with your package manager")
        raise InstallError(f"pi needs Node.js >= {tools['node_min']} (found {version or 'none'}); "
                           f"the npm registry has no pinned build for {key}: {hint}, then re-run")
    dest = pinned_node_dir(pin)
    fetch_package(pin["package"], pin["version"], pin["integrity"], dest)
    (dest / "bin" / "node").chmod(0o755)
    version = node_version(dest / "bin" / "node")
    if not version:
        raise InstallError(f"{dest}/bin/node does not run on this machine ({key})")
    return dest / "bin" / "node", version


def npm_command(node: Path, tools: dict) -> list[str]:
    """npm run by this node: the system's if it works under it, else the pinned package."""
    system_npm = shutil.which("npm", path=f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env = dict(os.environ, PATH=f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if system_npm:
        out = subprocess.run([system_npm, "--version"], capture_output=True, text=True, env=env, timeout=60)
        if out.returncode == 0:
            return [system_npm]
    pin = tools["npm"]
    dest = TOOLS_DIR / f"npm-{pin['version']}"
    if not (dest / "bin" / "npm-cli.js").is_file():
        fetch_package(pin["package"], pin["version"], pin["integrity"], dest)
    return [str(node), str(dest / "bin" / "npm-cli.js")]


# --------------------------------------------------------------------------- pi

def agent_path(node: Path | None = None) -> str:
    """PATH for running pi: its node first, then agent/node_modules/.bin."""
    if node is None:
        node, _ = find_node(pins()["node_min"])
    parts = [str(AGENT_DIR / "node_modules" / ".bin")]
    if node is not None:
        parts.insert(0, str(Path(node).parent))
    return os.pathsep.join(parts + [os.environ.get("PATH", "")])


def _stamp(node_version_text: str) -> str:
    lock = (AGENT_DIR / "package-lock.json").read_bytes()
    return hashlib.sha256(lock + node_version_text.encode()).hexdigest()


def installed_version(package: str) -> str | None:
    manifest = AGENT_DIR / "node_modules" / package / "package.json"
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def ensure_packages(node: Path, version: str, tools: dict) -> None:
    stamp_file = AGENT_DIR / "node_modules" / ".autogolf-stamp"
    stamp = _stamp(version)
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        say("pi and pi-autoresearch already installed (agent/package-lock.json unchanged)")
        return
    npm = npm_command(node, tools)
    env = dict(os.environ, PATH=agent_path(node), npm_config_registry=registry(),
               npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    say(f"npm ci in agent/ (pi {PI_VERSION}, pi-autoresearch {EXTENSION_VERSION}, pinned by agent/package-lock.json)")
    start = time.monotonic()
    # --ignore-scripts: the packages' install scripts are no-ops or version probes pi does not
    # need, and running none keeps the install reproducible.
    out = subprocess.run([*npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                         cwd=AGENT_DIR, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        tail = " ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
        raise InstallError(f"npm ci in agent/ failed (exit {out.returncode}): {tail}")
    stamp_file.write_text(stamp + "\n")
    say(f"installed in {time.monotonic() - start:.1f} s")


def check_pi(node: Path) -> str:
    pi = AGENT_DIR / "node_modules" / ".bin" / "pi"
    out = subprocess.run([str(pi), "--version"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PATH=agent_path(node), PI_OFFLINE="1",
                                  PI_SKIP_VERSION_CHECK="1", PI_TELEMETRY="0"))
    version = (out.stdout or out.stderr).strip().splitlines()[-1:] or [""]
    if out.returncode != 0 or version[0] != PI_VERSION:
        raise InstallError(f"{pi} --version printed {version[0]!r} (exit {out.returncode}), "
                           f"expected {PI_VERSION}; re-run scripts/setup-agent.sh")
    ext = installed_version("pi-autoresearch")
    if ext != EXTENSION_VERSION:
        raise InstallError(f"agent/node_modules/pi-autoresearch is {ext}, expected {EXTENSION_VERSION}")
    return version[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autogolf.agent.install",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    try:
        tools = pins()
        node, version = ensure_node(tools)
        say(f"node {version} ({node})")
        ensure_packages(node, version, tools)
        pi_version = check_pi(node)
    except InstallError as e:
        say(f"error: {e}")
        return 2
    say(f"ready: pi {pi_version}, pi-autoresearch {EXTENSION_VERSION}, node {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
