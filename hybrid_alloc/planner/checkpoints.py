"""The state checkpoint interval C of prefix caching ("align" mode), one function for the trace and the plugin.

With prefix caching on, a running request holds one state slot; a checkpoint is another slot (``k`` blocks)
holding a copy of the state after a multiple of C tokens (and at a prompt's end), cached and evicted least
recently used beside cached attention blocks. C = ``k`` attention blocks of tokens, rounded up to a power of
two: one checkpoint then costs between half and all of the attention bytes of the C tokens it saves
recomputing, so cached state never outweighs the cached attention of the prefix it serves. At least 16
blocks (what the plugin ran with before C followed k): for tiny slots it bounds the copies per request.
Qwen3.5-class models (k near 100) are not affected. (The failures once seen on the CPU engine at 64 and 128
tokens were vLLM's CPU Mamba2 scan, which cannot export an in-prefill checkpoint; the plugin gives it one:
``vllm_plugin.mamba2_prefill_checkpoint``.)
"""

from __future__ import annotations

MIN_BLOCKS = 16  # the fewest attention blocks between two checkpoints


def checkpoint_interval_tokens(k: int, block: int) -> int:
    """C in tokens for slots of ``k`` blocks of ``block`` tokens: the power of two at or above ``k * block``,
    rounded up to a multiple of ``block`` (a no-op for power-of-two blocks); at least ``MIN_BLOCKS`` blocks."""
    tokens = 1 << (max(1, k) * block - 1).bit_length()
    return max(MIN_BLOCKS * block, -(-tokens // block) * block)
