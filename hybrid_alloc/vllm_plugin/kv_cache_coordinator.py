"""The scheduler side, in the KV cache coordinator: state managers hand out slots, the one shared pool keeps
ids ordered.

Patches ``get_kv_cache_coordinator`` (``vllm.v1.core.kv_cache_coordinator``, imported by name in
``vllm.v1.core.kv_cache_manager``). For a natural config it keeps vLLM's coordinator and its one
``BlockPool`` and swaps attributes of those live objects (``SWAPS``): the pool's free queue for the ordered
one (attention: lowest ids) and each ``MambaManager``'s class for a slot manager (no speculative blocks):
- "none" mode (prefix caching off): ``SlotMambaManager``, block table entries are slot ids ``s``, one slot
  per request for its lifetime;
- "align" mode (prefix caching on): ``AlignSlotMambaManager``, vLLM's align logic on a state block of one
  attention block (where the layers' export grid allows: ``kv_cache_planning._align_spec``), with vLLM's
  sparse retention keeping a state every C = ``HYBRID_ALLOC_STATE_CHECKPOINT`` tokens, at each prompt's
  replay boundary and at shared-prefix junctions (hits where attention blocks and a state checkpoint both
  exist), one running slot per request, checkpoints kept by copies or in-prefill exports only where the
  pool can spare them; block table entries are each slot's representative pool id ``s*k``; cached
  attention blocks and cached slots share one LRU (``CachingFreeBlockQueue``). As in "none" mode, ids
  ``1..k-1`` serve attention although the null block's state page (index 0) spans them: kernels skip null
  state entries, and nothing writes a state into the null block (in-prefill exports the manager gives no
  block: ``mamba2_prefill_checkpoint``; vLLM's GDN exporter skips null itself).
"""

from __future__ import annotations

from collections import defaultdict

