"""The shape of the code in ``hybrid_alloc/``: no import cycle between its modules (counting imports inside
functions too: a lazy import of a project module hides an edge, not a cycle), and no vLLM release named
outside the version table (``hybrid_alloc/vllm_versions.py``)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hybrid_alloc"
VERSION_TABLE = "hybrid_alloc.vllm_versions"

# A vLLM release in a string or comment: "0.32", "0.33.1", "v0.34.0rc1", "0.10.x" (numbers 0.10 .. 0.99
# with two digits, the releases since 0.10), or any version right after "vllm" ("vLLM 0.9", "vllm==0.8.5").
RELEASE = re.compile(
    r"(?<![\w.])v?0\.(?:[1-9]\d)(?:\.(?:\d+|x))?(?:rc\d+)?(?![\w.]*\d)|(?i:vllm(?:-cpu)?\s*(?:==|>=|<=|~=|\s)\s*v?0\.\d+)"
)
TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
NOT_A_RELEASE = re.compile(r"^0\.(?:[5-9]\d)$")  # fractions (0.92 utilisation, 0.98 plot margins) above any release


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_imports(name: str, path: Path, known: set[str], nested: bool = False) -> set[str]:
    """The project modules ``name`` imports when it is imported (module level, including ``if`` / ``try``
    blocks; not under ``TYPE_CHECKING``); with ``nested``, also those imported inside functions and classes."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, path.name == "__init__.py")
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule imported by name
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body])
            elif nested and not isinstance(node, ast.If):
                visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def import_graph(root: Path, nested: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at module level; with ``nested``, anywhere). Importing
    ``a.b.c`` also runs the packages ``a`` and ``a.b``: those are edges too."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        targets = module_imports(name, path, set(mods), nested)
        for target in list(targets):
            parts = target.split(".")
            targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in mods and p != name)
        graph[name] = {t for t in targets if not name.startswith(t + ".")}  # a package runs before its modules
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def release_strings(root: Path, table: str = VERSION_TABLE) -> list[str]:
    """``path:line: text`` for each vLLM release written in a string or comment outside ``table``."""
    hits = []
    for name, path in modules(root).items():
        if name == table:
            continue
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type not in TEXT_TOKENS:
                continue
            for match in RELEASE.finditer(token.string):
                if not NOT_A_RELEASE.match(match.group()):
                    line = token.start[0] + token.string[: match.start()].count("\n")
                    hits.append(f"{path.relative_to(root.parent)}:{line}: {match.group()!r}")
    return hits


def _describe(found: list[list[str]]) -> str:
    return "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles in hybrid_alloc/ (module-level imports): " + _describe(found)


def test_no_import_cycle_through_function_level_imports():
    found = cycles(import_graph(PACKAGE, nested=True))
    assert not found, "import cycles in hybrid_alloc/ (imports inside functions included): " + _describe(found)


def test_no_release_outside_the_version_table():
    assert (PACKAGE / "vllm_versions.py").exists()
    hits = release_strings(PACKAGE)
    assert not hits, "vLLM releases named outside hybrid_alloc/vllm_versions.py:\n" + "\n".join(hits)


# --- the checks themselves, on deliberately broken packages


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.py": "from . import b\n", "b.py": "from pkg import a\n"}, [["pkg.a", "pkg.b"]]),
        ({"a.py": "import pkg.sub.c\n", "sub/__init__.py": "", "sub/c.py": "from ..a import x\n"}, [["pkg.a", "pkg.sub.c"]]),
        ({"a.py": "try:\n    from .b import y\nexcept ImportError:\n    pass\n", "b.py": "from .a import x\n"}, [["pkg.a", "pkg.b"]]),
        # the package's __init__ imports a module that imports a sibling through the package
        ({"__init__.py": "from . import a\n", "a.py": "from pkg import b\n", "b.py": ""}, []),
        # TYPE_CHECKING imports never run
        ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n", "b.py": "from . import a\n"}, []),
    ],
)
def test_cycle_check_on_broken_packages(tmp_path, files, expected):
    root = _package(tmp_path, files)
    assert cycles(import_graph(root)) == cycles(import_graph(root, nested=True)) == expected


def test_function_level_imports_are_edges_only_when_nested(tmp_path):
    root = _package(tmp_path, {"a.py": "def f():\n    from . import b\n", "b.py": "class C:\n    def g(self):\n        import pkg.a\n"})
    assert cycles(import_graph(root)) == []
    assert cycles(import_graph(root, nested=True)) == [["pkg.a", "pkg.b"]]


def test_cycle_check_reports_a_three_module_cycle(tmp_path):
    root = _package(tmp_path, {"a.py": "from . import b\n", "b.py": "from .c import f\n", "c.py": "import pkg.a\n"})
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]


@pytest.mark.parametrize(
    "text, found",
    [
        ('"""Mirrors vLLM 0.33\'s planning."""\n', True),
        ("# 0.32: line 939\n", True),
        ('X = "0.34.0rc1"\n', True),
        ('X = "0.10.x"\n', True),
        ('X = f"vLLM {v} (was 0.31)"\n', True),
        ('MIN = "vllm>=0.8"\n', True),
        ("UTILISATION = 0.92  # vLLM's default\n", False),
        ('MARGINS = dict(left=0.06, right=0.98)\n', False),
        ('TOLERANCE = "0.5%"\n', False),
        ("SIZE = 1.32  # 0.92 of the GPU\n", False),
    ],
)
def test_release_check_on_broken_modules(tmp_path, text, found):
    root = _package(tmp_path, {"mod.py": text, "vllm_versions.py": 'RELEASES = ("0.32", "0.33")\n'})
    assert bool(release_strings(root, table="pkg.vllm_versions")) == found
