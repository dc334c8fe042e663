"""Groups, tensors and block count of the natural layout (the engine core's KV cache planning).

Replaces ``get_kv_cache_configs`` (``vllm/v1/core/kv_cache_utils.py``; 0.32: line 2531, imported by name
in ``vllm/v1/engine/core.py``) when the natural layout applies. Layout, per pipeline stage, on the
layer-outermost KV cache layouts (LBHNC: vLLM's CPU backend):
- one region of ``num_blocks * A`` bytes per attention layer (``A`` = attention page at the kernel block);
  attention layers view it as ``[num_blocks, ...]`` (stock views);
- state layers are dealt round-robin over the regions; inside a region, the hosted state pages are stacked
  in a slot of ``k`` blocks, ``k = ceil(max hosted bytes / A)`` (the largest over stages, so one scheduler
  serves all). A state layer views its region as ``[num_blocks // k, ...]`` at slot stride ``k * A``:
  slot ``s`` = block ids ``[s*k, (s+1)*k)`` in every region. Same storage, two id spaces.
- groups: one per distinct state spec (its "block" is a slot), then the attention group, so a request's
  slot is allocated before its attention blocks.
Bytes per stage = ``num_blocks * n_attn * A``; a request of L tokens holds ``ceil(L / block) + G * k``
block ids (G = number of state groups).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    KVCacheTensor,
    MambaSpec,
    compute_layout_strides,
)


@dataclass
class SlotTensor(KVCacheTensor):
    """One state layer's pages: slot ``s`` at ``offset + s * block_stride``, ``block_stride = k * A``."""


@dataclass
class NaturalKVCacheConfig(KVCacheConfig):
    slot_blocks: int = 1  # k: block ids per state slot
    num_state_groups: int = 1

    def num_blocks_of(self, tensor: KVCacheTensor) -> int:
        # Replaces KVCacheConfig.num_blocks_of (0.32: kv_cache_interface.py:1556) for the views that
        # allocate_kv_cache builds: state layers address slots, not blocks.
        if isinstance(tensor, SlotTensor):
            return self.num_blocks // self.slot_blocks
        return super().num_blocks_of(tensor)

    @property
    def block_size(self) -> int:
        return self.kv_cache_groups[-1].kv_cache_spec.block_size

    def blocks_per_request(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size) + self.num_state_groups * self.slot_blocks


def _placement(worker_spec: dict) -> tuple[list[str], list[tuple[str, int, int]], int]:
    """(attention layers, [(state layer, region, offset in slot)], bytes of the fullest slot)."""
    attention = [n for n, s in worker_spec.items() if isinstance(s, FullAttentionSpec)]
    filled = [0] * len(attention)
    states = []
    for i, (name, spec) in enumerate((n, s) for n, s in worker_spec.items() if isinstance(s, MambaSpec)):
        region = i % len(attention)
        states.append((name, region, filled[region]))
        filled[region] += spec.page_size_bytes
    return attention, states, max(filled)


def slot_blocks(kv_cache_specs: list[dict], attn_page: int) -> int:
    return max(cdiv(_placement(w)[2], attn_page) for w in kv_cache_specs)


def plan(vllm_config, kv_cache_specs: list[dict], available_memory: list[int]) -> list[NaturalKVCacheConfig]:
    """The natural KVCacheConfig of every worker (same num_blocks and k on all)."""
    merged: dict = {}
    for worker in kv_cache_specs:
        merged.update(worker)
    attn_spec = next(s for s in merged.values() if isinstance(s, FullAttentionSpec))
    attn_page = attn_spec.page_size_bytes
    state_specs = list(dict.fromkeys(s for s in merged.values() if isinstance(s, MambaSpec)))
    k = slot_blocks(kv_cache_specs, attn_page)

    num_blocks = min(
        avail // (attn_page * len(_placement(w)[0])) for w, avail in zip(kv_cache_specs, available_memory)
    )
    if vllm_config.cache_config.num_gpu_blocks_override is not None:
        num_blocks = vllm_config.cache_config.num_gpu_blocks_override

    configs = [_worker_config(vllm_config, w, state_specs, attn_spec, num_blocks, k) for w in kv_cache_specs]
    need = configs[0].blocks_per_request(vllm_config.model_config.max_model_len)
    if need > num_blocks - 1:  # BlockPool holds block 0 back (the null block)
        raise ValueError(
            f"hybrid-alloc: one request of max_model_len={vllm_config.model_config.max_model_len} needs {need} "
            f"blocks ({need * attn_page} bytes per attention layer) but the KV cache holds {num_blocks - 1}; "
            "increase the KV cache memory or decrease max_model_len"
        )
    return configs


def _worker_config(vllm_config, worker_spec, state_specs, attn_spec, num_blocks, k) -> NaturalKVCacheConfig:
    from vllm.v1.core.kv_cache_utils import kv_cache_groups_tp_replicas

    layout = vllm_config.cache_config.get_resolved_kv_cache_layout()
    attn_page = attn_spec.page_size_bytes
    attention, states, _ = _placement(worker_spec)
    region = num_blocks * attn_page
    size = region * len(attention)
    layer_stride, block_stride = compute_layout_strides(attn_spec, num_blocks, len(attention), layout)[:2]
    assert (layer_stride, block_stride) == (region, attn_page), f"{layout.name}: attention pages not dense"

    tensors = [KVCacheTensor(size=size, layers=attention, layer_stride=region, block_stride=attn_page)]
    for name, r, offset in states:
        assert offset + worker_spec[name].page_size_bytes <= k * attn_page
        tensors.append(
            SlotTensor(size=size, layers=[name], layer_stride=region, block_stride=k * attn_page, offset=r * region + offset)
        )
    groups = [KVCacheGroupSpec([n for n, s in worker_spec.items() if s == spec], spec) for spec in state_specs]
    groups.append(KVCacheGroupSpec(attention, attn_spec.merge([worker_spec[n] for n in attention])))
    config = NaturalKVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=tensors,
        kv_cache_groups=groups,
        prefix_cache_retention_interval=vllm_config.cache_config.prefix_cache_retention_interval,
        slot_blocks=k,
        num_state_groups=len(state_specs),
    )
    config.kv_tp_replicas = kv_cache_groups_tp_replicas(
        groups, vllm_config.parallel_config.tensor_parallel_size, vllm_config.parallel_config.decode_context_parallel_size
    )
    return config


_original = None


def _get_kv_cache_configs(vllm_config, kv_cache_specs, available_memory):
    from . import capacity_log, fail_closed

    layout = vllm_config.cache_config.get_resolved_kv_cache_layout()
    reason = fail_closed.config_reason(vllm_config) or fail_closed.spec_reason(kv_cache_specs, layout)
    if reason:
        fail_closed.stock(reason)
        return _original(vllm_config, kv_cache_specs, available_memory)
    configs = plan(vllm_config, kv_cache_specs, available_memory)
    stock = capacity_log.stock_estimate(vllm_config, kv_cache_specs, available_memory, _original)
    capacity_log.log_capacity(vllm_config, configs, stock)
    return configs


def patch() -> None:
    global _original
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.engine import core

    if _original is None:
        _original = kv_cache_utils.get_kv_cache_configs
        kv_cache_utils.get_kv_cache_configs = _get_kv_cache_configs
        core.get_kv_cache_configs = _get_kv_cache_configs  # imported by name there
