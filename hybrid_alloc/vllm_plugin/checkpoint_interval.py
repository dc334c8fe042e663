"""The state checkpoint interval of "align" mode (prefix caching on): ``HYBRID_ALLOC_STATE_CHECKPOINT``.

``block_size`` sets vLLM's ``mamba_block_size`` to a provisional state block in each worker;
``kv_cache_planning`` chooses the interval C for the plan's ``k`` and the state groups' block B (the
attention block, or C where the layers' export grid is the state block: ``kv_cache_planning._align_spec``)
in the engine core; each worker adopts B from the KV cache config it receives, before its model runner
reads it (patch of ``Worker.initialize_from_config``: vLLM's model runner V2 seeds a request's running state
column from ``cache_config.mamba_block_size``, and GDN's FlashInfer prefill keeps its checkpoint grid
there); vLLM's sparse retention keeps a request's state every C tokens. The default C is the trace's
(``hybrid_alloc.planner.checkpoints.checkpoint_interval_tokens``): ``k`` blocks rounded up to a power of
two, at least ``WORKER_SLOT_BLOCKS`` blocks: with a power-of-two attention block (every GPU backend's)
never below the provisional block, so buffers a worker sized on it suffice.
"""

from __future__ import annotations

import os

from hybrid_alloc.planner.checkpoints import checkpoint_interval_tokens

from . import log
from .natural_config import NaturalKVCacheConfig
from .patching import Patch

ENV = "HYBRID_ALLOC_STATE_CHECKPOINT"
# The slot size block_size passes for a provisional interval: a worker sets mamba_block_size before its KV
# cache specs exist, while the plan's k is chosen in the engine core from every stage's specs and budget,
# after them; the engine core then gives the state groups it sends back to the workers the interval for
# the plan's k (kv_cache_planning.plan).
WORKER_SLOT_BLOCKS = 16


def checkpoint_tokens(block: int, k: int) -> int:
    """The checkpoint interval in tokens for state slots of ``k`` blocks of ``block`` tokens: the planner's
    ``checkpoint_interval_tokens(k, block)``, or ``HYBRID_ALLOC_STATE_CHECKPOINT`` rounded up to a multiple
    of ``block`` (itself a multiple of every kernel alignment); always at least one block.

    A prompt's own end is checkpointed at the attention block whatever the interval (vLLM's partial-tail
    checkpoint), so the interval only sets how often a long prefill leaves a state slot behind for other
    requests sharing a prefix; at ``k`` blocks per slot and at least ``k`` blocks per interval, cached state
    never outweighs the cached attention of the prefix it serves."""
    value = os.environ.get(ENV, "")
    tokens = checkpoint_interval_tokens(k, block)
    if value:
        if value.isdigit() and int(value) > 0:
            tokens = int(value)
        else:
            log.once(f"hybrid-alloc: {ENV}={value!r} is not a positive number of tokens; using {tokens}")
    return max(block, -(-tokens // block) * block)


def adopt_interval(cache_config, kv_cache_config) -> None:
    """A worker's ``cache_config.mamba_block_size`` := the state groups' block in a natural align-mode
    config (the engine core's; the worker holds the provisional one); anything else unchanged."""
    if isinstance(kv_cache_config, NaturalKVCacheConfig) and kv_cache_config.state_ids_are_block_ids:
        cache_config.mamba_block_size = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size  # state groups first


def _initialize_from_config(original):
    def initialize_from_config(self, kv_cache_config, *args, **kwargs):
        adopt_interval(self.vllm_config.cache_config, kv_cache_config)
        return original(self, kv_cache_config, *args, **kwargs)

    return initialize_from_config


PATCHES = (Patch("initialize_from_config", _initialize_from_config),)
