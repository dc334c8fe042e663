"""The scheduler side: state managers hand out slots, the one shared pool keeps ids ordered.

Patches ``get_kv_cache_coordinator`` (``vllm/v1/core/kv_cache_coordinator.py``; 0.32: line 980, imported
by name in ``vllm/v1/core/kv_cache_manager.py``). For a natural config it keeps vLLM's coordinator and its
one ``BlockPool``, swaps the pool's free queue for the ordered one (attention: lowest ids) and turns each
``MambaManager`` into a ``SlotMambaManager``. "none" mode only (prefix caching off, no speculative blocks).
"""

from __future__ import annotations

from collections import defaultdict

from vllm.utils.math_utils import cdiv
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.core.single_type_kv_cache_manager import MambaManager

from .block_pool import OrderedFreeBlockQueue, take_slot
from .kv_groups import NaturalKVCacheConfig


class SlotMambaManager(MambaManager):
    """A state group's manager whose block table holds slot ids: slot ``s`` owns pool blocks
    ``[s*k, (s+1)*k)``. The table entries are placeholder blocks carrying ``s``; the pool blocks under
    them are kept per request and are what gets freed."""

    slot_blocks: int  # k
    slot_pool_blocks: defaultdict  # request id -> pool blocks under its slots

    def get_num_blocks_to_allocate(self, request_id, num_tokens, new_computed_blocks, *args, **kwargs) -> int:
        # MambaManager counts slots; the pool pays k blocks per slot, and a slot needs a free aligned run
        # (admission: KVCacheManager.allocate_slots compares this sum with the pool's free blocks).
        slots = super().get_num_blocks_to_allocate(request_id, num_tokens, new_computed_blocks, *args, **kwargs)
        if slots > self.block_pool.free_block_queue.num_free_runs:
            return self.block_pool.num_gpu_blocks + 1  # refuse now, as MambaManager itself does
        return slots * self.slot_blocks

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        # SingleTypeKVCacheManager.allocate_new_blocks (0.32: single_type_kv_cache_manager.py:369), with a
        # slot per block: "none" mode holds one slot for the request's lifetime.
        req_blocks = self.req_to_blocks[request_id]
        new = []
        for _ in range(cdiv(num_tokens, self.block_size) - len(req_blocks)):
            s, pool_blocks = take_slot(self.block_pool)
            self.slot_pool_blocks[request_id].extend(pool_blocks)
            new.append(KVCacheBlock(s))
        req_blocks.extend(new)
        return new

    def pop_blocks_for_free(self, request_id: str) -> list:
        super().pop_blocks_for_free(request_id)  # drops the placeholders
        return self.slot_pool_blocks.pop(request_id, [])


def use_slots(coordinator, k: int) -> None:
    pool = coordinator.block_pool
    assert not pool.enable_caching, "natural layout: 'none' mode only"
    pool.free_block_queue = OrderedFreeBlockQueue(pool.blocks, k, pool.free_block_queue.get_all_free_blocks())
    for manager in coordinator.single_type_managers:
        if isinstance(manager, MambaManager):
            assert manager.mamba_cache_mode == "none" and manager.num_speculative_blocks == 0
            manager.__class__ = SlotMambaManager  # same state, slot-aware allocation
            manager.slot_blocks = k
            manager.slot_pool_blocks = defaultdict(list)


_original = None


def _get_kv_cache_coordinator(kv_cache_config, *args, **kwargs):
    coordinator = _original(kv_cache_config, *args, **kwargs)
    if isinstance(kv_cache_config, NaturalKVCacheConfig):
        use_slots(coordinator, kv_cache_config.slot_blocks)
    return coordinator


def patch() -> None:
    global _original
    from vllm.v1.core import kv_cache_coordinator, kv_cache_manager

    from . import patching

    # imported by name in kv_cache_manager
    _original = patching.replace(
        [kv_cache_coordinator, kv_cache_manager], "get_kv_cache_coordinator", _get_kv_cache_coordinator
    )
