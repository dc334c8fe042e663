"""The state checkpoint interval of "align" mode (prefix caching on): ``HYBRID_ALLOC_STATE_CHECKPOINT``.

``block_size`` sets vLLM's ``mamba_block_size`` to a provisional value in each worker; ``kv_cache_planning``
sets the state groups' block to the interval for the plan's ``k``; ``kv_cache_coordinator``'s align-mode
managers checkpoint a request's state every that many tokens. The default is the trace's
(``hybrid_alloc.planner.checkpoints.checkpoint_interval_tokens``): ``k`` blocks rounded up to a power of two.
"""

from __future__ import annotations

import os

from hybrid_alloc.planner.checkpoints import checkpoint_interval_tokens

from . import log

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
