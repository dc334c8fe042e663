"""The PyTorch side: the process's ``CUDAPluggableAllocator`` over the library, its ``MemPool`` per device,
``use()`` (MemPool mode), ``install()`` (global mode), the hook bridge, and host slabs as CPU tensors.

PyTorch is optional for the rest of the package: every function here imports it when first called.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import warnings
from typing import Any, Iterator

from hybrid_alloc.allocator.control import backend_name, pop_tag, push_tag, slab_alloc
from hybrid_alloc.allocator.library import ALLOC_FN, FREE_FN, PKG_DIR, REPO_DIR, call, core, lib, library_path, lock
from hybrid_alloc.errors import AllocatorError

#: Every hook the bridge sets on torch's CUDAPluggableAllocator (besides alloc/free).
ALL_HOOKS = (
    "init",
    "reset",
    "memory_fraction",
    "record_stream",
    "begin_allocate_to_pool",
    "end_allocate_to_pool",
    "release_pool",
)

_pluggable: Any = None
_live_hooks: tuple[str, ...] = ()
_pools: dict[int, Any] = {}
_installed = False


def empty_cache() -> None:
    """Return cached memory: PyTorch's cache first (its MemPool segments come back to us), then ours."""
    torch = _torch_or_none()
    if torch is not None and _cuda_ready(torch):
        torch.cuda.empty_cache()
    call(core().empty_cache)


def host_tensor(nbytes: int, name: str = "", tag: str = "", dtype: Any = None, device: int = 0):
    """A slab of the host backend as a CPU ``torch.Tensor`` (1-D, `dtype`, default uint8) without a copy.

    The tensor owns the slab: it is freed when the last tensor or view over it dies (do not slab_free
    it). Only with the host backend (on a CUDA backend a slab is device memory).
    """
    import torch  # noqa: PLC0415 - lazy: optional, heavy

    dtype = torch.uint8 if dtype is None else dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    if nbytes <= 0 or nbytes % itemsize:
        raise AllocatorError(f"host_tensor: nbytes must be a positive multiple of {itemsize} for {dtype} (got {nbytes})")
    be = backend_name()
    if be != "host":
        raise AllocatorError(
            f"host_tensor needs the host backend, the allocator runs the {be!r} backend "
            "(set HYBRID_ALLOC_BACKEND=host before the first allocation)"
        )
    ptr = slab_alloc(nbytes, name, tag, device)
    try:
        buf = _SlabBuffer.wrap(ptr, nbytes)
        return torch.frombuffer(buf, dtype=dtype)
    except BaseException:
        core().slab_free(ptr)
        raise


class _SlabBuffer:
    """Factory of ctypes byte arrays over a slab that free the slab when the last reference dies.

    torch.frombuffer keeps the buffer object alive as long as the tensor's storage lives.
    """

    _types: dict[int, type] = {}

    @classmethod
    def wrap(cls, ptr: int, nbytes: int):
        t = cls._types.get(nbytes)
        if t is None:
            base = ctypes.c_uint8 * nbytes

            def __del__(self, _free=_free_slab_quietly):  # noqa: N807
                _free(self._slab_ptr)

            t = type(f"SlabBuffer{nbytes}", (base,), {"__del__": __del__})
            cls._types[nbytes] = t
        buf = t.from_address(ptr)
        buf._slab_ptr = ptr
        return buf


def _free_slab_quietly(ptr: int) -> None:
    try:
        sys.modules["hybrid_alloc._core"].slab_free(ptr)
    except Exception:  # noqa: BLE001 - interpreter shutdown or already freed: nothing to report to
        pass


# --------------------------------------------------------------------------------------- PyTorch (CUDA)
def _torch_or_none():
    try:
        import torch  # noqa: PLC0415 - lazy: optional, heavy
    except ImportError:
        return None
    return torch


def _cuda_ready(torch) -> bool:
    return bool(getattr(torch.version, "cuda", None)) and torch.cuda.is_initialized()


def _require_cuda_torch():
    torch = _torch_or_none()
    if torch is None:
        raise AllocatorError("PyTorch is not installed: the pluggable allocator needs CUDA PyTorch")
    if not getattr(torch.version, "cuda", None) or not hasattr(torch._C, "_cuda_customAllocator"):
        raise AllocatorError(
            f"PyTorch {torch.__version__} is built without CUDA: the pluggable allocator needs CUDA PyTorch "
            "(on this machine use the host backend directly: host_tensor(), slab_alloc())"
        )
    return torch


def bridge_source() -> str:
    """Path of torch_bridge.cpp (installed in the package, or csrc/ in a checkout)."""
    for p in (os.path.join(PKG_DIR, "torch_bridge.cpp"), os.path.join(REPO_DIR, "csrc", "torch_bridge.cpp")):
        if os.path.isfile(p):
            return p
    raise AllocatorError("torch_bridge.cpp not found in the package nor in csrc/: reinstall with `pip install .`")


def _cuda_include_dirs(torch) -> list[str]:
    """Directories holding cuda_runtime_api.h: CUDA_HOME, /usr/local/cuda, or the nvidia-* wheels."""
    from torch.utils import cpp_extension  # noqa: PLC0415 - lazy: torch

    dirs = []
    home = getattr(cpp_extension, "CUDA_HOME", None) or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    dirs.append(os.path.join(home, "include"))
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    return [d for d in dirs if os.path.isfile(os.path.join(d, "cuda_runtime_api.h"))]


