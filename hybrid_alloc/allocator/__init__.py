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
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import glob
import importlib.util
import json
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from hybrid_alloc.errors import UserError

ABI_VERSION = 1
LIBRARY_NAME = "libhybrid_alloc.so"
ALLOC_FN = "hybrid_alloc_malloc"
FREE_FN = "hybrid_alloc_free"
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

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_DIR = os.path.dirname(_PKG_DIR)
_lock = threading.RLock()
_lib: ctypes.CDLL | None = None
_pluggable: Any = None
_live_hooks: tuple[str, ...] = ()
_pools: dict[int, Any] = {}


class AllocatorError(UserError):
    """The allocator cannot do what was asked; the message says why and what to do."""


class AllocatorOOM(AllocatorError, MemoryError):
    """An allocation failed: the arena or the device is exhausted (message from the library)."""


# --------------------------------------------------------------------------------------------- loading
def _installed_file(pattern: str) -> str | None:
    """A file of the installed hybrid-alloc distribution, for a source checkout that shadows the installed
    package (e.g. pytest run from the repository root after `pip install .`)."""
    try:
        from importlib import metadata  # noqa: PLC0415

        files = metadata.distribution("hybrid-alloc").files or []
    except Exception:  # noqa: BLE001 - not installed
        return None
    for f in files:
        if f.parent.as_posix() == "hybrid_alloc" and fnmatch.fnmatch(f.name, pattern):
            path = str(f.locate())
            if os.path.isfile(path) and os.path.dirname(os.path.realpath(path)) != os.path.realpath(_PKG_DIR):
                return path
    return None


