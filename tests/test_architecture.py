"""The import direction of docs/ARCHITECTURE.md, checked on the source: stage packages import only downwards
(app → eval → run → search → student → teacher → data → core), no module imports another in a circle (lazy
imports inside functions included), and no private name (``_x``) is imported from another module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "influcoder"
LAYERS = ("core", "data", "teacher", "student", "search", "run", "eval", "app")
"""The stage packages, lowest first: each may import from itself and the ones before it."""


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every influcoder import in a module, lazy ones included."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("influcoder"):
                continue
            names = [a.name for a in node.names]
            for a in names:  # `from . import x` imports a module
                if f"{mod}.{a}" in _modules():
                    out.append((f"{mod}.{a}", [], node.lineno))
                    names = [n for n in names if n != a]
            if names:
                out.append((mod, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("influcoder")]
    return out


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_stage_packages_import_only_downwards():
    bad = []
    for name, path in _modules().items():
        src = _layer(name)
        for mod, _, line in _imports(name, path):
            dst = _layer(mod)
            if src and dst and LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{path.relative_to(SRC)}:{line}: {src} imports {mod} ({dst} is above it)")
    assert not bad, "\n".join(bad)


def test_every_module_lives_in_a_stage_package():
    loose = [n for n in _modules() if n.count(".") == 1 and n.split(".")[1] not in LAYERS
             and n not in ("influcoder.__main__",)]
    assert not loose, f"modules outside the stage packages: {loose}"


def test_no_import_circle_between_modules():
    mods = _modules()
    graph = {n: {m for m, _, _ in _imports(n, p) if m in mods and m != n and not n.startswith(m + ".")}
             for n, p in mods.items()}
    for n in graph:  # a package's __init__ is not an edge target of its own modules
        graph[n] = {m for m in graph[n] if not (mods[m].name == "__init__.py" and n.startswith(m + "."))}
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, "import circles: " + "; ".join(" → ".join(c) for c in cycles)


def test_no_private_name_crosses_a_module():
    bad = []
    for name, path in _modules().items():
        for mod, names, line in _imports(name, path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(SRC)}:{line}: imports {n} from {mod}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_wrong_way_import(tmp_path, monkeypatch):
    """The direction check is not vacuous: a core module importing the app is reported."""
    fake = tmp_path / "influcoder"
    (fake / "core").mkdir(parents=True)
    (fake / "app").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "app" / "__init__.py").write_text("")
    (fake / "app" / "cli.py").write_text("from ..core import x\n")
    (fake / "core" / "x.py").write_text("def f():\n    from ..app.cli import main\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    try:
        test_stage_packages_import_only_downwards()
    except AssertionError as e:
        assert "core imports influcoder.app.cli" in str(e)
    else:
        raise AssertionError("a core → app import was not reported")
    try:
        test_no_import_circle_between_modules()
    except AssertionError as e:
        assert "influcoder.core.x" in str(e)
    else:
        raise AssertionError("the core.x ↔ app.cli circle was not reported")


def test_help_and_config_checks_import_no_torch():
    """`influcoder --help`, every command's --help and a run config's validation load no torch (they stay fast)."""
    from influcoder.app.cli import app

    names = [""] + [c.name for c in app.registered_commands]
    code = ("import contextlib, io, sys\n"
            "from influcoder.app.cli import main\n"
            "for name in sys.argv[1:]:\n"
            "    sys.argv = ['influcoder'] + ([name] if name != '-' else []) + ['--help']\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main()\n"
            "        except SystemExit:\n"
            "            pass\n"
            "from influcoder.core.config import from_dict\n"
            "from influcoder.run.config import RunConfig\n"
            "from_dict(RunConfig, {'pool': {'path': 'p.jsonl'}, 'queries': 'q.jsonl'})\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, *[n or "-" for n in names]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"], r.stdout
