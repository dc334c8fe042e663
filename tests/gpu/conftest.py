"""GPU tests: marked `gpu`, skipped (reported as skipped, never passed) without CUDA PyTorch and a GPU."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


@functools.lru_cache(maxsize=1)
def gpu_unavailable_reason() -> str | None:
    """None when CUDA PyTorch sees a GPU; else why not. Probed in a subprocess: this process stays clean."""
    code = (
        "import torch,sys\n"
        "if not getattr(torch.version,'cuda',None): print('PyTorch %s is built without CUDA' % torch.__version__); sys.exit()\n"
        "print('' if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 'no CUDA device visible')\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "probing CUDA timed out"
    if r.returncode != 0:
        return "PyTorch not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return r.stdout.strip() or None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords:
            why = gpu_unavailable_reason()
            if why:
                item.add_marker(pytest.mark.skip(reason=f"GPU test: {why}"))


@pytest.fixture
def run_case():
    """Runs one case of gpu_cases.py in a fresh process with the CUDA backend."""

    def run(case: str, timeout: int = 300) -> str:
        env = dict(os.environ)
        env["HYBRID_ALLOC_BACKEND"] = "cuda"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
        r = subprocess.run(
            [sys.executable, os.path.join(HERE, "gpu_cases.py"), case],
            capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
        )
        out = r.stdout + r.stderr
        if r.returncode == 3:
            pytest.xfail(out.strip().splitlines()[-1])
        assert r.returncode == 0, f"case {case} failed (rc {r.returncode}):\n{out[-6000:]}"
        assert f"OK {case}" in r.stdout
        return out

    return run
