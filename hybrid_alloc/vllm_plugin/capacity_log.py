"""The true capacity, logged once per engine, beside what stock vLLM would give on the same budget.

``get_max_concurrency_for_kv_cache_config`` (``vllm.v1.core.kv_cache_utils``) counts
one block per group per request; for the natural layout a state slot costs ``k`` blocks, so the reported
capacity (``vllm:cache_config_info``, "Maximum concurrency") would be overstated without this patch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vllm.utils.math_utils import cdiv
from vllm.v1.core.kv_cache_utils import generate_scheduler_kv_cache_config
from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

from hybrid_alloc.planner.natural import StockFloor, objective_lengths

from . import log, patching
from .natural_config import NaturalKVCacheConfig
from .patching import Patch


def max_concurrency(vllm_config, kv_cache_config: NaturalKVCacheConfig) -> float:
    return kv_cache_config.num_blocks / kv_cache_config.blocks_per_request(vllm_config.model_config.max_model_len)


def _get_max_concurrency(original):
    def get_max_concurrency_for_kv_cache_config(vllm_config, kv_cache_config) -> float:
        if isinstance(kv_cache_config, NaturalKVCacheConfig):
            return max_concurrency(vllm_config, kv_cache_config)
        return original(vllm_config, kv_cache_config)

    return get_max_concurrency_for_kv_cache_config


# its callers (get_kv_cache_capacity, the capacity report) look it up in its module
MAX_CONCURRENCY = Patch("get_max_concurrency_for_kv_cache_config", _get_max_concurrency)
PATCHES = (MAX_CONCURRENCY,)


@dataclass(frozen=True)
class StockEstimate:
    """Stock vLLM on the same budget: its block size, max concurrency and, for the planner's choice of k, the
    requests it holds at the objective lengths (None where it cannot fit one request of max_model_len)."""

    block_size: int
    max_concurrency: float
    floor: StockFloor | None


def stock_estimate(vllm_config, kv_cache_specs, available_memory, stock_kv_cache_configs) -> StockEstimate:
    """Stock vLLM's numbers from vLLM's own planning functions, given the specs its
    ``_align_hybrid_block_size`` would have produced (inflated block, padded state). A request holds
    ``ceil(L / block)`` blocks per attention group and ``MambaSpec.max_memory_usage_bytes / page`` per state
    group (what ``get_max_concurrency_for_kv_cache_config`` counts)."""
    specs = [s for w in kv_cache_specs for s in w.values()]
    attn = next(s for s in specs if isinstance(s, FullAttentionSpec))
    per_token = attn.page_size_bytes // attn.block_size
    state_page = max(s.page_size_bytes for s in specs if isinstance(s, MambaSpec))
    # _align_hybrid_block_size: the platform's block size (128 on CPU) raised in kernel-block steps
    base = max(attn.block_size, vllm_config.cache_config.block_size)
    block = base * cdiv(state_page, base * per_token)

    def inflate(spec):
        if isinstance(spec, FullAttentionSpec):
            return replace(spec, block_size=block)
        padded = block * per_token
        return replace(spec, page_size_padded=None if padded == spec.page_size_bytes else padded)

    stock_specs = [{n: inflate(s) for n, s in w.items()} for w in kv_cache_specs]
    try:
        configs = stock_kv_cache_configs(vllm_config, stock_specs, list(available_memory))
    except ValueError:  # stock cannot fit one request of max_model_len
        return StockEstimate(block, 0.0, None)
    scheduler = generate_scheduler_kv_cache_config(configs)
    concurrency = patching.original(MAX_CONCURRENCY)(vllm_config, scheduler)
    seqs = vllm_config.scheduler_config.max_num_seqs

    def blocks(length: int) -> int:
        return sum(
            cdiv(g.kv_cache_spec.max_memory_usage_bytes(vllm_config), g.kv_cache_spec.page_size_bytes)
            if isinstance(g.kv_cache_spec, MambaSpec) else cdiv(length, g.kv_cache_spec.block_size)
            for g in scheduler.kv_cache_groups
        )

    lengths = objective_lengths(vllm_config.model_config.max_model_len)
    requests = tuple((n, min(seqs, (scheduler.num_blocks - 1) // blocks(n))) for n in lengths)
    return StockEstimate(block, concurrency, StockFloor(requests, concurrency, seqs))


def worker_name(rank: int, tp: int) -> str:
    """A worker by what it is: its pipeline stage, and its tensor-parallel rank when there are several
    (vLLM's ranks put TP innermost: rank = stage * tp + TP rank)."""
    return f"stage {rank // tp}" + (f" TP rank {rank % tp}" if tp > 1 else "")


def log_capacity(vllm_config, configs: list[NaturalKVCacheConfig], stock: StockEstimate) -> None:
    c = configs[0]
    max_len = vllm_config.model_config.max_model_len
    log.once(
        f"hybrid-alloc: {c.num_blocks} blocks x {c.block_size} tokens; a state slot = {c.slot_blocks} blocks; "
        f"max concurrency at {max_len} tokens: {max_concurrency(vllm_config, c):.2f}; "
        f"stock vLLM: block size {stock.block_size}, {stock.max_concurrency:.2f}"
    )
    if c.state_ids_are_block_ids:
        log.once(
            f"hybrid-alloc: prefix caching: one running state slot per request; state checkpoints every "
            f"{c.checkpoint_interval} tokens and at each prompt's last "
            f"{c.block_size}-token boundary, cached and evictable, taken only where the pool can spare them"
        )
    tp = vllm_config.parallel_config.tensor_parallel_size
    for rank, config in enumerate(configs):  # one per worker, in rank order
        layers = [len(g.layer_names) for g in config.kv_cache_groups]
        log.once(
            f"hybrid-alloc: {worker_name(rank, tp)}: {config.kv_cache_tensors[0].size} bytes of KV cache "
            f"({layers[-1]} attention layers, {sum(layers[:-1])} state layers)"
        )