from vllm.utils.math_utils import cdiv
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_coordinator import KVCacheCoordinator
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

    A running request keeps its one slot for good; checkpoints are copies, never charged. Where vLLM's
    align logic takes a fresh slot (the step that moves a request's state past a checkpoint position, the
    copy that keeps a prompt's partial-tail key), the running slot moves on in place
    (``_continue_in_place``) and the checkpoint it holds, if any, loses its keys (``_detach``) and is kept
    by a copy into a fresh slot under them, made at the end of the step's scheduling, after every
    admission, and only where the pool can spare it (``take_pending_cow_copies``; the copy runs before the
    step's forward overwrites the running slot); otherwise it is dropped. The fresh slot is cached and
    evictable at once. So no request is refused or preempted for a checkpoint, and a later hit on that
    prefix recomputes from an earlier checkpoint. A step that runs past a checkpoint position without ending
    there leaves no checkpoint (``cache_blocks``).
    A step that exports an in-prefill checkpoint (layers that export one: Mamba2, GDN with FlashInfer) takes
    one fresh slot for it only where the pool can spare one beside everything else the request takes that
    step (``_count_with_hits``; otherwise the column stays null and the export is skipped,
    ``skip_export``): a running request's slot moves on in place (``_export_in_place``; vLLM's takes two, the
    next running block and the checkpoint, and preempted others for them: 4 times in 16 cases of
    tests/test_plugin_vllm33_align.py, 0 now); a new request's first step is vLLM's otherwise."""

    slot_blocks: int  # k
    checkpoint_interval: int  # C: vLLM's sparse retention keeps a state every C tokens, at replay boundaries, junctions
    kept: list  # (running slot, its detached keys, their token count): checkpoints this step copies if it can
    coordinator_hits: list  # the prefix-cache hits (every group) of the request being counted

    def get_num_blocks_to_allocate(self, request_id, num_tokens, new_computed_blocks, *args, **kwargs) -> int:
        slots = super().get_num_blocks_to_allocate(request_id, num_tokens, new_computed_blocks, *args, **kwargs)
        self.export_counted = False
        if slots > self.block_pool.num_gpu_blocks:
            return slots  # MambaManager's own refusal
        if kwargs.get("apply_admission_cap"):
            # vLLM's full-sequence admission gate: the plugin holds one running slot for the request's life (a
            # partial hit's copy becomes it); an in-prefill export takes a slot only where the pool can spare
            # one; vLLM's estimate also counts the copy and the running block beside it
            fresh = int(request_id not in self._allocated_block_reqs)
            slots = min(slots, self._get_num_evictable_blocks(new_computed_blocks) + fresh)
        running = request_id in self._allocated_block_reqs and not kwargs.get("apply_admission_cap")
        # a partial tail's producer exporting (B = C only) keeps vLLM's allocation and count
        producer = running and request_id in self._checkpoints and request_id in self._partial_hit_reqs
        export = int(request_id in self._checkpoints and not producer and not kwargs.get("apply_admission_cap"))
        if running and not producer:
            required = export  # a running request keeps its slot; an export is a checkpoint (_export_in_place)
        else:
            required = slots  # vLLM's: the running slot, a prefix hit, an in-prefill checkpoint block
        # the new slots need aligned runs that the request's own hits (touched first, every group) leave
        queue = self.block_pool.free_block_queue
        new_slots = required - self._get_num_evictable_blocks(new_computed_blocks)
        runs = queue.free_runs_besides(self.coordinator_hits)
        if export and new_slots > runs:
            self.skip_export(request_id)  # no aligned run for the checkpoint: the layers' export is skipped
            required, new_slots, export = required - 1, new_slots - 1, 0
        if new_slots > runs:
            return self.block_pool.num_gpu_blocks + 1  # no aligned run: refuse now
        self.export_counted = bool(export)  # the coordinator keeps it only where the pool can spare it
        return required * self.slot_blocks

    def skip_export(self, request_id: str) -> None:
        """This step's in-prefill checkpoint gets no slot: its column stays null, where the layers write
        nothing (``mamba2_prefill_checkpoint``; vLLM's GDN exporter skips null itself), and nothing keys it."""
        self._checkpoints.pop(request_id, None)

    def can_spare_slot(self) -> bool:
        """A fresh slot fits with one block per running request left free for the next step."""
        pool = self.block_pool
        spare = pool.get_num_free_blocks() - self.slot_blocks
        return pool.free_block_queue.num_free_runs >= 1 and spare >= len(self._allocated_block_reqs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        blocks = self.req_to_blocks[request_id]
        running = request_id in self._allocated_block_reqs
        if request_id in self._checkpoints:
            # an in-prefill checkpoint (where the layer exports one, GPU backends): a fresh block at its column,
            # so the worker's export never lands in the null slot (whose page spans ids 0..k-1)
            if running and request_id not in self._partial_hit_reqs:
                return self._export_in_place(request_id, num_tokens_main_model)
            return super().allocate_new_blocks(request_id, num_tokens, num_tokens_main_model)
        moves_on = running and cdiv(num_tokens_main_model, self.block_size) > len(blocks)
        if running and request_id in self._partial_hit_reqs:  # the producer of a prompt's partial tail
            _, slot = self._partial_hit_reqs.pop(request_id)
            self._producer_partial_tail_reqs.pop(request_id, None)
            self._detach(slot)
        elif moves_on:
            self._detach(blocks[-1])
        if moves_on:
            return self._continue_in_place(request_id, num_tokens_main_model)
        return super().allocate_new_blocks(request_id, num_tokens, num_tokens_main_model)

    def _detach(self, slot) -> None:
        """The running slot's keys name the state it holds now, which this step's forward overwrites: take
        them off it (a same-step hit has already queued its copy) and keep them for ``take_pending_cow_copies``."""
        num_tokens = slot.block_hash_num_tokens
        keys = self.block_pool._remove_cached_block_hashes(slot)
        if keys:
            self.kept.append((slot, keys, num_tokens))

    def take_pending_cow_copies(self) -> list:
        """Called once per step after all scheduling: each detached checkpoint gets a fresh slot holding a
        copy of the running slot (made before this step's forward) under its keys, where a run is free
        beside one block per running request for the next step; otherwise it is dropped."""
        for slot, keys, num_tokens in self.kept:
            if not self.can_spare_slot():
                continue
            [copy] = self.block_pool.get_new_blocks(1)
            for key in keys:
                self.block_pool._insert_block_hash(key, copy, num_tokens)
            self._pending_cow_copies.append((slot, copy))  # both retained until the copy has run
            slot.ref_cnt += 1
        self.kept.clear()
        return super().take_pending_cow_copies()

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        """vLLM keys the state blocks that became full by this step's chunk end and that its sparse retention
        keeps (every C tokens: ``checkpoint_interval``, passed here in place of the config's retention, whose
        default keeps vLLM exporting on a prompt's last chunk only; replay boundaries; junctions); a block
        holds the state at its end only if a chunk ended exactly there (the worker writes a chunk's end state
        into its column), so the keys of blocks this chunk ran past are dropped. Chunk ends need not fall on state blocks
        (``chunk_split``): correctness does not depend on where chunks end."""
        blocks = self.req_to_blocks[request.request_id]
        before = self.num_cached_block.get(request.request_id, 0)
        kwargs.pop("retention_interval", None)
        super().cache_blocks(request, num_tokens, *args[1:], retention_interval=self.checkpoint_interval, **kwargs)
        after = min(self.num_cached_block.get(request.request_id, 0), len(blocks))
        for i in range(before, after):
            if (i + 1) * self.block_size != num_tokens and not blocks[i].is_null:
                self.block_pool._maybe_evict_cached_block(blocks[i])

    def _export_in_place(self, request_id: str, num_tokens_main_model: int) -> list:
        """A running request's step with an in-prefill checkpoint: the running slot moves on in place to the
        column of this step's state (its keys detached, as when it moves past a checkpoint) and one fresh
        slot sits at the checkpoint's column (vLLM's ``cdiv(end, B) - 2``), where the layers export the
        state at the checkpoint position; vLLM keys it there (``_cache_partial_tail_block``)."""
        blocks = self.req_to_blocks[request_id]
        prev = len(blocks) - 1
        slot = blocks[prev]
        _, checkpoint_idx = self._checkpoints[request_id]
        assert checkpoint_idx == cdiv(num_tokens_main_model, self.block_size) - 2 and checkpoint_idx > prev
        self._detach(slot)
        self.last_state_block_idx[request_id] = prev
        blocks[prev] = self._null_block
        blocks.extend([self._null_block] * (checkpoint_idx - len(blocks)))
        blocks.extend([*self.block_pool.get_new_blocks(1), slot])
        return blocks[prev + 1:]

    def _continue_in_place(self, request_id: str, num_tokens_main_model: int) -> list:
        """The running slot moves to the column of this step's state (``cdiv(end, B) - 1``) instead of a
        fresh slot: its old column becomes null. The worker's table is append-only: it sees the nulls and
        the same block again, and its pre-forward copy (old column -> new) copies the slot onto itself."""
        blocks = self.req_to_blocks[request_id]
        prev = len(blocks) - 1
        slot = blocks[prev]
        self.last_state_block_idx[request_id] = prev
        blocks[prev] = self._null_block
        blocks.extend([self._null_block] * (cdiv(num_tokens_main_model, self.block_size) - 1 - len(blocks)))
        blocks.append(slot)
        return blocks[prev + 1:]


def _reset_prefix_cache(reset, pool):
    """The pool's ``reset_prefix_cache``, then the free structure's LRU emptied (its units lost their keys)."""

    def reset_prefix_cache() -> bool:
        ok = reset()
        if ok:
            pool.free_block_queue.flush()
        return ok

    return reset_prefix_cache


def _count_with_hits(count, coordinator):
    """The coordinator's ``get_num_blocks_to_allocate`` with the request's hits of every group shown to the
    state managers, whose aligned-run check must leave out the runs those hits are about to take; and an
    in-prefill checkpoint's slot counted only where the pool can spare it beside everything else the
    request takes this step (one block per running request left free), otherwise skipped: a checkpoint
    never refuses, delays or preempts a request."""
    managers = [m for m in coordinator.single_type_managers if isinstance(m, AlignSlotMambaManager)]

    def get_num_blocks_to_allocate(*args, **kwargs):
        hits = [b for group in kwargs.get("new_computed_blocks", ()) for b in group if not b.is_null]
        for m in managers:
            m.coordinator_hits = hits
        try:
            total = count(*args, **kwargs)
        finally:
            for m in managers:
                m.coordinator_hits = []
        exporting = [m for m in managers if m.export_counted]
        pool = coordinator.block_pool
        if exporting and total <= pool.num_gpu_blocks and \
                pool.get_num_free_blocks() - total < len(exporting[0]._allocated_block_reqs):
            request_id = args[0] if args else kwargs["request_id"]
            for m in exporting:
                m.skip_export(request_id)
                total -= m.slot_blocks
        return total

    return get_num_blocks_to_allocate


# The live objects of a natural coordinator, swapped by use_slots / use_align_slots (patching.swap)
SWAPS = {
    "ordered_queue": Swap(BlockPool, "free_block_queue",
                          lambda queue, pool, k: OrderedFreeBlockQueue(pool.blocks, k, queue.get_all_free_blocks())),
    "caching_queue": Swap(BlockPool, "free_block_queue",
                          lambda queue, pool, k: CachingFreeBlockQueue(pool, k, queue.get_all_free_blocks())),
    "reset_prefix_cache": Swap(BlockPool, "reset_prefix_cache", _reset_prefix_cache),
    "count_with_hits": Swap(KVCacheCoordinator, "get_num_blocks_to_allocate", _count_with_hits),
    # same state, slot-aware allocation
    "slot_manager": Swap(MambaManager, "__class__", lambda cls, manager, k: SlotMambaManager),
    "align_slot_manager": Swap(MambaManager, "__class__", lambda cls, manager, k: AlignSlotMambaManager),
    "slot_pool": Swap(MambaManager, "block_pool", lambda pool, manager: SlotPool(pool)),
}


def use_slots(coordinator, k: int, checkpoint_interval: int | None = None) -> None:
    pool = coordinator.block_pool
    if pool.enable_caching:
        return use_align_slots(coordinator, k, checkpoint_interval)
    patching.swap(pool, SWAPS["ordered_queue"], k)
    for manager in coordinator.single_type_managers:
        if isinstance(manager, MambaManager):
            assert manager.mamba_cache_mode == "none" and manager.num_speculative_blocks == 0
            patching.swap(manager, SWAPS["slot_manager"], k)
            manager.slot_blocks = k
            manager.slot_pool_blocks = defaultdict(list)


def use_align_slots(coordinator, k: int, checkpoint_interval: int) -> None:
    pool = coordinator.block_pool
    patching.swap(pool, SWAPS["caching_queue"], k)
    patching.swap(pool, SWAPS["reset_prefix_cache"])
    for manager in coordinator.single_type_managers:
        if isinstance(manager, MambaManager):
            assert manager.mamba_cache_mode == "align" and manager.num_speculative_blocks == 0
            patching.swap(manager, SWAPS["align_slot_manager"], k)
            manager.slot_blocks = k
            manager.checkpoint_interval = checkpoint_interval
            manager.kept = []
            manager.coordinator_hits = []
            manager.export_counted = False
            patching.swap(manager, SWAPS["slot_pool"])
    patching.swap(coordinator, SWAPS["count_with_hits"])


def _get_kv_cache_coordinator(original):
    def get_kv_cache_coordinator(kv_cache_config, *args, **kwargs):
        coordinator = original(kv_cache_config, *args, **kwargs)
        if isinstance(kv_cache_config, NaturalKVCacheConfig):
            use_slots(coordinator, kv_cache_config.slot_blocks, kv_cache_config.checkpoint_interval)
        return coordinator

    return get_kv_cache_coordinator


PATCHES = (Patch("get_kv_cache_coordinator", _get_kv_cache_coordinator),)
