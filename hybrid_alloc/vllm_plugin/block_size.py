"""No attention block inflation, no state page padding (the workers' block sizes).

Replaces ``Platform._align_hybrid_block_size`` (``vllm.platforms.interface``), which every platform's
``update_block_size_for_backend`` calls in each worker after ``load_model``: it raises the attention block
size until one attention page holds one state page, then pads the state page to it. Here the attention
block is the smallest kernel block every attention backend accepts (the same alignment arithmetic,
without the state page factor) and ``mamba_page_size_padded`` stays None, so
``MambaBase.get_kv_cache_spec`` emits unpadded specs; in "align" mode ``mamba_block_size`` is the
checkpoint interval (``checkpoint_interval``).
"""

from __future__ import annotations

from math import lcm

from . import fail_closed
from .checkpoint_interval import WORKER_SLOT_BLOCKS, checkpoint_tokens
from .patching import Patch


def kernel_block_size(vllm_config, backend_cls, backend_classes) -> int:
    """The smallest attention block all backends accept (vLLM's ``kernel_block_alignment_size`` rounded
    to ``backend_block_alignment``; 32 on vLLM's CPU backend, whose sizes are ``MultipleOf(32)``, where the
    platform default is 128). A user's ``--block-size`` is kept when larger."""
    from vllm.config.vllm import set_current_vllm_config  # lazy: vllm
    from vllm.v1.attention.backend import MultipleOf

    def smallest(sizes):
        return min(s.base if isinstance(s, MultipleOf) else s for s in sizes)

    with set_current_vllm_config(vllm_config):
        kernel = smallest(backend_cls.get_supported_kernel_block_sizes())
        if vllm_config.cache_config.user_specified_block_size:
            kernel = max(kernel, vllm_config.cache_config.block_size)
        align = lcm(*(smallest(s) for b in backend_classes if (s := b.get_supported_kernel_block_sizes())))
    return align * -(-kernel // align)


def _align_hybrid_block_size(original):
    def natural(cls, vllm_config, backend_cls) -> None:
        if fail_closed.config_reason(vllm_config):
            return original.__func__(cls, vllm_config, backend_cls)
        cache_config = vllm_config.cache_config
        cache_config.block_size = kernel_block_size(vllm_config, backend_cls, cls._find_non_ssm_backends(vllm_config))
        cache_config.mamba_page_size_padded = None
        if cache_config.mamba_cache_mode == "align":
            cache_config.mamba_block_size = checkpoint_tokens(cache_config.block_size, WORKER_SLOT_BLOCKS)

    return classmethod(natural)


PATCHES = (Patch("_align_hybrid_block_size", _align_hybrid_block_size),)
