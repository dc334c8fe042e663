"""Read vLLM's source without importing it: the main env's vLLM (0.33) and the engine interpreter's (0.32,
``HYBRID_ALLOC_ENGINE_PYTHON``)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest

_LOCATE = """
import importlib.util, json, sys
names = json.loads(sys.argv[1])
if names:
    import torch
print(json.dumps({
    "vllm": importlib.util.find_spec("vllm").submodule_search_locations[0],
    "has": [hasattr(getattr(torch, ns), n) for ns, n in names],
}))
"""


def locate(python: str, torch_names: tuple[tuple[str, str], ...] = ()) -> dict:
    """{"vllm": vLLM's package directory, "version": its "major.minor", "has": [torch.<ns>.<name> exists, ...]}
    for ``python``."""
    out = subprocess.run(
        [python, "-c", _LOCATE, json.dumps(torch_names)], capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(out.stdout)
    with open(os.path.join(found["vllm"], "_version.py"), encoding="utf-8") as f:
        found["version"] = re.search(r"^__version__ = version = '(\d+\.\d+)", f.read(), re.M).group(1)
    return found


def vllm_dirs(torch_names: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, dict]]:
    """[(label, locate() result)] for this interpreter (vLLM 0.33) and the engine interpreter (0.32, in a
    subprocess, where ``torch_names`` are checked); skips without the latter."""
    engine = os.environ.get("HYBRID_ALLOC_ENGINE_PYTHON")
    if not engine:
        pytest.skip("HYBRID_ALLOC_ENGINE_PYTHON is not set (the vLLM 0.32 interpreter)")
    return [("main", locate(sys.executable)), ("engine", locate(engine, torch_names))]


def tree(vllm_dir: str, relpath: str) -> ast.Module:
    with open(os.path.join(vllm_dir, relpath), encoding="utf-8") as f:
        return ast.parse(f.read())


def torch_calls(node: ast.AST) -> set[tuple[str, str]]:
    """{(namespace, name)} of every ``torch.<namespace>.<name>(...)`` call under ``node``."""
    found = set()
    for call in ast.walk(node):
        f = getattr(call, "func", None)
        if (
            isinstance(call, ast.Call)
            and isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Attribute)
            and isinstance(f.value.value, ast.Name)
            and f.value.value.id == "torch"
        ):
            found.add((f.value.attr, f.attr))
    return found


def class_methods(module: ast.Module, cls: str) -> set[str]:
    """Names of the functions defined in the body of class ``cls``."""
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    raise AssertionError(f"class {cls} not found")
