"""hybrid_alloc._core (pybind11) and hybrid_alloc.allocator on the host backend, and the one-state rule:
the module, ctypes and PyTorch load the same libhybrid_alloc.so, so what one allocates the others see."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

from hybrid_alloc import allocator  # noqa: E402
from hybrid_alloc.errors import UserError  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def core():
    return allocator.core()


@pytest.fixture(scope="module")
def L():
    h = ctypes.CDLL(allocator.library_path())
    h.hybrid_alloc_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    h.hybrid_alloc_malloc.restype = ctypes.c_void_p
    h.hybrid_alloc_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    h.hybrid_alloc_free.restype = None
    h.hybrid_alloc_slab_free.argtypes = [ctypes.c_void_p]
    h.hybrid_alloc_push_tag.argtypes = [ctypes.c_char_p]
    h.hybrid_alloc_current_tag.restype = ctypes.c_char_p
    return h


def _loaded_copies() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted({ln.split()[-1] for ln in f if ln.rstrip().endswith("libhybrid_alloc.so")})


# ------------------------------------------------------------------------------------------ identity
def test_module_identity(core):
    assert core.abi_version() == core.ABI_VERSION == 1
    assert core.backend_name() == "host"
    assert os.path.realpath(core.library_path()) == allocator.library_path()
    assert core.last_error() == "" or isinstance(core.last_error(), str)


def test_one_library_per_process(core, L):
    # _core linked it (RPATH $ORIGIN), ctypes loaded it by path: one mapping, one state.
    copies = _loaded_copies()
    assert len(copies) == 1, copies
    assert os.path.realpath(copies[0]) == allocator.library_path()


def test_ctypes_allocation_seen_by_module(core, L):
    assert L.hybrid_alloc_push_tag(b"mod_ct") == 0
    try:
        p = L.hybrid_alloc_malloc(123 * 512, 0, None)
    finally:
        core.pop_tag()  # the module pops what ctypes pushed: same thread-local stack
    assert p
    ts = core.tag_stats(0)["mod_ct"]
    assert (ts["current"], ts["alloc_count"]) == (123 * 512, 1)
    L.hybrid_alloc_free(p, 123 * 512, 0, None)
    assert core.tag_stats(0)["mod_ct"]["current"] == 0


def test_module_slab_seen_and_freed_by_ctypes(core, L):
    p = core.slab_alloc(0, 3 * MiB + 5, "layer.7", "mod_slab")
    assert p % 256 == 0
    (info,) = [s for s in core.slabs(0) if s["ptr"] == p]
    assert info["offset"] % 256 == 0
    assert {k: v for k, v in info.items() if k != "offset"} == {
        "ptr": p, "size": 3 * MiB + 5, "carved": 3 * MiB + 256, "name": "layer.7", "tag": "mod_slab"
    }
    assert L.hybrid_alloc_slab_free(ctypes.c_void_p(p)) == 0
    assert all(s["ptr"] != p for s in core.slabs(0))
    assert core.tag_stats(0)["mod_slab"]["current"] == 0


def test_stats_shapes_and_deltas(core):
    s0 = core.stats(0)
    for k in ("total", "arena", "caching"):
        assert set(s0[k]) == {"current", "peak", "reserved", "alloc_count", "free_count"}
    p = core.malloc(2 * MiB, 0, 0)
    s1 = core.stats(0)
    assert s1["caching"]["current"] - s0["caching"]["current"] == 2 * MiB
    assert s1["total"]["alloc_count"] - s0["total"]["alloc_count"] == 1
    core.free(p, 2 * MiB, 0, 0)
    core.reset_peak_stats(0)
    s2 = core.stats(0)
    assert s2["total"]["peak"] == s2["total"]["current"]
    with pytest.raises(ValueError):
        core.stats(999)


def test_tags(core):
    assert core.current_tag() == "other"
    core.push_tag("weights")
    assert core.current_tag() == "weights"
    core.set_tag("activations")
    assert core.current_tag() == "activations"
    core.pop_tag()
    assert core.current_tag() == "other"
    with pytest.raises(ValueError, match="stack|bottom|pop"):
        core.pop_tag()
    with pytest.raises(ValueError, match="no spaces"):
        core.push_tag("no spaces")
    with allocator.tag("kv_cache"):
        assert allocator.current_tag() == "kv_cache"
    assert allocator.current_tag() == "other"


def test_tag_stats_exact(core):
    sizes = {"mod_exact_a": [1000, 2000, 3 * MiB], "mod_exact_b": [512]}
    live = []
    for tag, ns in sizes.items():
        with allocator.tag(tag):
            live += [(core.malloc(n), n) for n in ns]
    ts = core.tag_stats(0)
    for tag, ns in sizes.items():
        assert ts[tag]["current"] == sum(ns) and ts[tag]["peak"] == sum(ns)
        assert ts[tag]["alloc_count"] == len(ns) and ts[tag]["free_count"] == 0
    for p, n in live:
        core.free(p, n)
    ts = core.tag_stats(0)
    assert all(ts[t]["current"] == 0 and ts[t]["free_count"] == len(ns) for t, ns in sizes.items())


def test_configure(core):
    with pytest.raises(ValueError, match="alignment"):
        core.configure("alignment", "100")
    with pytest.raises(UserError, match="alignment"):
        allocator.configure(alignment=100)
    allocator.configure(alignment=512)
    try:
        p = core.slab_alloc(0, 1000, "al", "mod_align")
        assert p % 512 == 0
        core.slab_free(p)
    finally:
        allocator.configure(alignment=256)


def test_slab_exhaustion_errors(core):
    huge = 1 << 47
    with pytest.raises(MemoryError, match=rf"\({huge} B\).*'mod_oom'"):
        core.slab_alloc(0, huge, "big", "mod_oom")
    with pytest.raises(allocator.AllocatorOOM, match="mod_oom") as ei:
        allocator.slab_alloc(huge, "big", "mod_oom")
    assert isinstance(ei.value, MemoryError) and isinstance(ei.value, UserError)
    with pytest.raises(ValueError):
        core.slab_free(12345)
    with pytest.raises(allocator.AllocatorError):
        allocator.slab_free(12345)
    with pytest.raises(allocator.AllocatorError, match="> 0"):
        allocator.slab_alloc(0)


def test_trace_roundtrip(core, tmp_path):
    core.trace_enable(True, 1024)
    core.trace_clear()
    try:
        with allocator.tag("mod_trace"):
            p = core.malloc(4096, 0, 0x77)
            s = core.slab_alloc(0, 777, "tr", "")
        core.free(p, 4096, 0, 0x77)
        core.slab_free(s)
        tr = allocator.trace()
        path = tmp_path / "t.jsonl"
        n = core.trace_dump(str(path))
    finally:
        core.trace_enable(False, 0)
    assert tr.header["type"] == "header" and tr.header["backend"] == "host" and tr.header["version"] == 1
    mine = [e for e in tr if e["tag"] == "mod_trace" and not e["op"].startswith("segment_")]
    assert [(e["op"], e["size"]) for e in mine] == [("alloc", 4096), ("slab_alloc", 777), ("free", 4096), ("slab_free", 777)]
    assert mine[0]["stream"] == "0x77" and int(mine[0]["ptr"], 16) == p
    assert int(mine[1]["ptr"], 16) == s
    ts = [e["t_ns"] for e in tr]
    assert ts == sorted(ts)
    lines = path.read_text().splitlines()
    assert len(lines) == n + 1 and json.loads(lines[0])["events"] == n
    assert core.trace_dropped() == 0


def test_host_tensor_zero_copy_and_lifetime(core):
    torch = pytest.importorskip("torch")
    before = core.tag_stats(0).get("mod_host", {}).get("current", 0)
    t = allocator.host_tensor(4096, name="kv.layer0", tag="mod_host", dtype=torch.float32)
    assert t.dtype == torch.float32 and t.numel() == 1024 and t.device.type == "cpu"
    ptr = t.data_ptr()
    assert [s for s in core.slabs(0) if s["ptr"] == ptr][0]["name"] == "kv.layer0"
    assert core.tag_stats(0)["mod_host"]["current"] == before + 4096
    # write through the tensor, read through the pointer (same bytes, no copy)
    t.fill_(0)
    t[3] = 1.5
    assert ctypes.c_float.from_address(ptr + 12).value == 1.5
    # write through the pointer, read through the tensor
    ctypes.c_float.from_address(ptr + 40).value = -2.25
    assert t[10].item() == -2.25
    view = t.view(32, 32)[5]
    del t
    gc.collect()
    assert any(s["ptr"] == ptr for s in core.slabs(0)), "a view keeps the slab alive"
    assert view.data_ptr() == ptr + 5 * 32 * 4
    del view
    gc.collect()
    assert all(s["ptr"] != ptr for s in core.slabs(0)), "slab freed with its last tensor"
    assert core.tag_stats(0)["mod_host"]["current"] == before


def test_host_tensor_rejects_bad_sizes():
    torch = pytest.importorskip("torch")
    with pytest.raises(allocator.AllocatorError, match="multiple of 4"):
        allocator.host_tensor(6, dtype=torch.float32)
    with pytest.raises(allocator.AllocatorError):
        allocator.host_tensor(0)
    with pytest.raises(allocator.AllocatorOOM, match="mod_host_oom"):
        allocator.host_tensor(1 << 47, tag="mod_host_oom")


def test_python_api_wrappers(core):
    assert allocator.backend_name() == "host"
    assert allocator.stats()["total"]["alloc_count"] >= 0
    assert isinstance(allocator.tag_stats(), dict)
    assert isinstance(allocator.slabs(), list)
    allocator.empty_cache()
    allocator.reset_peak_stats()
    with pytest.raises(allocator.AllocatorError):
        allocator.stats(999)
    with pytest.raises(allocator.AllocatorError):
        allocator.pop_tag()


def _cpu_only_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return not getattr(torch.version, "cuda", None)


@pytest.mark.skipif(not _cpu_only_torch(), reason="checks the refusal on CPU-only PyTorch")
def test_cuda_paths_refuse_cleanly_on_cpu_torch():
    for fn in (allocator.pluggable, allocator.mempool, allocator.install, allocator.build_bridge):
        with pytest.raises(allocator.AllocatorError, match="without CUDA"):
            fn()
    with pytest.raises(allocator.AllocatorError, match="without CUDA"):
        with allocator.use("kv_cache"):
            pass
    assert allocator.live_hooks() == ()


def test_missing_library_message(tmp_path):
    """A package without the built library: one clear line, no ctypes traceback."""
    pkg = tmp_path / "hybrid_alloc"
    pkg.mkdir()
    src = os.path.dirname(os.path.dirname(allocator.__file__))
    (pkg / "allocator").mkdir()
    for f in ("__init__.py", "errors.py", "allocator/__init__.py", "allocator/library.py", "allocator/control.py",
              "allocator/pytorch.py"):
        (pkg / f).write_text(open(os.path.join(src, f)).read())
    code = (
        "from hybrid_alloc import allocator as a\n"
        "try:\n    a.library_path()\nexcept a.AllocatorError as e:\n    print('ERR', e)\n"
        "try:\n    a.stats()\nexcept a.AllocatorError as e:\n    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HYBRID_ALLOC_LIBRARY"}
    env["PYTHONPATH"] = str(tmp_path)
    # -S: no site-packages, so an installed hybrid-alloc cannot stand in for the missing build.
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith("ERR libhybrid_alloc.so not found") and "pip install ." in out[0]
    assert out[1].startswith("ERR hybrid_alloc._core is not built")
