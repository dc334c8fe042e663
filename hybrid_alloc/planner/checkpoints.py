"""The state checkpoint interval C of prefix caching ("align" mode), one function for the trace and the plugin.

With prefix caching on, a running request holds one state slot; a checkpoint is another slot (``k`` blocks)
holding a copy of the state after a multiple of C tokens (and at a prompt's end), cached and evicted least
recently used beside cached attention blocks. C = ``k`` attention blocks of tokens, rounded up to a power of
two: one checkpoint then costs between half and all of the attention bytes of the C tokens it saves
recomputing, so cached state never outweighs the cached attention of the prefix it serves.
"""

from __future__ import annotations


def checkpoint_interval_tokens(k: int, block: int) -> int:
    """C in tokens for slots of ``k`` blocks of ``block`` tokens: the power of two at or above ``k * block``,
    rounded up to a multiple of ``block`` (a no-op for power-of-two blocks); at least one block."""
    tokens = 1 << (max(1, k) * block - 1).bit_length()
    return -(-tokens // block) * block
