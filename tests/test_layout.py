"""The package layout keeps its promises: imports follow the data flow with no cycle, every
AUTOGOLF_* variable is declared once and read through autogolf.settings, the repository root is
defined once, and no function grows past 80 lines. All read from the source, with ast."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from autogolf import settings
from conftest import REPO

PACKAGE = REPO / "autogolf"
# The flow: data cache -> trainer -> log -> METRIC lines -> ledger -> verdict -> agent. A module
# may import from its own package and from packages of a lower rank, never from a higher one.
# The top-level modules (paths, settings, fsutil, textutil, proc, sandbox...) are below every stage; run/ is the
# orchestrator that drives data -> measure -> judge; lab/ and agent/ sit on top, apart.
RANKS = {"": 0, "data": 1, "measure": 2, "judge": 3, "run": 4, "lab": 5, "agent": 5}
MAX_FUNCTION_LINES = 80


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, ast.AST]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}


def imports_of(tree: ast.AST, known: set[str]) -> set[str]:
    """Every autogolf module this one imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("autogolf")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autogolf"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(tree, known) - {name} for name, tree in modules.items()}


def test_every_package_has_a_rank():
    packages = {stage(m) for m in import_graph()}
    assert packages <= set(RANKS), packages - set(RANKS)


def test_imports_follow_the_flow():
    against = []
    for src, targets in import_graph().items():
        for dst in targets:
            s, d = stage(src), stage(dst)
            if s != d and RANKS[d] >= RANKS[s]:
                against.append(f"{src} -> {dst}")
    assert not against, "imports against the flow:\n" + "\n".join(sorted(against))


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_package_module_imports_on_its_own():
    """Each module imports in a fresh interpreter: no module works only by luck of order."""
    names = sorted(m for m in import_graph() if not m.endswith("__main__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def source_files():
    yield from PACKAGE.rglob("*.py")
    yield from (REPO / "scripts").glob("*.py")


def test_autogolf_variables_are_read_only_through_settings():
    direct = re.compile(r"""(?:environ(?:\.get)?\s*[(\[]|getenv\s*\()\s*["'](AUTOGOLF_\w+)""")
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in source_files() if p.name != "settings.py"
                 for m in direct.findall(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_every_autogolf_variable_is_declared():
    named = set()
    for p in [*source_files(), *(REPO / "scripts").glob("*.sh"), REPO / "autoresearch.sh", REPO / "Justfile"]:
        named |= set(re.findall(r"\bAUTOGOLF_[A-Z0-9_]+", p.read_text(encoding="utf-8")))
    named.discard("AUTOGOLF_")
    assert named <= set(settings.SETTINGS), sorted(named - set(settings.SETTINGS))
    for s in settings.SETTINGS.values():
        assert s.meaning and "\n" not in s.meaning, s.name


def test_settings_read_the_environment_then_the_default():
    assert settings.get("AUTOGOLF_KEEP_LAST", {}) == "5"
    assert settings.get("AUTOGOLF_KEEP_LAST", {"AUTOGOLF_KEEP_LAST": ""}) == "5"
    assert settings.get("AUTOGOLF_KEEP_LAST", {"AUTOGOLF_KEEP_LAST": "2"}) == "2"
    listing = subprocess.run([sys.executable, "-m", "autogolf.settings"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    assert all(name in listing for name in settings.SETTINGS)


def test_the_repository_root_is_defined_once():
    defined = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
               if re.search(r"^\s*REPO(?:_ROOT)?\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert defined == ["autogolf/paths.py"], defined


def test_no_function_is_longer_than_80_lines():
    long = []
    for p in source_files():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - start + 1} lines")
    assert not long, long
