"""The scheduler side, in the KV cache coordinator: state managers hand out slots, the one shared pool keeps
ids ordered.

Patches ``get_kv_cache_coordinator`` (``vllm.v1.core.kv_cache_coordinator``, imported by name in
``vllm.v1.core.kv_cache_manager``). For a natural config it keeps vLLM's coordinator and its one
``BlockPool`` and swaps attributes of those live objects (``SWAPS``): the pool's free queue for the ordered
one (attention: lowest ids) and each ``MambaManager``'s class for a slot manager (no speculative blocks):
- "none" mode (prefix caching off): ``SlotMambaManager``, block table entries are slot ids ``s``, one slot
  per request for its lifetime;
- "align" mode (prefix caching on): ``AlignSlotMambaManager``, vLLM's align logic unchanged (checkpoints
  every ``mamba_block_size`` = ``HYBRID_ALLOC_STATE_CHECKPOINT`` tokens plus the prompt's last
  attention-block boundary, hits where attention blocks and a state checkpoint both exist, copy-on-write of
  partially hit states); block table entries are each slot's representative pool id ``s*k``; cached
  attention blocks and cached slots share one LRU (``CachingFreeBlockQueue``), ids ``1..k-1`` are held
  back so the null block's state page (index 0) overlaps nothing live.
"""

from __future__ import annotations

from collections import defaultdict

from vllm.utils.math_utils import cdiv
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.core.single_type_kv_cache_manager import MambaManager

from . import patching
from .block_pool import CachingFreeBlockQueue, OrderedFreeBlockQueue, SlotPool, take_slot
from .natural_config import NaturalKVCacheConfig
from .patching import Patch, Swap


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
        # SingleTypeKVCacheManager.allocate_new_blocks, with a slot per block: "none" mode holds one slot for the request's lifetime.
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


