"""The state checkpoint interval of "align" mode (prefix caching on): ``HYBRID_ALLOC_STATE_CHECKPOINT``.

``block_size`` sets vLLM's ``mamba_block_size`` to it; ``kv_cache_coordinator``'s align-mode managers
checkpoint a request's state every that many tokens.
"""

from __future__ import annotations

import os

from . import log

ENV = "HYBRID_ALLOC_STATE_CHECKPOINT"
DEFAULT_CHECKPOINT_BLOCKS = 16


def checkpoint_tokens(block: int) -> int:
    """The checkpoint interval in tokens: ``HYBRID_ALLOC_STATE_CHECKPOINT`` rounded up to a multiple of the
    attention block ``block`` (itself a multiple of every kernel alignment), default ``16 * block`` (512
    tokens on CPU, 256 at 16-token blocks).

    Why that default: a prompt's own end is checkpointed at the attention block whatever the interval
    (vLLM's partial-tail checkpoint), so the interval only sets how often a long prefill leaves a state
    slot behind for other requests sharing a prefix. One slot costs ``k`` blocks (a few for small models,
    tens for Qwen3.5-class ones); at 16 attention blocks per checkpoint the cached state of a long prompt
    costs about ``k/16`` of its attention blocks instead of ``k`` per block, and a shared prefix loses at
    most 15 blocks of recompute."""
    value = os.environ.get(ENV, "")
    tokens = DEFAULT_CHECKPOINT_BLOCKS * block
    if value:
        if value.isdigit() and int(value) > 0:
            tokens = int(value)
        else:
            log.once(f"hybrid-alloc: {ENV}={value!r} is not a positive number of tokens; using {tokens}")
    return max(block, -(-tokens // block) * block)
