"""Python side of the pluggable allocator (libhybrid_alloc.so + the hybrid_alloc._core control module).

Two ways to put PyTorch's CUDA tensors on it:

* **MemPool mode (the default, KV cache only).** ``with use("kv_cache"): kv = torch.zeros(...)`` routes the
  allocations of the block to ``torch.cuda.MemPool(pluggable().allocator())`` with the tag pushed. PyTorch's
  own caching allocator stays in front (its statistics keep working); it asks our library for whole
  segments through ``hybrid_alloc_malloc`` / ``hybrid_alloc_free`` only, and requests made under an arena tag
  (``kv_cache`` by default) become natural slabs of the arena. PyTorch calls no other hook in this mode.
* **Global mode.** ``install()`` at process start makes the library the process-wide CUDA allocator
  (``torch.cuda.memory.change_current_allocator``). Every allocation then goes through the caching path;
  PyTorch calls the optional hooks (init, empty_cache, memory fraction, record_stream, graph-capture pools),
  which PyTorch 2.13's Python ``CUDAPluggableAllocator`` cannot set: a small C++ bridge
  (``csrc/torch_bridge.cpp``) compiled at run time with ``torch.utils.cpp_extension.load`` (cached in
  ``TORCH_EXTENSIONS_DIR``) sets all seven. ``live_hooks()`` says which are set.

Without CUDA (the host backend) the slab arena is usable directly: ``host_tensor()`` hands a slab to torch as
a CPU tensor without a copy; the slab is freed when the last tensor/view over it dies.

User-facing failures raise :class:`AllocatorError` (a ``UserError``: one line, no ctypes traceback);
exhausted memory raises :class:`AllocatorOOM` (also a ``MemoryError``) whose message is the library's
``last_error`` (request size, tag, arena state).

This module is the public face; the work is in three layers below it: ``library.py`` loads the library
(ctypes + ``_core``, the ABI check) and maps its errors in one place, ``control.py`` holds the library's
controls (configuration, statistics, tags, slabs, the trace), ``pytorch.py`` the PyTorch side.
"""

from hybrid_alloc.allocator.control import (
    AllocationTrace,
    arena_reserve,
    backend_name,
    configure,
    current_tag,
    last_error,
    parse_trace,
    pop_tag,
    push_tag,
    reset_peak_stats,
    set_tag,
    slab_alloc,
    slab_free,
    slabs,
    stats,
    tag,
    tag_stats,
    trace,
    trace_clear,
    trace_enable,
)
from hybrid_alloc.allocator.library import ABI_VERSION, ALLOC_FN, FREE_FN, LIBRARY_NAME, core, lib, library_path
from hybrid_alloc.allocator.pytorch import (
    ALL_HOOKS,
    bridge_source,
    build_bridge,
    empty_cache,
    host_tensor,
    install,
    installed,
    live_hooks,
    mempool,
    pluggable,
    use,
)
from hybrid_alloc.errors import AllocatorError, AllocatorOOM

__all__ = [
    "ABI_VERSION", "ALLOC_FN", "ALL_HOOKS", "FREE_FN", "LIBRARY_NAME", "AllocationTrace", "AllocatorError",
    "AllocatorOOM", "arena_reserve", "backend_name", "bridge_source", "build_bridge", "configure", "core",
    "current_tag", "empty_cache", "host_tensor", "install", "installed", "last_error", "lib", "library_path",
    "live_hooks", "mempool", "parse_trace", "pluggable", "pop_tag", "push_tag", "reset_peak_stats", "set_tag",
    "slab_alloc", "slab_free", "slabs", "stats", "tag", "tag_stats", "trace", "trace_clear", "trace_enable", "use",
]
