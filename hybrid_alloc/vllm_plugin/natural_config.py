"""The natural layout's KV cache config types, shared by the engine core's planning
(``kv_cache_planning``), the capacity log, the scheduler (``kv_cache_coordinator``) and the workers
(``tensors``)."""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheTensor


@dataclass
class SlotTensor(KVCacheTensor):
    """One state layer's pages: slot ``s`` at ``offset + s * block_stride``, ``block_stride = k * A``."""


@dataclass
class NaturalKVCacheConfig(KVCacheConfig):
    slot_blocks: int = 1  # k: block ids per state slot
    num_state_groups: int = 1
    # "align" mode (prefix caching on): state block tables hold each slot's representative pool id s*k,
    # so state views are indexed by pool id at the attention page stride (index s*k = slot s)
    state_ids_are_block_ids: bool = False
    # "align" mode: C, the tokens between two kept state checkpoints (besides each prompt's replay boundary and
    # shared-prefix junctions); the state managers apply it as vLLM's sparse retention interval
    checkpoint_interval: int | None = None

    def num_blocks_of(self, tensor: KVCacheTensor) -> int:
        # Overrides KVCacheConfig.num_blocks_of for the views that allocate_kv_cache builds: state layers
        # address slots, not blocks.
        if isinstance(tensor, SlotTensor):
            runs = self.num_blocks // self.slot_blocks
            if self.state_ids_are_block_ids:
                return (runs - 1) * self.slot_blocks + 1  # the last representative; its page ends in the run
            return runs
        return super().num_blocks_of(tensor)

    @property
    def block_size(self) -> int:
        return self.kv_cache_groups[-1].kv_cache_spec.block_size

    def blocks_per_request(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size) + self.num_state_groups * self.slot_blocks
