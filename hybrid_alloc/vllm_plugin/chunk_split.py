"""The scheduler's prefill chunk split in "align" mode (prefix caching on): chunk ends on state blocks.

vLLM's ``Scheduler._mamba_block_aligned_split`` floors a mid-prefill chunk end to ``cache_config.block_size``
on the invariant "state block p holds the state after exactly (p + 1) x block_size tokens". Under the plugin
the state group's block is the checkpoint interval C (``checkpoint_interval``), larger than that value: the
engine core sets ``cache_config.block_size`` to the attention block, and on the CPU platform a later
``vllm_config.__post_init__()`` resets it to 128. Chunk ends then fall between state blocks, and a block
keyed at (p + 1) x C holds the state of an earlier chunk end: a later request sharing that prefix resumes
from the wrong state (tests/engine/test_engine_checkpoint_keys.py). Here a chunk ends on a checkpoint
position (the split reading the state group's block) when that keeps at least 3/4 of the tokens the chunk
gets when it ends on an attention block (the split reading the attention block), and on the attention block
otherwise: floored to C, a step's leftover budget below C schedules nothing (61 engine steps against 40
with caching off on the mixed workload of tests/engine/test_engine_prefix_caching_capacity.py). A chunk that
runs past a checkpoint position leaves no checkpoint there (``AlignSlotMambaManager.cache_blocks`` keys only
state blocks a chunk ended on). Where the layers export an in-prefill checkpoint (GPU), only the split on
checkpoint positions counts on it: vLLM judges an export on the state block, and the attention-block split
would skip the prompt's tail stop for an export that never happens (the repeated prompt then misses).
The live ``cache_config``, shared with the workers, is never changed.
"""

from __future__ import annotations

from .natural_config import NaturalKVCacheConfig
from .patching import Patch


class _StateBlockCacheConfig:
    """``cache_config`` as the split reads it: ``block_size`` = the state group's block; all else the live one's."""

    def __init__(self, cache_config, block_size: int) -> None:
        self._cache_config, self.block_size = cache_config, block_size

    def __getattr__(self, name):
        return getattr(self._cache_config, name)


def _aligned_split(original):
    def _mamba_block_aligned_split(self, *args, **kwargs):
        config = getattr(self, "kv_cache_config", None)  # a partial scheduler (vLLM's tests): stock
        if not (isinstance(config, NaturalKVCacheConfig) and config.state_ids_are_block_ids):
            return original(self, *args, **kwargs)  # stock, or natural "none" mode (no state blocks keyed)

        def split(block_size: int, exports: bool) -> int:
            cache_config, has_export = self.cache_config, self.mamba_has_prefill_checkpoint_blocks
            self.cache_config = _StateBlockCacheConfig(cache_config, block_size)
            self.mamba_has_prefill_checkpoint_blocks = has_export and exports
            try:
                return original(self, *args, **kwargs)
            finally:
                self.cache_config, self.mamba_has_prefill_checkpoint_blocks = cache_config, has_export

        # state groups come first and share the checkpoint interval (kv_cache_planning.natural_groups)
        on_checkpoints = split(config.kv_cache_groups[0].kv_cache_spec.block_size, True)
        # whether a chunk's in-prefill export is valid depends on the state block (MambaManager judges it on
        # the interval): split on attention blocks as for layers without one, stopping at the prompt's tail
        on_blocks = split(config.block_size, False)
        return on_checkpoints if 4 * on_checkpoints >= 3 * on_blocks else on_blocks

    return _mamba_block_aligned_split


PATCHES = (Patch("_mamba_block_aligned_split", _aligned_split),)
