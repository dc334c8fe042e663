"""GPU cases of the allocator, each run in a FRESH process: `python tests/gpu/gpu_cases.py CASE`.

A fresh process per case because the allocator state (and PyTorch's choice of allocator) is per process
and global mode must be installed before CUDA is initialised. Exit codes: 0 = passed (prints "OK CASE"),
1 = failed (traceback), 3 = PyTorch itself does not support the path (prints "UNSUPPORTED: why").
The pytest wrappers are in test_gpu_allocator.py; tools/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import gc
import os
import sys
import time

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "cuda")

MiB = 1 << 20
GiB = 1 << 30


def _ha():
    from hybrid_alloc import allocator as ha

    assert ha.backend_name() == "cuda", f"backend is {ha.backend_name()!r}: {ha.last_error()}"
    return ha


def _in_slab(ha, ptr: int) -> bool:
    return any(s["ptr"] <= ptr < s["ptr"] + s["size"] for s in ha.slabs())


def _unsupported(msg: str) -> None:
    print(f"UNSUPPORTED: {msg}")
    sys.exit(3)


def case_mempool() -> None:
    """MemPool mode: the KV cache (tag kv_cache) lands in an arena slab; other tensors stay native."""
    import torch

    ha = _ha()
    outside = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
    before = ha.stats()
    with ha.use("kv_cache") as pool:
        kv = torch.zeros(256 * MiB, dtype=torch.uint8, device="cuda")
    assert ha.current_tag() == "other"
    kv.fill_(3)
    torch.cuda.synchronize()
    assert int(kv.sum().item()) == 3 * 256 * MiB
    s = ha.stats()
    assert s["arena"]["current"] - before["arena"]["current"] >= 256 * MiB, s
    assert ha.tag_stats()["kv_cache"]["current"] >= 256 * MiB
    assert _in_slab(ha, kv.data_ptr()), "kv cache is not inside an arena slab"
    assert not _in_slab(ha, outside.data_ptr()), "a tensor outside use() went to the arena"
    torch.cuda.memory_stats()  # PyTorch's own statistics still work in this mode
    assert torch.cuda.memory_allocated() >= 256 * MiB
    print("pool id", pool.id, "arena current", s["arena"]["current"])
    del kv
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    ha.empty_cache()
    print("after del + empty_cache: arena current", ha.stats()["arena"]["current"])


def case_global() -> None:
    """Global mode in a fresh process: every CUDA tensor through the caching path, all hooks live."""
    import torch

    from hybrid_alloc import allocator as ha

    ha.install()
    assert ha.live_hooks() == ha.ALL_HOOKS, ha.live_hooks()
    assert ha.backend_name() == "cuda"
    x = torch.randn(1 << 20, device="cuda")
    y = x * 2 + 1
    torch.cuda.synchronize()
    assert torch.allclose((y - 1) / 2, x)
    s = ha.stats()
    assert s["caching"]["current"] >= 8 * MiB, s
    with ha.tag("weights"):
        w = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
    assert ha.tag_stats()["weights"]["current"] == 3 * MiB
    segs = ha.stats()["num_segments"]
    del x, y, w
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # -> reset hook -> hybrid_alloc_empty_cache
    after = ha.stats()
    assert after["num_segments"] < segs, (segs, after)
    # install() after CUDA init refuses (here: already installed, so it is idempotent)
    assert ha.install() is ha.pluggable()


def case_install_refused() -> None:
    import torch

    from hybrid_alloc import allocator as ha

    torch.zeros(1, device="cuda")
    try:
        ha.install()
    except ha.AllocatorError as e:
        assert "before CUDA is initialised" in str(e), e
        return
    raise AssertionError("install() after CUDA init did not refuse")


def case_record_stream() -> None:
    """Global mode: a block used on a busy side stream is not handed out again before that work ends."""
    import torch

    from hybrid_alloc import allocator as ha

    ha.install()
    side = torch.cuda.Stream()
    x = torch.empty(16 * MiB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keep the side stream busy (~0.1-0.2 s)
        x.add_(1)
    x.record_stream(side)
    ptr = x.data_ptr()
    del x
    gc.collect()
    pending = ha.stats()["pending_free_bytes"]
    z = torch.empty(16 * MiB, dtype=torch.uint8, device="cuda")
    reused_early = z.data_ptr() == ptr
    side.synchronize()
    assert pending >= 16 * MiB, pending
    assert not reused_early, "block reused while the side stream still used it"
    del z
    gc.collect()
    torch.cuda.synchronize()
    w = torch.empty(16 * MiB, dtype=torch.uint8, device="cuda")
    print("reused after the event:", w.data_ptr() == ptr)


def case_graph() -> None:
    """Global mode: CUDA graph capture allocates into a private pool that is not recycled until release."""
    import torch

    from hybrid_alloc import allocator as ha

    ha.install()
    static_in = torch.randn(1 << 20, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _ = static_in * 2 + 1
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            tmp = static_in * 2
            out = tmp + 1
    except RuntimeError as e:
        if "does not yet support" in str(e):
            _unsupported(str(e).splitlines()[0])
        raise
    assert ha.tag_stats().get("cudagraph", {}).get("current", 0) >= 8 * MiB, ha.tag_stats()
    graph_ptrs = {tmp.data_ptr(), out.data_ptr()}
    del tmp
    gc.collect()
    fresh = [torch.empty(1 << 20, device="cuda") for _ in range(4)]
    assert not graph_ptrs & {t.data_ptr() for t in fresh}, "graph pool memory recycled outside the graph"
    static_in.fill_(1.0)
    g.replay()
    torch.cuda.synchronize()
    assert torch.all(out == 3.0)
    live = ha.tag_stats()["cudagraph"]["current"]
    del g, out, fresh
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    print("cudagraph bytes live before/after release:", live, ha.tag_stats()["cudagraph"]["current"])


def _used_bytes() -> tuple[int, str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        return int(pynvml.nvmlDeviceGetMemoryInfo(h).used), "nvml"
    except Exception:  # noqa: BLE001 - no NVML: the driver's own count
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free, "cuMemGetInfo"


def case_nvml_slab() -> None:
    """NVML (or cuMemGetInfo) sees a 1 GiB slab mapped, and its release."""
    import torch

    ha = _ha()
    torch.cuda.init()
    u0, src = _used_bytes()
    p = ha.slab_alloc(GiB, "nvml_probe", "kv_cache")
    time.sleep(0.2)
    u1, _ = _used_bytes()
    ha.slab_free(p)
    ha.empty_cache()
    time.sleep(0.2)
    u2, _ = _used_bytes()
    print(f"{src}: used {u0 / MiB:.0f} -> {u1 / MiB:.0f} (slab) -> {u2 / MiB:.0f} MiB (freed)")
    assert u1 - u0 >= GiB - 8 * MiB, (u0, u1)
    assert u1 - u2 >= GiB - 8 * MiB, (u1, u2)


def case_plugin_kv_buffer() -> None:
    """The vLLM plugin's KV cache buffer on CUDA (``vllm_plugin.tensors._buffer``): a zeroed arena slab
    through the MemPool, charged to ``kv_cache`` to the byte. Needs vLLM importable (the plugin's module)."""
    import torch

    try:
        from hybrid_alloc.vllm_plugin import tensors
    except ImportError as e:
        _unsupported(f"vLLM is not importable here ({e})")
    ha = _ha()
    before = ha.tag_stats().get("kv_cache", {}).get("current", 0)
    size = 192 * MiB + 4096  # not a multiple of PyTorch's 2 MiB segment rounding
    buf, source = tensors._buffer(size, torch.device("cuda", torch.cuda.current_device()))
    assert source == "hybrid-alloc MemPool slab", source
    assert buf.numel() == size and buf.dtype == torch.int8
    assert int(buf.count_nonzero().item()) == 0
    assert _in_slab(ha, buf.data_ptr())
    charged = ha.tag_stats()["kv_cache"]["current"] - before
    print("buffer", size, "charged to kv_cache", charged)
    assert size <= charged < size + 2 * MiB, charged  # PyTorch asks for whole segments (2 MiB rounding)


def case_vllm_global() -> None:
    """A tiny hybrid vLLM engine on CUDA with ``HYBRID_ALLOC=1 HYBRID_ALLOC_MODE=global`` (issue 6), three engines
    in subprocesses (tests/engine/harness.py; the plugin through its entry point): the plugin in mempool mode with
    vLLM's default CUDA graphs (the reference), global mode with CUDA graphs, global mode eager. Global mode must
    install in the worker (its log line, no fail-closed line), size the KV cache from the allocator's statistics
    like mempool mode does (vLLM's profiler, gpu_memory_utilization 0.3, no pinned KV bytes), and give the same
    greedy tokens. The graph run is the CUDA-graph check: capture and replay under the pluggable allocator."""
    try:
        import vllm
    except ImportError as e:
        _unsupported(f"vLLM is not importable here ({e})")
    import random
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
    import harness

    from hybrid_alloc.vllm_plugin import global_mode

    rng = random.Random(6)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(8, 40))] for _ in range(4)]
    workload = {"prompts": prompts, "max_tokens": 8}
    with tempfile.TemporaryDirectory(prefix="hybrid-alloc-gpu-") as root:
        model = harness.build_model("mamba2", os.path.join(root, "models"))
        engine = {
            "dtype": "bfloat16",
            "enforce_eager": False,
            "kv_cache_memory_bytes": None,
            "gpu_memory_utilization": 0.3,
            "max_num_seqs": 8,
        }

        def start(mode: str, **extra):
            spec = {"model": model, "engine": {**engine, **extra}, "workloads": [workload]}
            env = {"HYBRID_ALLOC_MODE": mode, "HYBRID_ALLOC_BACKEND": "cuda"}
            try:
                return harness.run(root, spec, plugin=True, env=env, timeout=420)
            except AssertionError as e:
                raise AssertionError(f"vLLM {vllm.__version__}, mode {mode}, {extra or 'CUDA graphs'}: {e}") from None

        reference = start("mempool")
        eager = start("global", enforce_eager=True)
        graphs = start("global")
    for label, r in (("reference", reference), ("global eager", eager), ("global graphs", graphs)):
        print(label, r.cache_config_info, r.workloads[0]["tokens"])
        print("\n".join("  " + line for line in r.log))
    for r in (eager, graphs):
        assert r.lines("global mode unavailable") == [], r.log
        assert len(r.lines("hybrid-alloc: global mode: this worker's CUDA allocator is hybrid-alloc")) == 1, r.log
    assert reference.lines("global mode") == [], reference.log
    assert global_mode.GRAPHS_UNVERIFIED in graphs.log and global_mode.GRAPHS_UNVERIFIED not in eager.log
    assert [len(t) for t in graphs.workloads[0]["tokens"]] == [workload["max_tokens"]] * len(workload["prompts"])
    assert graphs.workloads[0]["tokens"] == reference.workloads[0]["tokens"], "global mode + CUDA graphs changed tokens"
    blocks = {label: int(r.cache_config_info.get("num_gpu_blocks") or 0) for label, r in
              (("reference", reference), ("global eager", eager), ("global graphs", graphs))}
    print("num_gpu_blocks:", blocks)
    assert blocks["global graphs"] > 0 and blocks["global eager"] > 0, blocks
    # the profiler read the allocator's statistics: the KV budget is within 10% of mempool mode's
    assert abs(blocks["global graphs"] - blocks["reference"]) <= 0.1 * blocks["reference"], blocks
    print("CUDA graph capture under global mode: capture, replay and tokens OK")


