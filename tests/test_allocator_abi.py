"""The exact C ABI of libhybrid_alloc.so, driven through ctypes as PyTorch drives it.

PyTorch's CUDAPluggableAllocator calls ``void* alloc(ssize_t size, int device, cudaStream_t stream)`` and
``void free(void* ptr, ssize_t size, int device, cudaStream_t stream)``: the argtypes below are those.
Runs on the host backend (no GPU). The allocator state is per process and shared by every test here, so
each test charges its own tag and checks that tag's counters (exact) or deltas of the device totals.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading

import pytest

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

from hybrid_alloc import allocator  # noqa: E402

TAG_MAX = 32
MiB = 1 << 20


class Counter(ctypes.Structure):
    _fields_ = [
        ("current", ctypes.c_uint64),
        ("peak", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64),
        ("alloc_count", ctypes.c_uint64),
        ("free_count", ctypes.c_uint64),
    ]


class Stats(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("struct_size", ctypes.c_uint32),
        ("total", Counter),
        ("arena", Counter),
        ("caching", Counter),
        ("arena_reserved_bytes", ctypes.c_uint64),
        ("num_ooms", ctypes.c_uint64),
        ("num_invalid_frees", ctypes.c_uint64),
        ("num_segments", ctypes.c_uint64),
        ("pending_free_bytes", ctypes.c_uint64),
        ("limit_bytes", ctypes.c_uint64),
    ]


class SlabInfo(ctypes.Structure):
    _fields_ = [
        ("ptr", ctypes.c_void_p),
        ("size", ctypes.c_uint64),
        ("carved", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("name", ctypes.c_char * 64),
        ("tag", ctypes.c_char * TAG_MAX),
    ]


def _bind(path: str) -> ctypes.CDLL:
    h = ctypes.CDLL(path)
    vp, i, u64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t
    sig = {
        # the two calls PyTorch makes, with PyTorch's argument types
        "hybrid_alloc_malloc": ([ctypes.c_ssize_t, i, vp], vp),
        "hybrid_alloc_free": ([vp, ctypes.c_ssize_t, i, vp], None),
        # the optional hooks
        "hybrid_alloc_init": ([i], None),
        "hybrid_alloc_empty_cache": ([], None),
        "hybrid_alloc_set_memory_fraction": ([ctypes.c_double, i], None),
        "hybrid_alloc_record_stream": ([vp, vp], None),
        "hybrid_alloc_begin_capture": ([i, u64, vp], None),
        "hybrid_alloc_end_capture": ([i, u64], None),
        "hybrid_alloc_release_pool": ([i, u64], None),
        # arena, tags, stats, trace, config
        "hybrid_alloc_arena_reserve": ([i, sz], i),
        "hybrid_alloc_slab_alloc": ([i, sz, ctypes.c_char_p, ctypes.c_char_p], vp),
        "hybrid_alloc_slab_free": ([vp], i),
        "hybrid_alloc_get_slab": ([i, i, ctypes.POINTER(SlabInfo)], i),
        "hybrid_alloc_set_tag": ([ctypes.c_char_p], i),
        "hybrid_alloc_push_tag": ([ctypes.c_char_p], i),
        "hybrid_alloc_pop_tag": ([], i),
        "hybrid_alloc_current_tag": ([], ctypes.c_char_p),
        "hybrid_alloc_get_stats": ([i, ctypes.POINTER(Stats)], i),
        "hybrid_alloc_get_tag_stats": ([i, i, ctypes.c_char_p, sz, ctypes.POINTER(Counter)], i),
        "hybrid_alloc_reset_peak_stats": ([i], None),
        "hybrid_alloc_trace_dump": ([ctypes.c_char_p], ctypes.c_int64),
        "hybrid_alloc_trace_enable": ([i, sz], None),
        "hybrid_alloc_trace_clear": ([], None),
        "hybrid_alloc_trace_dropped": ([], u64),
        "hybrid_alloc_configure": ([ctypes.c_char_p, ctypes.c_char_p], i),
        "hybrid_alloc_last_error": ([], ctypes.c_char_p),
        "hybrid_alloc_abi_version": ([], i),
        "hybrid_alloc_backend_name": ([], ctypes.c_char_p),
        "hybrid_alloc_host_stream_hold": ([vp], i),
        "hybrid_alloc_host_stream_progress": ([vp], i),
        "hybrid_alloc_host_stream_release": ([vp], i),
    }
    for name, (args, res) in sig.items():
        f = getattr(h, name)
        f.argtypes = args
        f.restype = res
    return h


@pytest.fixture(scope="module")
def L() -> ctypes.CDLL:
    return _bind(allocator.library_path())


def err(L) -> str:
    return (L.hybrid_alloc_last_error() or b"").decode()


def stats(L, device: int = 0) -> Stats:
    s = Stats(version=1, struct_size=ctypes.sizeof(Stats))
    assert L.hybrid_alloc_get_stats(device, ctypes.byref(s)) == 0, err(L)
    return s


def tag_counters(L, device: int = 0) -> dict[str, Counter]:
    n = L.hybrid_alloc_get_tag_stats(device, 0, None, 0, None)
    assert n >= 0, err(L)
    out = {}
    for k in range(n):
        buf = ctypes.create_string_buffer(TAG_MAX)
        c = Counter()
        assert L.hybrid_alloc_get_tag_stats(device, k, buf, TAG_MAX, ctypes.byref(c)) == n
        out[buf.value.decode()] = c
    return out


class tagged:
    """push_tag/pop_tag through the ABI (tags are thread-local)."""

    def __init__(self, L, tag: str):
        self.L, self.tag = L, tag.encode()

    def __enter__(self):
        assert self.L.hybrid_alloc_push_tag(self.tag) == 0, err(self.L)

    def __exit__(self, *exc):
        assert self.L.hybrid_alloc_pop_tag() == 0, err(self.L)


def test_identity(L):
    assert L.hybrid_alloc_abi_version() == 1
    assert L.hybrid_alloc_backend_name() == b"host"
    assert os.path.realpath(allocator.library_path()).endswith("libhybrid_alloc.so")


def test_only_prefixed_symbols_exported():
    out = subprocess.run(
        ["nm", "-D", "--defined-only", allocator.library_path()], capture_output=True, text=True, check=True
    ).stdout
    names = [ln.split()[-1] for ln in out.splitlines() if ln.strip() and ln.split()[-2] in "TtDdBbRrVWiu"]
    bad = [n for n in names if not n.startswith("hybrid_alloc_")]
    assert not bad, f"non-prefixed exports: {bad[:20]}"
    assert "hybrid_alloc_malloc" in names and "hybrid_alloc_free" in names


def test_malloc_free_memory_is_usable_and_counted_exactly(L):
    with tagged(L, "abi_basic"):
        sizes = [1, 511, 512, 4096, 1000000, 3 * MiB + 7]
        ptrs = []
        for i, n in enumerate(sizes):
            p = L.hybrid_alloc_malloc(n, 0, ctypes.c_void_p(i % 2))
            assert p, err(L)
            ctypes.memset(p, 0xAB, n)
            ptrs.append((p, n, i % 2))
        c = tag_counters(L)["abi_basic"]
        assert (c.current, c.peak, c.alloc_count, c.free_count) == (sum(sizes), sum(sizes), len(sizes), 0)
        assert c.reserved >= sum(sizes)
        for p, n, s in ptrs:
            assert ctypes.string_at(p, 1) == b"\xab" and ctypes.string_at(p + n - 1, 1) == b"\xab"
            L.hybrid_alloc_free(p, n, 0, ctypes.c_void_p(s))
    c = tag_counters(L)["abi_basic"]
    assert (c.current, c.peak, c.alloc_count, c.free_count) == (0, sum(sizes), len(sizes), len(sizes))


def test_zero_negative_and_null(L):
    before = stats(L)
    assert L.hybrid_alloc_malloc(0, 0, None) is None  # size 0: NULL without error
    assert L.hybrid_alloc_malloc(-5, 0, None) is None
    assert "-5" in err(L) or "negative" in err(L).lower() or "size" in err(L).lower()
    L.hybrid_alloc_free(None, 0, 0, None)  # no-op
    after = stats(L)
    assert after.total.alloc_count == before.total.alloc_count
    assert after.num_invalid_frees == before.num_invalid_frees


def test_invalid_free_is_recorded_not_fatal(L):
    before = stats(L).num_invalid_frees
    junk = ctypes.create_string_buffer(64)
    L.hybrid_alloc_free(ctypes.addressof(junk), 64, 0, None)
    assert stats(L).num_invalid_frees == before + 1
    assert err(L)
    # double free of a real block
    with tagged(L, "abi_dfree"):
        p = L.hybrid_alloc_malloc(4096, 0, None)
    L.hybrid_alloc_free(p, 4096, 0, None)
    L.hybrid_alloc_free(p, 4096, 0, None)
    assert stats(L).num_invalid_frees == before + 2
    assert tag_counters(L)["abi_dfree"].free_count == 1


def test_exhaustion_returns_null_naming_size_and_tag(L):
    huge = 1 << 47  # 128 TiB: no host can back it
    with tagged(L, "abi_oom"):
        before = stats(L).num_ooms
        assert L.hybrid_alloc_malloc(huge, 0, None) is None
        e = err(L)
        assert f"({huge} B)" in e and "'abi_oom'" in e and "caching path" in e, e
        assert stats(L).num_ooms == before + 1
        assert L.hybrid_alloc_slab_alloc(0, huge, b"too_big", None) is None
        e = err(L)
        assert f"({huge} B)" in e and "'abi_oom'" in e and "too_big" in e and "arena" in e, e
        assert stats(L).num_ooms == before + 2
    c = tag_counters(L).get("abi_oom")
    assert c is None or (c.current, c.alloc_count) == (0, 0)


def test_device_limit_exhaustion_then_recovery(L):
    assert L.hybrid_alloc_configure(b"device_limit_bytes", str(stats(L).total.reserved + 64 * MiB).encode()) == 0
    try:
        with tagged(L, "abi_limit"):
            p = L.hybrid_alloc_slab_alloc(0, 256 * MiB, b"layer0", b"abi_limit")
            assert p is None
            e = err(L)
            assert "(268435456 B)" in e and "'abi_limit'" in e and "layer0" in e and "device limit" in e, e
    finally:
        assert L.hybrid_alloc_configure(b"device_limit_bytes", b"0") == 0, err(L)
    p = L.hybrid_alloc_slab_alloc(0, 256 * MiB, b"layer0", b"abi_limit")
    assert p, err(L)
    assert L.hybrid_alloc_slab_free(p) == 0


def test_slab_alloc_exact_aligned_and_listed(L):
    sizes = [1000, 3 * MiB + 12345, 256]
    ptrs = [L.hybrid_alloc_slab_alloc(0, n, f"abi_layer{i}".encode(), b"abi_slab") for i, n in enumerate(sizes)]
    assert all(ptrs), err(L)
    assert all(p % 256 == 0 for p in ptrs)
    c = tag_counters(L)["abi_slab"]
    assert c.current == sum(sizes) and c.alloc_count == 3
    n = L.hybrid_alloc_get_slab(0, -1, None)
    infos = []
    for k in range(n):
        si = SlabInfo()
        assert L.hybrid_alloc_get_slab(0, k, ctypes.byref(si)) == n
        infos.append(si)
    mine = {si.ptr: si for si in infos if si.tag == b"abi_slab"}
    assert set(mine) == set(ptrs)
    for i, (p, n_) in enumerate(zip(ptrs, sizes)):
        assert mine[p].size == n_ and mine[p].carved == (n_ + 255) // 256 * 256
        assert mine[p].name == f"abi_layer{i}".encode()
    offs = sorted(si.offset for si in infos)
    assert offs == sorted(set(offs))
    for p in ptrs:
        assert L.hybrid_alloc_slab_free(p) == 0
    assert L.hybrid_alloc_slab_free(ptrs[0]) < 0 and err(L)
    assert tag_counters(L)["abi_slab"].current == 0


def test_arena_tag_routes_malloc_to_slabs(L):
    """hybrid_alloc_malloc under kv_cache (the default arena tag) lands in the arena."""
    before = stats(L)
    with tagged(L, "kv_cache"):
        p = L.hybrid_alloc_malloc(5 * MiB + 3, 0, None)
    assert p, err(L)
    after = stats(L)
    assert after.arena.current - before.arena.current == 5 * MiB + 3
    assert after.caching.current == before.caching.current
    L.hybrid_alloc_free(p, 5 * MiB + 3, 0, None)
    L.hybrid_alloc_empty_cache()  # the free waits for an event on the host stream: processed here or later
    assert stats(L).arena.current == before.arena.current


def test_tags_stack_and_validation(L):
    assert L.hybrid_alloc_current_tag() == b"other"
    assert L.hybrid_alloc_push_tag(b"weights") == 0
    assert L.hybrid_alloc_set_tag(b"activations") == 0
    assert L.hybrid_alloc_current_tag() == b"activations"
    assert L.hybrid_alloc_pop_tag() == 0
    assert L.hybrid_alloc_current_tag() == b"other"
    assert L.hybrid_alloc_pop_tag() < 0 and err(L)
    assert L.hybrid_alloc_push_tag(b"bad tag!") < 0 and "bad tag!" in err(L)
    assert L.hybrid_alloc_push_tag(b"x" * 40) < 0 and err(L)


def test_tags_are_thread_local_and_stats_exact_under_threads(L):
    n_threads, per = 4, 200
    failures = []

    def work(k: int) -> None:
        tag = f"abi_thr{k}".encode()
        if L.hybrid_alloc_push_tag(tag) != 0:
            failures.append(err(L))
            return
        live = []
        for j in range(per):
            n = 512 * (1 + (j * 7 + k) % 13)
            p = L.hybrid_alloc_malloc(n, 0, ctypes.c_void_p(k + 1))
            if not p:
                failures.append(err(L))
                return
            live.append((p, n))
            if j % 3 == 2:
                q, m = live.pop(0)
                L.hybrid_alloc_free(q, m, 0, ctypes.c_void_p(k + 1))
        if L.hybrid_alloc_current_tag() != tag:
            failures.append("tag leaked between threads")
        for q, m in live:
            L.hybrid_alloc_free(q, m, 0, ctypes.c_void_p(k + 1))
        L.hybrid_alloc_pop_tag()

    ts = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not failures, failures
    tc = tag_counters(L)
    for k in range(n_threads):
        c = tc[f"abi_thr{k}"]
        assert (c.current, c.alloc_count, c.free_count) == (0, per, per)


def test_record_stream_defers_reuse_until_event(L):
    """A block used on another stream is not reused before that stream's event completes."""
    A, B = ctypes.c_void_p(0x1A), ctypes.c_void_p(0x1B)
    with tagged(L, "abi_rs"):
        p = L.hybrid_alloc_malloc(8192, 0, A)
        assert p
        L.hybrid_alloc_host_stream_hold(B)
        try:
            L.hybrid_alloc_record_stream(p, B)
            L.hybrid_alloc_free(p, 8192, 0, A)
            assert stats(L).pending_free_bytes >= 8192
            q = L.hybrid_alloc_malloc(8192, 0, A)
            assert q and q != p
            L.hybrid_alloc_free(q, 8192, 0, A)
        finally:
            L.hybrid_alloc_host_stream_release(B)
        # the event completed: the next allocation processes it and may reuse the block
        r = L.hybrid_alloc_malloc(8192, 0, A)
        assert r
        assert stats(L).pending_free_bytes == 0
        L.hybrid_alloc_free(r, 8192, 0, A)


