"""No attention block inflation, no state page padding.

Replaces ``Platform._align_hybrid_block_size`` (``vllm/platforms/interface.py``; 0.32: line 939), which
every platform's ``update_block_size_for_backend`` calls in each worker after ``load_model``: it raises the
attention block size until one attention page holds one state page, then pads the state page to it. Here
the attention block is the smallest kernel block every attention backend accepts (the same alignment
arithmetic, without the state page factor) and ``mamba_page_size_padded`` stays None, so
``MambaBase.get_kv_cache_spec`` emits unpadded specs.
"""

from __future__ import annotations

from math import lcm

from . import fail_closed

_original = None


def kernel_block_size(vllm_config, backend_cls, backend_classes) -> int:
    """The smallest attention block all backends accept (vLLM's ``kernel_block_alignment_size`` rounded
    to ``backend_block_alignment``; 32 on vLLM's CPU backend, whose sizes are ``MultipleOf(32)``, where the
    platform default is 128). A user's ``--block-size`` is kept when larger."""
    from vllm.config.vllm import set_current_vllm_config
    from vllm.v1.attention.backend import MultipleOf

    def smallest(sizes):
        return min(s.base if isinstance(s, MultipleOf) else s for s in sizes)

    with set_current_vllm_config(vllm_config):
        kernel = smallest(backend_cls.get_supported_kernel_block_sizes())
        if vllm_config.cache_config.user_specified_block_size:
            kernel = max(kernel, vllm_config.cache_config.block_size)
        align = lcm(*(smallest(s) for b in backend_classes if (s := b.get_supported_kernel_block_sizes())))
    return align * -(-kernel // align)


def _natural(cls, vllm_config, backend_cls) -> None:
    if fail_closed.config_reason(vllm_config):
        return _original.__func__(cls, vllm_config, backend_cls)
    cache_config = vllm_config.cache_config
    cache_config.block_size = kernel_block_size(vllm_config, backend_cls, cls._find_non_ssm_backends(vllm_config))
    cache_config.mamba_page_size_padded = None
    if cache_config.mamba_cache_mode == "align":
        cache_config.mamba_block_size = checkpoint_tokens(cache_config.block_size)


DEFAULT_CHECKPOINT_BLOCKS = 16


def checkpoint_tokens(block: int) -> int:
    """The state checkpoint interval of "align" mode (prefix caching on), in tokens:
    ``HYBRID_ALLOC_STATE_CHECKPOINT`` rounded up to a multiple of the attention block ``block`` (itself a
    multiple of every kernel alignment), default ``16 * block`` (512 tokens on CPU, 256 at 16-token blocks).

    Why that default: a prompt's own end is checkpointed at the attention block whatever the interval
    (vLLM's partial-tail checkpoint), so the interval only sets how often a long prefill leaves a state
    slot behind for other requests sharing a prefix. One slot costs ``k`` blocks (a few for small models,
    tens for Qwen3.5-class ones); at 16 attention blocks per checkpoint the cached state of a long prompt
    costs about ``k/16`` of its attention blocks instead of ``k`` per block, and a shared prefix loses at
    most 15 blocks of recompute."""
    import os

    from . import log

    value = os.environ.get("HYBRID_ALLOC_STATE_CHECKPOINT", "")
    tokens = DEFAULT_CHECKPOINT_BLOCKS * block
    if value:
        if value.isdigit() and int(value) > 0:
            tokens = int(value)
        else:
            log.once(f"hybrid-alloc: HYBRID_ALLOC_STATE_CHECKPOINT={value!r} is not a positive number of tokens; using {tokens}")
    return max(block, -(-tokens // block) * block)


def patch() -> None:
    global _original
    from vllm.platforms.interface import Platform

    from . import patching

    _original = patching.replace([Platform], "_align_hybrid_block_size", classmethod(_natural))