def case_vllm_prefix_caching() -> None:
    """Prefix caching ("align" mode) under the plugin on CUDA (issue 12; on vLLM 0.33 only tested in-process
    before): the tiny Mamba2 hybrid in float32 (its layers export in-prefill checkpoints on GPUs) and the GDN
    hybrid in bfloat16, each prompt set twice with prefix caching on and once with it off, prefilled in chunks
    of 128 tokens (Mamba2's layers export on every chunk; all but a prompt's last into the null block, which
    ``vllm_plugin.mamba2_prefill_checkpoint`` must keep from writing: its state page overlaps attention
    blocks under the natural layout; on CPU that showed as outputs differing from caching off). Checked: no
    fail-closed line, vLLM's align mode on natural pages, the second pass hits (repeated prompts), Mamba2's
    tokens identical to caching off (float32), GDN's equal to caching off on the first pass (nothing is hit
    there, so nothing can drift)."""
    try:
        import vllm
    except ImportError as e:
        _unsupported(f"vLLM is not importable here ({e})")
    import random
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
    import harness

    rng = random.Random(9)
    shared = [rng.randrange(3, 500) for _ in range(300)]
    prompts = [shared[: rng.randint(100, 300)] + [rng.randrange(3, 500) for _ in range(rng.randint(5, 200))]
               for _ in range(6)]
    workload = {"prompts": prompts, "max_tokens": 8}
    with tempfile.TemporaryDirectory(prefix="hybrid-alloc-gpu-") as root:
        for kind, dtype in (("mamba2", "float32"), ("gdn", "bfloat16")):
            model = harness.build_model(kind, os.path.join(root, "models"))

            def start(caching: bool):
                engine = {"dtype": dtype, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20,
                          "max_num_seqs": 8, "max_num_batched_tokens": 128, "enable_prefix_caching": caching}
                spec = {"model": model, "engine": engine, "workloads": [workload, workload]}
                try:
                    return harness.run(root, spec, plugin=True, env={"HYBRID_ALLOC_BACKEND": "cuda"}, timeout=300)
                except AssertionError as e:
                    raise AssertionError(f"vLLM {vllm.__version__}, {kind}, caching {caching}: {e}") from None

            on, off = start(True), start(False)
            print(kind, "caching on:", on.cache_config_info, [w["prefix_hits"] for w in on.workloads])
            print("\n".join("  " + line for line in on.log))
            assert on.lines("leaving vLLM stock") == [], on.log
            assert on.cache_config_info.get("mamba_cache_mode") == "align", on.cache_config_info
            assert on.workloads[1]["prefix_hits"] > 0, "the repeated prompts hit nothing"
            passes = (0, 1) if dtype == "float32" else (0,)
            for i in passes:
                assert on.workloads[i]["tokens"] == off.workloads[i]["tokens"], f"{kind}: pass {i} differs from caching off"
    print("prefix caching on natural pages: align mode, hits, tokens OK")