def test_graph_capture_pool_not_recycled_until_release(L):
    S = ctypes.c_void_p(0x5C)
    pool = 77
    L.hybrid_alloc_begin_capture(0, pool, S)
    p = L.hybrid_alloc_malloc(4096, 0, S)
    assert p, err(L)
    assert tag_counters(L)["cudagraph"].current >= 4096  # default tag "other" -> cudagraph
    L.hybrid_alloc_end_capture(0, pool)
    L.hybrid_alloc_free(p, 4096, 0, S)
    q = L.hybrid_alloc_malloc(4096, 0, S)  # general pool: must not get the private block
    assert q and q != p
    L.hybrid_alloc_free(q, 4096, 0, S)
    L.hybrid_alloc_release_pool(0, pool)
    L.hybrid_alloc_release_pool(0, 123456)  # unknown pool: no-op


def test_configure_rejects_bad_values(L):
    assert L.hybrid_alloc_configure(b"alignment", b"3") < 0 and "alignment" in err(L)
    assert L.hybrid_alloc_configure(b"no_such_key", b"1") < 0 and "no_such_key" in err(L)
    assert L.hybrid_alloc_configure(b"arena_fit", b"worst") < 0 and "arena_fit" in err(L)
    assert L.hybrid_alloc_configure(b"alignment", b"256") == 0


