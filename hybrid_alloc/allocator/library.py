"""Loading the library: ``libhybrid_alloc.so`` through ctypes (what PyTorch calls), the pybind11 control module
``hybrid_alloc._core`` over the same file, and the one place that maps their errors to the project's.

The control module raises ``ValueError`` (bad argument, unknown device or slab, empty tag stack),
``MemoryError`` (exhausted arena or device) and ``RuntimeError`` (a failed trace dump); :func:`call` turns
them into :class:`~hybrid_alloc.errors.AllocatorError` / :class:`~hybrid_alloc.errors.AllocatorOOM` with the
library's message (request size, tag, arena state), so no caller re-wraps them.
"""

from __future__ import annotations

import ctypes
import fnmatch
import importlib.util
import os
import sys
import threading
from importlib import metadata
from typing import Any, Callable

from hybrid_alloc.errors import AllocatorError, AllocatorOOM

ABI_VERSION = 1
LIBRARY_NAME = "libhybrid_alloc.so"
ALLOC_FN = "hybrid_alloc_malloc"
FREE_FN = "hybrid_alloc_free"

PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hybrid_alloc/: the built files
REPO_DIR = os.path.dirname(PKG_DIR)
lock = threading.RLock()  # guards the loaded handles here and the PyTorch objects of pytorch.py
_lib: ctypes.CDLL | None = None


def call(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` of the control module, its errors as the project's (the library's message kept)."""
    try:
        return fn(*args)
    except MemoryError as e:
        raise AllocatorOOM(str(e)) from None
    except (ValueError, RuntimeError) as e:
        raise AllocatorError(str(e)) from None


def _installed_file(pattern: str) -> str | None:
    """A file of the installed hybrid-alloc distribution, for a source checkout that shadows the installed
    package (e.g. pytest run from the repository root after `pip install .`)."""
    try:
        files = metadata.distribution("hybrid-alloc").files or []
    except Exception:  # noqa: BLE001 - not installed
        return None
    for f in files:
        if f.parent.as_posix() == "hybrid_alloc" and fnmatch.fnmatch(f.name, pattern):
            path = str(f.locate())
            if os.path.isfile(path) and os.path.dirname(os.path.realpath(path)) != os.path.realpath(PKG_DIR):
                return path
    return None


def _import_core():
    try:
        from hybrid_alloc import _core  # noqa: PLC0415 - optional: unbuilt in a bare checkout

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
    candidates = [os.path.join(PKG_DIR, LIBRARY_NAME)]
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
    with lock:
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
