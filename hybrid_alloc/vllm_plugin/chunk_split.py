"""The scheduler's prefill chunk split in "align" mode (prefix caching on): chunk ends on kept checkpoints.

vLLM's ``Scheduler._mamba_block_aligned_split`` floors a mid-prefill chunk end to ``cache_config.block_size``
(the state block B, by its invariant "state block p holds the state after exactly (p + 1) x B tokens") and
stops at the prompt's last B boundary unless the layers export that state from inside the chunk. Under the
plugin ``cache_config.block_size`` is not B (the engine core's is the attention block, and on the CPU
platform a later ``vllm_config.__post_init__()`` resets it to 128), and a state is kept only every C tokens
(``NaturalKVCacheConfig.checkpoint_interval``, vLLM's sparse retention), at replay boundaries and junctions.
Here a chunk ends on a multiple of C (the split reading C) when that keeps at least 3/4 of the tokens the
chunk gets when it ends on an attention block (the split reading the attention block), and on the attention
block otherwise: floored to C, a step's leftover budget below C schedules nothing (61 engine steps against 40
with caching off on the mixed workload of tests/engine/test_engine_prefix_caching_capacity.py). A chunk that
runs past a checkpoint position leaves no checkpoint there (``AlignSlotMambaManager.cache_blocks`` keys only
state blocks a chunk ended on), so correctness does not depend on the choice
(tests/engine/test_engine_checkpoint_keys.py). A split counts on an in-prefill export only where it reads B:
vLLM's ``MambaManager`` judges an export on B, and a split judging it elsewhere would skip the prompt's tail
stop for an export that never happens (the repeated prompt then misses).
Where the layers export nothing (GDN, except with FlashInfer where the release has its export), the
prompt's tail stop leaves the checkpoint repeated prompts hit at the cost of a step for the prompt; it is
kept only where the pool can spare a slot for that checkpoint and hold every waiting request beside it
(``_room_for_waiting``). Where requests wait for memory, admitting them would evict it first: on the mixed
workload, where requests wait in every round, the gate takes 40 engine steps against 41 without it (40 with
caching off). Chunk ends on multiples of C stay wherever a slot can be spared (they cost at most a quarter
of a chunk).
The live ``cache_config``, shared with the workers, is never changed.
"""

from __future__ import annotations

from vllm.utils.math_utils import cdiv

from .natural_config import NaturalKVCacheConfig
from .patching import Patch


class _StateBlockCacheConfig:
    """``cache_config`` as the split reads it: ``block_size`` = the state group's block; all else the live one's."""

    def __init__(self, cache_config, block_size: int) -> None:
        self._cache_config, self.block_size = cache_config, block_size

    def __getattr__(self, name):
        return getattr(self._cache_config, name)


def _room_for_waiting(scheduler, managers, request) -> bool:
    """The pool holds a checkpoint slot per state group beside every other waiting request (its prompt's
    attention blocks, a running slot per state group): else admitting them evicts what a tail stop keeps.
    Stops counting once the pool is short, so a long queue costs little where it matters."""
    def blocks(m, num_tokens: int) -> int:
        return m.slot_blocks if hasattr(m, "slot_blocks") else cdiv(num_tokens, m.block_size)

    free = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    need = sum(m.slot_blocks for m in managers if hasattr(m, "slot_blocks"))
    for r in scheduler.waiting:
        if need > free:
            return False
        if r is not request:
            need += sum(blocks(m, r.num_tokens) for m in managers)
    return need <= free


def _aligned_split(original):
    def _mamba_block_aligned_split(self, *args, **kwargs):
        config = getattr(self, "kv_cache_config", None)  # a partial scheduler (vLLM's tests): stock
        if not (isinstance(config, NaturalKVCacheConfig) and config.state_ids_are_block_ids):
            return original(self, *args, **kwargs)  # stock, or natural "none" mode (no state blocks keyed)
        # the pool keeps aligned runs whole while requests wait for them (CachingFreeBlockQueue._runs_bind)
        self.kv_cache_manager.block_pool.free_block_queue.waiting_requests = len(self.waiting)

        def split(block_size: int, exports: bool) -> int:
            cache_config, has_export = self.cache_config, self.mamba_has_prefill_checkpoint_blocks
            self.cache_config = _StateBlockCacheConfig(cache_config, block_size)
            self.mamba_has_prefill_checkpoint_blocks = has_export and exports
            try:
                return original(self, *args, **kwargs)
            finally:
                self.cache_config, self.mamba_has_prefill_checkpoint_blocks = cache_config, has_export

        # the state groups come first and share one block B: the attention block, or C where the layers'
        # export grid is the state block (kv_cache_planning._align_spec). MambaManager judges an in-prefill
        # export on B, so only the split reading B counts on one; it also has the stops vLLM derives from B
        # (the prompt's tail). The other split, reading the attention block or C, ends a chunk earlier on a
        # multiple of C, or (B = C) on an attention block where C would leave budget unused.
        state_block, interval = config.kv_cache_groups[0].kv_cache_spec.block_size, config.checkpoint_interval
        if state_block == interval:
            on_checkpoints = split(interval, True)
            on_blocks = split(config.block_size, False)
            return on_checkpoints if 4 * on_checkpoints >= 3 * on_blocks else on_blocks
        managers = self.kv_cache_manager.coordinator.single_type_managers
        request = args[0] if args else kwargs["request"]
        spare = all(m.can_spare_slot() for m in managers if hasattr(m, "can_spare_slot"))
        num_new_tokens = args[1] if len(args) > 1 else kwargs["num_new_tokens"]
        start = request.num_computed_tokens + sum(args[2:]) + sum(
            kwargs.get(k, 0) for k in ("num_new_local_computed_tokens", "num_external_computed_tokens"))
        finishes = start + num_new_tokens >= max(request.num_prompt_tokens, request.num_tokens - 1)
        if finishes and not (spare and _room_for_waiting(self, managers, request)):
            # the prompt's tail checkpoint is not worth a step where the pool cannot spare it a slot, or
            # would evict it to admit the waiting requests: the chunk finishes the prompt
            return num_new_tokens
        on_blocks = split(state_block, True)
        if not spare:
            return on_blocks  # mid-prompt: floored to attention blocks, no early stop on C for a dropped checkpoint
        on_checkpoints = split(interval, False)
        return on_checkpoints if 3 * on_blocks <= 4 * on_checkpoints <= 4 * on_blocks else on_blocks

    return _mamba_block_aligned_split


PATCHES = (Patch("_mamba_block_aligned_split", _aligned_split),)
