"""`hybrid-alloc validate --dry-run`: the two launches, the load and the trace's prediction, without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hybrid_alloc.cli import main

ROOT = Path(__file__).parent.parent
BUNDLED_9B = ROOT / "hybrid_alloc" / "models" / "configs" / "Qwen--Qwen3.5-9B.json"


def test_dry_run_defaults_are_the_named_setup(capsys):
    assert main(["validate", "--dry-run", "--", "--quantization", "awq"]) == 0
    out = capsys.readouterr().out
    stock, plugin = [line for line in out.splitlines() if "vllm serve" in line]
    assert "CUDA_VISIBLE_DEVICES=0,1,2" in stock and "HYBRID_ALLOC=1" not in stock
    assert "HYBRID_ALLOC=1" in plugin and "HYBRID_ALLOC_REPORT_DIR=validation/plugin" in plugin
    for line in (stock, plugin):
        assert "vllm serve Qwen/Qwen3.5-9B --pipeline-parallel-size 3 --tensor-parallel-size 1" in line
        assert line.endswith("--quantization awq")
    assert "32 requests" in out and "greedy" in out
    assert "RTX 3060" in out and out.count("Stage ") == 3  # the trace's prediction


def test_model_path_is_served_and_traced(capsys, tmp_path):
    (tmp_path / "config.json").write_text(BUNDLED_9B.read_text())
    assert main(["validate", "Qwen/Qwen3.5-9B", "--model-path", str(tmp_path), "--pp", "1", "--hardware", "h100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"vllm serve {tmp_path} --pipeline-parallel-size 1" in out and "--served-model-name Qwen/Qwen3.5-9B" in out
    assert "CUDA_VISIBLE_DEVICES=0 " in out and "PP=1" in out


def test_unknown_model_is_one_line_exit_2(capsys):
    assert main(["validate", "no/such-model", "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_real_run_without_driver_is_exit_3():
    done = subprocess.run([sys.executable, "-m", "hybrid_alloc", "validate"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode in (2, 3) and done.stderr.count("\n") == 1  # 2 only where a driver exists
    assert "Traceback" not in done.stderr
