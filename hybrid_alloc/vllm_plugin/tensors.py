"""The worker side: one KV cache buffer, from the allocator, viewed per layer by vLLM's own helper.

Replaces ``allocate_kv_cache`` (``vllm.v1.worker.utils``, imported by name in both model runners'
modules; the CPU model runner inherits ``vllm.v1.worker.gpu_model_runner``'s) for natural configs only:
the same loop over ``KVCacheTensor``s through ``create_kv_cache_views``, with the block count of each
tensor from ``NaturalKVCacheConfig.num_blocks_of`` (slots for state layers). The buffer is zeroed, as
stock's ``torch.zeros`` is; afterwards vLLM zeroes newly allocated attention blocks itself
(``needs_kv_cache_zeroing``), which covers attention blocks that last held state slots.
"""

from __future__ import annotations

from hybrid_alloc import allocator

from . import log, startup_report
from .natural_config import NaturalKVCacheConfig, SlotTensor
from .patching import Patch

_state_views: set = set()  # (data_ptr, entries) of "align"-mode state views (indexed by pool block id)


def _copy_kv_cache_blocks_inplace(original):
    """vLLM's block copies (``copy_kv_cache_blocks_inplace``; align mode's copy-on-write of a partially hit
    state block) copy one page-sized block per id in every view, or the whole storage at the block stride.
    On the natural layout a copied block is a state slot (the attention block is the hash block, so
    attention never copies): copy each state layer's page through its own view, nothing else."""

    def copy_kv_cache_blocks_inplace(kv_caches, num_blocks, kv_cache_block_copies):
        caches = list(kv_caches)
        mine = [c for c in caches if isinstance(c, torch_tensor()) and (c.data_ptr(), c.shape[0]) in _state_views]
        if not mine or not kv_cache_block_copies:
            return original(caches, num_blocks, kv_cache_block_copies)
        copy_state_pages(mine, kv_cache_block_copies)

    return copy_kv_cache_blocks_inplace


def copy_state_pages(views: list, kv_cache_block_copies) -> None:
    import torch  # lazy: torch

    pairs = torch.tensor([tuple(c) for c in kv_cache_block_copies], dtype=torch.long, device=views[0].device)
    src, dst = pairs.unbind(dim=1)
    for cache in views:
        cache[dst] = cache[src]


def torch_tensor():
    import torch  # lazy: torch

    return torch.Tensor


def _buffer(size: int, device):
    """(int8 buffer of ``size`` zero bytes, where it came from). The allocator charges it to ``kv_cache``:
    on CPU a host-backend slab handed to torch without a copy; on CUDA a slab of the arena through the
    library's ``MemPool`` (or, in global mode, the process-wide allocator under the tag)."""
    import torch  # lazy: torch

    try:
        return _allocator_buffer(size, device, torch)
    except ImportError as e:  # the C++ library is not built: say so, keep running
        reason = str(e)
    except Exception as e:  # noqa: BLE001 (AllocatorError and CUDA errors: the KV cache must still come up)
        reason = f"{type(e).__name__}: {e}"
    log.once(f"hybrid-alloc: allocator unavailable ({reason}); KV cache from torch.zeros")
    return torch.zeros(size, dtype=torch.int8, device=device), "torch.zeros"


def _allocator_buffer(size: int, device, torch):
    if device.type == "cpu" and allocator.backend_name() == "host":
        buf = allocator.host_tensor(size, name="kv_cache", tag="kv_cache", dtype=torch.int8)
        return buf.zero_(), "hybrid-alloc host slab"
    if device.type == "cuda":
        if allocator.installed():  # global mode: every allocation already goes through the library
            with allocator.tag("kv_cache"):
                return torch.zeros(size, dtype=torch.int8, device=device), "hybrid-alloc (global mode)"
        with allocator.use("kv_cache", device=device.index):  # GPU-verified only by tools/gpu_check.sh
            buf = torch.zeros(size, dtype=torch.int8, device=device)
        return buf, "hybrid-alloc MemPool slab"
    raise ImportError(f"no allocator backend for device {device} (library backend: {allocator.backend_name()})")


def _allocate_kv_cache(original):
    def allocate_kv_cache(kv_cache_config, device, layout, kernel_block_sizes=None):
        if not isinstance(kv_cache_config, NaturalKVCacheConfig):
            return original(kv_cache_config, device, layout, kernel_block_sizes)
        return allocate_natural(kv_cache_config, device, layout, kernel_block_sizes)

    return allocate_kv_cache


def allocate_natural(kv_cache_config: NaturalKVCacheConfig, device, layout, kernel_block_sizes=None) -> dict:
    from vllm.v1.kv_cache_interface import create_kv_cache_views  # lazy: vllm

    sizes = {t.size for t in kv_cache_config.kv_cache_tensors}
    assert len(sizes) == 1, "KV cache tensors must share one backing allocation"
    buf, source = _buffer(sizes.pop(), device)
    group_of = {name: gid for gid, g in enumerate(kv_cache_config.kv_cache_groups) for name in g.layer_names}
    kv_caches = {}
    for tensor in kv_cache_config.kv_cache_tensors:
        gid = group_of[tensor.layers[0]]
        kernel = kernel_block_sizes[gid] if kernel_block_sizes is not None and gid < len(kernel_block_sizes) else None
        views = create_kv_cache_views(
            buf,
            kv_cache_config.kv_cache_groups[gid].kv_cache_spec,
            kv_cache_config.num_blocks_of(tensor),
            layout,
            tensor,
            kernel_block_size=kernel,
        )
        kv_caches.update(zip(tensor.layers, views))
        if kv_cache_config.state_ids_are_block_ids and isinstance(tensor, SlotTensor):
            _state_views.update((v.data_ptr(), v.shape[0]) for v in views)
    names = sorted(kv_caches)
    log.once(f"hybrid-alloc: KV cache allocated: {buf.nbytes} bytes for {names[0]} .. {names[-1]} ({source})")
    startup_report.write(kv_cache_config, device)
    return kv_caches


PATCHES = (
    Patch("allocate_kv_cache", _allocate_kv_cache),
    Patch("copy_kv_cache_blocks_inplace", _copy_kv_cache_blocks_inplace),
)
