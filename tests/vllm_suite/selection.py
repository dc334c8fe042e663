"""The one place naming which of vLLM's own tests the stage runs (paths relative to vLLM's source root),
and which it leaves out, each with its reason. Chosen to run on CPU without weights, tokenizers, a server
or the network, and to fit the stage in under 5 minutes on a 2-core machine (both runs together)."""

SUITE = (
    "tests/v1/core",  # KV-cache planning, utils, config builder, single-type managers, mamba chunk split,
    #                   prefix caching, schedulers, block pool, KV sharing
    "tests/v1/engine/test_kv_cache_group_metadata.py",
)

# path (or node id) -> why it is left out of both runs
DESELECTED = {
    "tests/v1/core/prefix_cache": "starts a vLLM server and loads weights (Qwen3.5-0.8B)",
    "tests/v1/core/test_scheduler_e2e.py": "runs LLM() on model weights",
    "tests/v1/core/test_reset_prefix_cache_e2e.py": "runs LLM() on model weights",
    "tests/v1/core/test_priority_preemption_bug.py": "runs LLM() on model weights",
}