def build_bridge(verbose: bool = False):
    """Compile (or load from the cache) the hook bridge; returns the extension module."""
    torch = _require_cuda_torch()
    from torch.utils import cpp_extension  # noqa: PLC0415 - lazy: torch

    inc = _cuda_include_dirs(torch)
    if not inc:
        raise AllocatorError(
            "cannot build the PyTorch hook bridge: cuda_runtime_api.h not found (set CUDA_HOME or install "
            "the nvidia-cuda-runtime wheel)"
        )
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    name = "hybrid_alloc_torch_bridge_" + torch.__version__.replace(".", "_").replace("+", "_")
    try:
        return cpp_extension.load(
            name=name,
            sources=[bridge_source()],
            extra_cflags=["-O2"],
            extra_include_paths=inc[:1],
            extra_ldflags=[f"-L{torch_lib}", "-lc10_cuda", "-ltorch_cuda", f"-Wl,-rpath,{torch_lib}"],
            with_cuda=False,  # headers only: no nvcc needed, no cudart linked
            verbose=verbose,
        )
    except Exception as e:  # noqa: BLE001 - compiler missing/failing: one clear line
        msg = str(e).strip().splitlines()
        raise AllocatorError(
            f"cannot build the PyTorch hook bridge ({msg[-1] if msg else type(e).__name__}); "
            "a C++ compiler and CUDA headers are needed"
        ) from None


def live_hooks() -> tuple[str, ...]:
    """The optional PyTorch hooks set on pluggable() (empty until the bridge ran)."""
    return _live_hooks


def pluggable(hooks: str = "auto"):
    """The process's ``torch.cuda.memory.CUDAPluggableAllocator`` over libhybrid_alloc.so (one object).

    hooks: "auto" sets every optional hook through the bridge and warns (once) if it cannot be built;
    "require" raises instead; "off" leaves alloc/free only (enough for MemPool mode).
    """
    global _pluggable, _live_hooks
    if hooks not in ("auto", "require", "off"):
        raise AllocatorError(f"pluggable(hooks={hooks!r}): expected 'auto', 'require' or 'off'")
    torch = _require_cuda_torch()
    with lock:
        if _pluggable is None:
            path = library_path()
            lib()  # checks the ABI version with a clear message before torch loads it
            _pluggable = torch.cuda.memory.CUDAPluggableAllocator(path, ALLOC_FN, FREE_FN)
        if hooks != "off" and not _live_hooks:
            try:
                bridge = build_bridge()
                _live_hooks = tuple(bridge.set_hooks(_pluggable.allocator(), library_path()))
            except AllocatorError as e:
                if hooks == "require":
                    raise
                warnings.warn(f"hybrid_alloc: only alloc/free are live: {e}", RuntimeWarning, stacklevel=2)
        return _pluggable


def mempool(device: int | None = None):
    """The ``torch.cuda.MemPool`` backed by the library on `device` (one per device, cached)."""
    torch = _require_cuda_torch()
    if device is None:
        device = torch.cuda.current_device()
    with lock:
        pool = _pools.get(device)
        if pool is None:
            pool = torch.cuda.MemPool(pluggable(hooks="off").allocator())
            _pools[device] = pool
        return pool


@contextlib.contextmanager
def use(tag: str = "kv_cache", pool: Any = None, device: int | None = None) -> Iterator[Any]:
    """Route this thread's CUDA allocations inside the block to the library's MemPool, charged to `tag`.

    ``kv_cache`` (an arena tag by default) puts them in natural slabs of the arena. Yields the pool.
    """
    torch = _require_cuda_torch()
    if device is None:
        device = torch.cuda.current_device()
    pool = mempool(device) if pool is None else pool
    push_tag(tag)
    try:
        with torch.cuda.use_mem_pool(pool, device):
            yield pool
    finally:
        pop_tag()


def installed() -> bool:
    """Whether install() made the library the process-wide CUDA allocator."""
    return _installed


def install(hooks: str = "require"):
    """Make the library the process-wide CUDA allocator (global mode). Call before CUDA is initialised.

    hooks="require" (default) refuses to install without the bridge: record_stream and graph capture
    are only safe with their hooks live; "auto" installs with alloc/free only if the bridge fails.
    """
    global _installed
    torch = _require_cuda_torch()
    with lock:
        if _installed:
            return _pluggable
        if torch.cuda.is_initialized():
            raise AllocatorError(
                "hybrid_alloc.install() must run before CUDA is initialised in this process (PyTorch cannot "
                "change its allocator after the first CUDA call): call it at startup, or use the MemPool "
                "mode instead (hybrid_alloc.allocator.use('kv_cache'))"
            )
        alloc = pluggable(hooks=hooks)
        try:
            torch.cuda.memory.change_current_allocator(alloc)
        except RuntimeError as e:
            raise AllocatorError(f"PyTorch refused the allocator: {str(e).splitlines()[0]}") from None
        _installed = True
        return alloc
