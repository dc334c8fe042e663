"""The trace's refusals and its "requests held at once" against vLLM 0.33's own code.

- Not even one request: at a budget one block short of what one max_model_len request needs, vLLM's
  ``get_kv_cache_configs`` raises, and the trace (through ``compare_layout``, which must not raise) reports
  the same text as the stock layout's error.
- Held at once: vLLM's engine admits requests from one ``BlockPool`` of the KV cache config's ``num_blocks``;
  the number of max_model_len requests a real ``BlockPool`` hands their blocks to equals the trace's stock
  capacity (block 0, the null block, never holds a request; vLLM's logged concurrency counts it).
vLLM's side is built as in ``test_stock_parity`` (imported for its platform stand-in and helpers).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import test_stock_parity as parity
from hybrid_alloc.planner.comparison import compare_layout
from hybrid_alloc.planner.hardware import HARDWARE, attention_backend
from hybrid_alloc.planner.settings import Settings
from vllm.utils.math_utils import cdiv
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_planning import get_global_kv_cache_groups, get_kv_cache_configs
from vllm.v1.core.kv_cache_utils import generate_scheduler_kv_cache_config

pytestmark = pytest.mark.vllm

GiB = 1 << 30


def _engine(config_name: str, root: str, prefix_caching: bool = True):
    parity._Cuda.capability = parity.DeviceCapability(*HARDWARE["rtx3060"].compute_capability)
    vc = parity._vllm_config(parity._model_dir(config_name, root), "auto", prefix_caching, 1)
    layout = parity._layout(vc)
    backend = parity.BACKENDS[attention_backend(HARDWARE["rtx3060"], vc.model_config.get_head_size(), "auto")]
    engine, specs, _ = parity._workers(vc, layout, backend)
    settings = Settings(max_model_len=vc.model_config.max_model_len, prefix_caching=prefix_caching,
                        max_num_seqs=10**6)
    return engine, specs, layout, settings


def _request_blocks(engine, scheduler_config) -> int:
    """One max_model_len request's block ids (get_max_concurrency_for_kv_cache_config's count)."""
    return sum(cdiv(g.kv_cache_spec.max_memory_usage_bytes(engine), g.kv_cache_spec.page_size_bytes)
               for g in scheduler_config.kv_cache_groups)


def _vllm(engine, specs, budget: int):
    groups = get_global_kv_cache_groups(engine, specs)
    return generate_scheduler_kv_cache_config(get_kv_cache_configs(engine, specs, [budget], groups))


def _largest_refused_budget(engine, specs) -> int:
    """Bisected on vLLM itself: the most bytes at which one max_model_len request does not fit."""
    refused, accepted = 0, 64 * GiB
    while accepted - refused > 1:
        middle = (refused + accepted) // 2
        try:
            _vllm(engine, specs, middle)
            accepted = middle
        except ValueError:
            refused = middle
    return refused


@pytest.mark.parametrize("config_name", parity.CONFIG_NAMES)
def test_not_even_one_request_is_vllms_refusal(config_name: str, tmp_path_factory) -> None:
    engine, specs, layout, settings = _engine(config_name, str(tmp_path_factory.getbasetemp()))
    budget = _largest_refused_budget(engine, specs)
    with pytest.raises(ValueError) as refused:
        _vllm(engine, specs, budget)
    trace = compare_layout(layout, replace(settings, kv_cache_memory=budget))  # a result, not an exception
    assert trace.stock.error == str(refused.value)
    assert trace.capacities[-1].stock is None
    assert compare_layout(layout, replace(settings, kv_cache_memory=budget + 1)).stock.error is None


@pytest.mark.parametrize("config_name, budget", [
    ("meta-llama--Llama-3.1-8B.json", 8 * GiB),  # issue 13: 1 held, vLLM logs 2.00x
    ("meta-llama--Llama-3.1-8B.json", 8 * GiB + (2 << 20)),
    ("Qwen--Qwen3.5-9B.json", 3 * GiB),
    ("nvidia--Nemotron-H-8B-Base-8K.json", GiB),
])
def test_held_at_once_is_what_vllms_block_pool_admits(config_name: str, budget: int, tmp_path_factory) -> None:
    engine, specs, layout, settings = _engine(config_name, str(tmp_path_factory.getbasetemp()))
    config = _vllm(engine, specs, budget)
    per_request = _request_blocks(engine, config)
    pool = BlockPool(config.num_blocks, enable_caching=False, hash_block_size=16)
    admitted = 0
    while pool.get_num_free_blocks() >= per_request:
        pool.get_new_blocks(per_request)
        admitted += 1
    trace = compare_layout(layout, replace(settings, kv_cache_memory=budget))
    assert trace.capacities[-1].stock == admitted