def _import_core():
    try:
        from hybrid_alloc import _core  # noqa: PLC0415

        return _core
    except ImportError as e:
        first = e
    path = _installed_file("_core*.so")
    if path is None:
        raise first
    spec = importlib.util.spec_from_file_location("hybrid_alloc._core", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["hybrid_alloc._core"] = mod
    return mod


def library_path() -> str:
    """Absolute path of libhybrid_alloc.so: the file PyTorch, ctypes and ``_core`` share.

    Search order: the file ``_core`` is linked to (the package's, or the installed distribution's when a
    source checkout without built files shadows it), the package directory, ``$HYBRID_ALLOC_LIBRARY``.
    """
    try:
        return os.path.realpath(_import_core().library_path())
    except ImportError:
        pass
    candidates = [os.path.join(_PKG_DIR, LIBRARY_NAME)]
    env = os.environ.get("HYBRID_ALLOC_LIBRARY")
    if env:
        candidates.append(env)
    for c in candidates:
        if os.path.isfile(c):
            return os.path.realpath(c)
    raise AllocatorError(
        f"{LIBRARY_NAME} not found (looked in {', '.join(candidates)}): build it with `pip install .` "
        "(or cmake + `cmake --install <build> --prefix <repo>` for development)"
    )


def core():
    """The pybind11 control module ``hybrid_alloc._core``."""
    try:
        return _import_core()
    except ImportError as e:
        raise AllocatorError(
            f"hybrid_alloc._core is not built ({e}): build the package with `pip install .`"
        ) from None


def lib() -> ctypes.CDLL:
    """libhybrid_alloc.so through ctypes, with the argument types PyTorch uses for alloc/free."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        path = library_path()
        try:
            h = ctypes.CDLL(path)
        except OSError as e:
            raise AllocatorError(f"cannot load {path}: {e}") from None
        h.hybrid_alloc_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        h.hybrid_alloc_malloc.restype = ctypes.c_void_p
        h.hybrid_alloc_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        h.hybrid_alloc_free.restype = None
        h.hybrid_alloc_last_error.argtypes = []
        h.hybrid_alloc_last_error.restype = ctypes.c_char_p
        h.hybrid_alloc_abi_version.argtypes = []
        h.hybrid_alloc_abi_version.restype = ctypes.c_int
        h.hybrid_alloc_backend_name.argtypes = []
        h.hybrid_alloc_backend_name.restype = ctypes.c_char_p
        abi = h.hybrid_alloc_abi_version()
        if abi != ABI_VERSION:
            raise AllocatorError(
                f"{path} has ABI version {abi}, this package expects {ABI_VERSION}: rebuild with `pip install .`"
            )
        _lib = h
        return h


def last_error() -> str:
    return core().last_error()


def backend_name() -> str:
    """'cuda' or 'host' (creates the backend on first call; HYBRID_ALLOC_BACKEND=auto|cuda|host)."""
    return core().backend_name()


def configure(**options: Any) -> None:
    """``configure(alignment=512, arena_tags="kv_cache,weights")``: see hybrid_alloc.h for the keys."""
    c = core()
    for key, value in options.items():
        if isinstance(value, bool):
            value = int(value)
        try:
            c.configure(key, str(value))
        except ValueError as e:
            raise AllocatorError(str(e)) from None


# --------------------------------------------------------------------------------------- statistics
def stats(device: int = 0) -> dict:
    """Counters of one device: {"total"|"arena"|"caching": {current, peak, reserved, alloc_count,
    free_count}, "arena_reserved_bytes", "num_ooms", ...}."""
    try:
        return core().stats(device)
    except ValueError as e:
        raise AllocatorError(str(e)) from None


def tag_stats(device: int = 0) -> dict[str, dict]:
    """Per-tag counters of one device: {tag: {current, peak, reserved, alloc_count, free_count}}."""
    try:
        return core().tag_stats(device)
    except ValueError as e:
        raise AllocatorError(str(e)) from None


def slabs(device: int = 0) -> list[dict]:
    """Live slabs in address order: [{ptr, size, carved, offset, name, tag}]."""
    return core().slabs(device)


def reset_peak_stats(device: int = 0) -> None:
    core().reset_peak_stats(device)


def empty_cache() -> None:
    """Return cached memory: PyTorch's cache first (its MemPool segments come back to us), then ours."""
    torch = _torch_or_none()
    if torch is not None and _cuda_ready(torch):
        torch.cuda.empty_cache()
    core().empty_cache()


# --------------------------------------------------------------------------------------------- tags
def set_tag(tag: str) -> None:
    _tag_call(core().set_tag, tag)


def push_tag(tag: str) -> None:
    _tag_call(core().push_tag, tag)


def pop_tag() -> None:
    try:
        core().pop_tag()
    except ValueError as e:
        raise AllocatorError(str(e)) from None


def current_tag() -> str:
    return core().current_tag()


@contextlib.contextmanager
def tag(name: str) -> Iterator[None]:
    """Charge this thread's allocations inside the block to `name`."""
    push_tag(name)
    try:
        yield
    finally:
        pop_tag()


def _tag_call(fn, name: str) -> None:
    try:
        fn(name)
    except ValueError as e:
        raise AllocatorError(str(e)) from None


# --------------------------------------------------------------------------------------------- trace
@dataclass
class Trace:
    """A dumped trace: the header line and the events (dicts with t_ns, op, device, stream, ptr, size,
    tag, pool), in time order. Iterating yields the events."""

    header: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def trace_enable(enabled: bool = True, capacity_events: int = 0) -> None:
    core().trace_enable(1 if enabled else 0, capacity_events)


def trace_clear() -> None:
    core().trace_clear()


def trace(path: str | None = None) -> Trace:
    """Dump the trace (to `path`, or a temporary file removed afterwards) and parse its JSON lines."""
    c = core()
    tmp = None
    if path is None:
        fd, tmp = tempfile.mkstemp(prefix="hybrid_alloc_trace_", suffix=".jsonl")
        os.close(fd)
        path = tmp
    try:
        try:
            c.trace_dump(path)
        except RuntimeError as e:
            raise AllocatorError(str(e)) from None
        return parse_trace(path)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def parse_trace(path: str) -> Trace:
    out = Trace()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise AllocatorError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if rec.get("type") == "header":
                out.header = rec
            else:
                out.events.append(rec)
    return out


# ------------------------------------------------------------------------------------ slabs (direct)
def slab_alloc(size: int, name: str = "", tag: str = "", device: int = 0) -> int:
    """Allocate a slab of exactly `size` bytes; returns its address. Free it with slab_free()."""
    if size <= 0:
        raise AllocatorError(f"slab size must be > 0 (got {size})")
    try:
        return core().slab_alloc(device, size, name, tag)
    except MemoryError as e:
        raise AllocatorOOM(str(e)) from None


def slab_free(ptr: int) -> None:
    try:
        core().slab_free(ptr)
    except ValueError as e:
        raise AllocatorError(str(e)) from None


def arena_reserve(nbytes: int, device: int = 0) -> None:
    """Reserve the device arena (rounded up to 2 MiB); 0 = on demand. Fails while slabs are live."""
    try:
        core().arena_reserve(device, nbytes)
    except ValueError as e:
        raise AllocatorError(str(e)) from None


def host_tensor(nbytes: int, name: str = "", tag: str = "", dtype: Any = None, device: int = 0):
    """A slab of the host backend as a CPU ``torch.Tensor`` (1-D, `dtype`, default uint8) without a copy.

    The tensor owns the slab: it is freed when the last tensor or view over it dies (do not slab_free
    it). Only with the host backend (on a CUDA backend a slab is device memory).
    """
    import torch  # noqa: PLC0415

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
        import torch  # noqa: PLC0415
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
    for p in (os.path.join(_PKG_DIR, "torch_bridge.cpp"), os.path.join(_REPO_DIR, "csrc", "torch_bridge.cpp")):
        if os.path.isfile(p):
            return p
    raise AllocatorError("torch_bridge.cpp not found in the package nor in csrc/: reinstall with `pip install .`")


def _cuda_include_dirs(torch) -> list[str]:
    """Directories holding cuda_runtime_api.h: CUDA_HOME, /usr/local/cuda, or the nvidia-* wheels."""
    from torch.utils import cpp_extension  # noqa: PLC0415

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
    from torch.utils import cpp_extension  # noqa: PLC0415

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
    with _lock:
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
    with _lock:
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


_installed = False


def install(hooks: str = "require"):
    """Make the library the process-wide CUDA allocator (global mode). Call before CUDA is initialised.

    hooks="require" (default) refuses to install without the bridge: record_stream and graph capture
    are only safe with their hooks live; "auto" installs with alloc/free only if the bridge fails.
    """
    global _installed
    torch = _require_cuda_torch()
    with _lock:
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