def test_hooks_callable(L):
    L.hybrid_alloc_init(1)
    L.hybrid_alloc_set_memory_fraction(1.0, 0)
    L.hybrid_alloc_empty_cache()
    s = stats(L)
    assert s.version == 1 and s.struct_size == ctypes.sizeof(Stats)


def _run_fresh(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_backend_choice_without_driver():
    """auto falls back to host; cuda asked explicitly fails cleanly (NULL + message), never aborts."""
    code = (
        "import ctypes;from hybrid_alloc import allocator as a;L=ctypes.CDLL(a.library_path());"
        "L.hybrid_alloc_backend_name.restype=ctypes.c_char_p;"
        "L.hybrid_alloc_malloc.argtypes=[ctypes.c_ssize_t,ctypes.c_int,ctypes.c_void_p];"
        "L.hybrid_alloc_malloc.restype=ctypes.c_void_p;L.hybrid_alloc_last_error.restype=ctypes.c_char_p;"
        "p=L.hybrid_alloc_malloc(1024,0,None);print(L.hybrid_alloc_backend_name(),bool(p));"
        "print(L.hybrid_alloc_last_error())"
    )
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU driver is present: the fallback is not what happens here")
    r = _run_fresh(code, HYBRID_ALLOC_BACKEND="auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "b'host' True"
    r = _run_fresh(code, HYBRID_ALLOC_BACKEND="cuda")
    assert r.returncode == 0, r.stderr
    assert "False" in r.stdout.splitlines()[0]
    assert "libcuda" in r.stdout or "CUDA" in r.stdout, r.stdout
