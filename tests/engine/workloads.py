"""The engine tests' shared workloads and spec (one place, so modules can share engine runs)."""

from __future__ import annotations

import random

BUDGET = 4_000_000  # kv_cache_memory_bytes: small enough that capacity decides the schedule
rng = random.Random(0)
SHORT = {"prompts": [[rng.randrange(3, 500) for _ in range(rng.randint(5, 40))] for _ in range(24)], "max_tokens": 16}
LONG = {"prompts": [[rng.randrange(3, 500) for _ in range(n)] for n in (300, 450, 520, 600)], "max_tokens": 8}


# Prefix caching on vs off (test_engine_prefix_caching_capacity.py, tools/bench_engine.py): 24 prompts of
# 5-900 tokens under a budget where they compete, then repeated prompts for the hit rate.
MIXED_BUDGET = 3_000_000
rng = random.Random(7)
MIXED = {"prompts": [[rng.randrange(3, 500) for _ in range(rng.randint(5, 900))] for _ in range(24)], "max_tokens": 8}
rng = random.Random(1)
REPEATED = {"prompts": [[rng.randrange(3, 500) for _ in range(n)] for n in (40, 70, 100, 130, 170, 200)], "max_tokens": 8}


def caching_spec(model_dir: str, dtype: str, caching: bool, workloads: list) -> dict:
    """max_model_len 1024; GDN's state in bfloat16 on any CPU (cpu_platform: an AVX512-BF16 CPU keeps
    "auto" in float32); the engine core in the test's process, so step counts do not depend on how fast the
    prompts reach it (run_engine.py ``in_process_core``)."""
    engine = {"dtype": dtype, "kv_cache_memory_bytes": MIXED_BUDGET, "max_model_len": 1024,
              "enable_prefix_caching": caching}
    if dtype == "bfloat16":
        engine["mamba_ssm_cache_dtype"] = "bfloat16"
    return {"model": model_dir, "engine": engine, "workloads": workloads, "in_process_core": True}


def spec(model_dir: str, dtype: str, **engine) -> dict:
    return {
        "model": model_dir,
        "engine": {"dtype": dtype, "kv_cache_memory_bytes": BUDGET, **engine},
        "workloads": [SHORT, LONG],
    }


def natural_plan(model_dir: str, pp: int = 1, budget: int = BUDGET, dtype: str = "float32", tp: int = 1,
                 prefix_caching: bool = False, mamba_ssm_cache_dtype: str = "auto"):
    """The trace's natural plan (hybrid_alloc.planner) for the engine's settings: the CPU backend,
    max_model_len 1024 (run_engine.py), ``--dtype``, ``--tp``, ``budget`` on every stage; prefix caching
    off ("none" mode) unless asked; k above stock's counts where one is (as the trace and the engine core)."""
    from hybrid_alloc.models import load_layout
    from hybrid_alloc.planner.comparison import stock_floor
    from hybrid_alloc.planner.hardware import get_hardware
    from hybrid_alloc.planner.natural import plan_natural
    from hybrid_alloc.planner.settings import Settings
    from hybrid_alloc.planner.stock import plan_stock

    settings = Settings(
        hardware="cpu", vllm_version="0.32", pp=pp, tp=tp, kv_cache_memory=budget, max_model_len=1024,
        prefix_caching=prefix_caching, mamba_ssm_cache_dtype=mamba_ssm_cache_dtype,
    )
    layout = load_layout(model_dir, tp=tp, dtype=dtype, mamba_ssm_cache_dtype=mamba_ssm_cache_dtype)
    budgets = [budget] * pp
    floor = stock_floor(plan_stock(layout, settings, budgets), settings, 1024)
    return plan_natural(layout, settings, budgets, get_hardware("cpu"), stock_floor=floor)