def case_vllm_ray_pp2() -> None:
    """PP=2 over two GPUs with vLLM's Ray executor (issue 15), stock then the plugin, on a Ray cluster started
    without HYBRID_ALLOC (``ray start --head``, as on a node the user did not prepare; ``$RAY_ADDRESS``): the
    workers get ``HYBRID_ALLOC``, the report folder, the backend and ``PYTHONPATH`` (the entry point) only through
    the driver's ``runtime_env`` env_vars (run_engine.py's ``ray_env_vars``). Every stage's worker must load the
    plugin (its startup report), allocate the engine core's plan for its stage, and the tokens must be stock's."""
    try:
        import ray  # noqa: F401
        import torch
        import vllm  # noqa: F401
    except ImportError as e:
        _unsupported(f"vLLM or Ray is not importable here ({e})")
    if torch.cuda.device_count() < 2:
        _unsupported(f"{torch.cuda.device_count()} GPU(s): PP=2 needs two")
    if not os.environ.get("RAY_ADDRESS"):
        _unsupported("no Ray cluster: set RAY_ADDRESS (tools/gpu_check.sh starts one)")
    import random
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
    import harness

    from hybrid_alloc.validation.reconcile import load_report

    rng = random.Random(15)
    workload = {"prompts": [[rng.randrange(3, 500) for _ in range(n)] for n in (20, 40, 70, 130)], "max_tokens": 8}
    with tempfile.TemporaryDirectory(prefix="hybrid-alloc-gpu-") as root:
        model = harness.build_model("mamba2", os.path.join(root, "models"))
        spec = {
            "model": model,
            "engine": {"dtype": "bfloat16", "kv_cache_memory_bytes": 64 * MiB, "pipeline_parallel_size": 2,
                       "distributed_executor_backend": "ray", "max_num_seqs": 8},
            "workloads": [workload],
            "ray_env_vars": ["HYBRID_ALLOC", "HYBRID_ALLOC_REPORT_DIR", "HYBRID_ALLOC_BACKEND", "PYTHONPATH"],
        }
        env = {"HYBRID_ALLOC_BACKEND": "cuda"}
        stock = harness.run(root, spec, plugin=False, env=env, timeout=420)
        plugin = harness.run(root, spec, plugin=True, env=env, timeout=420)
        print("\n".join("  " + line for line in plugin.log))
        assert plugin.lines("leaving vLLM stock") == [], plugin.log
        assert plugin.workloads[0]["tokens"] == stock.workloads[0]["tokens"], "the plugin changed tokens under Ray PP=2"
        names = sorted(os.listdir(plugin.report_dir)) if os.path.isdir(plugin.report_dir) else []
        assert [n.split("-pid")[0] for n in names] == ["worker-pp0-tp0", "worker-pp1-tp0"], names
        for stage, name in enumerate(names):
            report = load_report(os.path.join(plugin.report_dir, name))
            (line,) = plugin.lines(f"hybrid-alloc: stage {stage}: ")  # the engine core's plan for this stage
            planned = int(line.split(": ")[2].split()[0])
            assert report.plan_tags == report.allocator_tags == {"kv_cache": planned}, (name, report.allocator_tags, line)
            print(f"stage {stage}: {planned} bytes of KV cache planned and allocated ({name})")


CASES = {n[len("case_"):]: f for n, f in globals().items() if n.startswith("case_")}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        sys.exit(f"usage: gpu_cases.py {{{'|'.join(CASES)}}}")
    CASES[sys.argv[1]]()
    print(f"OK {sys.argv[1]}")
