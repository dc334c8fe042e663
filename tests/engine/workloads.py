"""The engine tests' shared workloads and spec (one place, so modules can share engine runs)."""

from __future__ import annotations

import random

BUDGET = 4_000_000  # kv_cache_memory_bytes: small enough that capacity decides the schedule
rng = random.Random(0)
SHORT = {"prompts": [[rng.randrange(3, 500) for _ in range(rng.randint(5, 40))] for _ in range(24)], "max_tokens": 16}
LONG = {"prompts": [[rng.randrange(3, 500) for _ in range(n)] for n in (300, 450, 520, 600)], "max_tokens": 8}


def spec(model_dir: str, dtype: str, **engine) -> dict:
    return {
        "model": model_dir,
        "engine": {"dtype": dtype, "kv_cache_memory_bytes": BUDGET, **engine},
        "workloads": [SHORT, LONG],
    }