class AlignSlotMambaManager(MambaManager):
    """"align" mode (prefix caching on): vLLM's align logic on slots, with one running slot per request.

    The block table holds each slot's representative pool block ``s*k`` (the worker's state views are
    indexed by pool id at the attention page stride, so index ``s*k`` is slot ``s``); hashes and reference
    counts live on the representative, the ``k - 1`` ids under it are held by the free structure while the
    slot is held or cached (``CachingFreeBlockQueue``).

    Checkpoints are never charged. vLLM's align logic takes a fresh slot whenever a request's state moves
    on past a checkpoint position (the old slot stays behind as the checkpoint, cached and evictable), one
    for the copy that preserves a prompt's partial-tail checkpoint, and one for an in-prefill checkpoint;
    a running request that cannot get them is preempted. Here those slots are optional: admission counts
    only the running slot (and what a prefix hit touches), and a step takes them only where the pool can
    spare them (``_can_spare``); otherwise the checkpoint is skipped: the running slot moves on in place
    (``_continue_in_place``; its stale key is dropped first), so no request is ever preempted or refused
    for a checkpoint and a later hit on that prefix recomputes from an earlier checkpoint. A step that runs
    past a checkpoint position without ending there leaves no checkpoint (``cache_blocks``): the running
    slot moves on in place."""

    slot_blocks: int  # k
    step_blocks: int  # attention blocks one scheduler step may still add (its token budget / block)

    def get_num_blocks_to_allocate(self, request_id, num_tokens, new_computed_blocks, *args, **kwargs) -> int:
        slots = super().get_num_blocks_to_allocate(request_id, num_tokens, new_computed_blocks, *args, **kwargs)
        if slots > self.block_pool.num_gpu_blocks:
            return slots  # MambaManager's own refusal
        if kwargs.get("apply_admission_cap"):
            required = slots  # the full-sequence gate: vLLM's count, no checkpoint decided yet
        elif request_id in self._allocated_block_reqs:
            required = 0  # a running request keeps its slot; whatever else it would take is a checkpoint
        else:
            required = slots - int(request_id in self._checkpoints)  # new: running slot and prefix hit
        if required > self.block_pool.free_block_queue.num_free_runs:
            return self.block_pool.num_gpu_blocks + 1  # no aligned run: refuse now
        return required * self.slot_blocks

    def _can_spare(self, slots: int) -> bool:
        """``slots`` checkpoint slots fit beside what the rest of this step may still need: a run each, and
        the step's attention blocks plus one block per running request left free."""
        pool = self.block_pool
        spare = pool.get_num_free_blocks() - slots * self.slot_blocks
        return pool.free_block_queue.num_free_runs >= slots and spare >= self.step_blocks + len(self._allocated_block_reqs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        blocks = self.req_to_blocks[request_id]
        running = request_id in self._allocated_block_reqs
        moves_on = running and cdiv(num_tokens_main_model, self.block_size) > len(blocks)
        # moving to a fresh slot keeps a checkpoint only where the running slot holds one (a keyed state)
        keeps = moves_on and blocks[-1].block_hash is not None
        tail_copy = running and request_id in self._partial_hit_reqs
        checkpoint = request_id in self._checkpoints
        wanted = int(keeps) + int(tail_copy) + int(checkpoint)
        if (keeps or not moves_on) and (not wanted or self._can_spare(wanted)):
            return super().allocate_new_blocks(request_id, num_tokens, num_tokens_main_model)
        self._checkpoints.pop(request_id, None)  # the worker's export then lands in the null slot
        if tail_copy:  # the prompt's partial-tail checkpoint: its state is about to be overwritten
            _, source = self._partial_hit_reqs.pop(request_id)
            self._producer_partial_tail_reqs.pop(request_id, None)
            self.block_pool._maybe_evict_cached_block(source)
        if moves_on:
            return self._continue_in_place(request_id, num_tokens_main_model)
        return super().allocate_new_blocks(request_id, num_tokens, num_tokens_main_model)

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        """vLLM keys every state block that became full by this step's chunk end; a block holds the state at
        its end only if a chunk ended exactly there (the worker writes a chunk's end state into its column),
        so the keys of blocks this chunk ran past are dropped. Chunk ends need not fall on state blocks
        (``chunk_split``): correctness does not depend on where chunks end."""
        blocks = self.req_to_blocks[request.request_id]
        before = self.num_cached_block.get(request.request_id, 0)
        super().cache_blocks(request, num_tokens, *args, **kwargs)
        after = min(self.num_cached_block.get(request.request_id, 0), len(blocks))
        for i in range(before, after):
            if (i + 1) * self.block_size != num_tokens and not blocks[i].is_null:
                self.block_pool._maybe_evict_cached_block(blocks[i])

    def _continue_in_place(self, request_id: str, num_tokens_main_model: int) -> list:
        """The running slot moves to the column of this step's state (``cdiv(end, B) - 1``) instead of a
        fresh slot: its old column becomes null (no checkpoint left there) and its key, naming the state
        it is about to overwrite, is dropped. The worker's table is append-only: it sees the nulls and the
        same block again, and its pre-forward copy (old column -> new) copies the slot onto itself."""
        blocks = self.req_to_blocks[request_id]
        prev = len(blocks) - 1
        slot = blocks[prev]
        self.block_pool._maybe_evict_cached_block(slot)
        self.last_state_block_idx[request_id] = prev
        blocks[prev] = self._null_block
        blocks.extend([self._null_block] * (cdiv(num_tokens_main_model, self.block_size) - 1 - len(blocks)))
        blocks.append(slot)
        return blocks[prev + 1:]


def _reset_prefix_cache(reset, pool, k: int):
    """The pool's ``reset_prefix_cache`` with ids ``1..k-1`` held for good (``_reserve_slot_zero``)."""
    queue = pool.free_block_queue

    def reset_prefix_cache() -> bool:
        queue.num_cached_free += k - 1  # the reserved ids are not "used" in vLLM's all-free check
        try:
            ok = reset()
        finally:
            queue.num_cached_free -= k - 1
        if ok:
            queue.flush()
        return ok

    return reset_prefix_cache


# The live objects of a natural coordinator, swapped by use_slots / use_align_slots (patching.swap)
SWAPS = {
    "ordered_queue": Swap(BlockPool, "free_block_queue",
                          lambda queue, pool, k: OrderedFreeBlockQueue(pool.blocks, k, queue.get_all_free_blocks())),
    "caching_queue": Swap(BlockPool, "free_block_queue",
                          lambda queue, pool, k: CachingFreeBlockQueue(pool, k, queue.get_all_free_blocks())),
    "reset_prefix_cache": Swap(BlockPool, "reset_prefix_cache", _reset_prefix_cache),
    # same state, slot-aware allocation
    "slot_manager": Swap(MambaManager, "__class__", lambda cls, manager, k: SlotMambaManager),
    "align_slot_manager": Swap(MambaManager, "__class__", lambda cls, manager, k: AlignSlotMambaManager),
    "slot_pool": Swap(MambaManager, "block_pool", lambda pool, manager: SlotPool(pool)),
}


def _reserve_slot_zero(pool, k: int) -> None:
    """Block 0 is vLLM's null block, and null entries of a state block table address state index 0, whose
    page spans ids ``[0, k)``: hold ids ``1..k-1`` for good so no attention block shares that memory."""
    queue = pool.free_block_queue
    for i in range(1, k):
        queue.remove(pool.blocks[i])
        pool.blocks[i].ref_cnt = 1
    patching.swap(pool, SWAPS["reset_prefix_cache"], k)


def use_slots(coordinator, k: int, step_blocks: int) -> None:
    pool = coordinator.block_pool
    if pool.enable_caching:
        return use_align_slots(coordinator, k, step_blocks)
    patching.swap(pool, SWAPS["ordered_queue"], k)
    for manager in coordinator.single_type_managers:
        if isinstance(manager, MambaManager):
            assert manager.mamba_cache_mode == "none" and manager.num_speculative_blocks == 0
            patching.swap(manager, SWAPS["slot_manager"], k)
            manager.slot_blocks = k
            manager.slot_pool_blocks = defaultdict(list)


def use_align_slots(coordinator, k: int, step_blocks: int) -> None:
    pool = coordinator.block_pool
    patching.swap(pool, SWAPS["caching_queue"], k)
    _reserve_slot_zero(pool, k)
    for manager in coordinator.single_type_managers:
        if isinstance(manager, MambaManager):
            assert manager.mamba_cache_mode == "align" and manager.num_speculative_blocks == 0
            patching.swap(manager, SWAPS["align_slot_manager"], k)
            manager.slot_blocks = k
            manager.step_blocks = step_blocks
            patching.swap(manager, SWAPS["slot_pool"])


def _get_kv_cache_coordinator(original):
    def get_kv_cache_coordinator(kv_cache_config, *args, **kwargs):
        coordinator = original(kv_cache_config, *args, **kwargs)
        if isinstance(kv_cache_config, NaturalKVCacheConfig):
            use_slots(coordinator, kv_cache_config.slot_blocks, kv_cache_config.step_blocks)
        return coordinator

    return get_kv_cache_coordinator


PATCHES = (Patch("get_kv_cache_coordinator", _get_kv_cache_coordinator),)
