"""When the natural layout cannot keep vLLM's semantics, the plugin leaves vLLM stock: the conditions.

``config_reason`` is evaluated identically in the engine core and in every worker (same VllmConfig), so
both sides agree before any spec exists; ``spec_reason`` is evaluated by the engine core on the workers'
specs. Each returns None (natural layout applies) or a one-line reason.
"""

from __future__ import annotations

from hybrid_alloc import vllm_versions

from . import log


def config_reason(vllm_config) -> str | None:
    model = vllm_config.model_config
    cache = vllm_config.cache_config
    parallel = vllm_config.parallel_config
    if model is None:
        return "no model config"
    mamba_cache_mode = getattr(cache, "mamba_cache_mode", "none")

    checks = (
        (not model.is_hybrid, "the model has no state layers alongside attention (nothing to do)"),
        (
            cache.enable_prefix_caching and mamba_cache_mode != "align",
            f"prefix caching in mamba cache mode {mamba_cache_mode!r}: only 'align' is implemented",
        ),
        (
            cache.enable_prefix_caching and not vllm_versions.running().align_mode,
            "prefix caching ('align' mode) on natural pages is not verified on this vLLM release "
            "(pass --no-enable-prefix-caching for natural pages)",
        ),
        (vllm_config.kv_transfer_config is not None, "a KV connector is configured"),
        (model.enable_sleep_mode, "sleep mode (cumem allocator) is on"),
        (parallel.decode_context_parallel_size > 1, "decode context parallel is on"),
        (model.is_encoder_decoder, "the model is encoder-decoder"),
        (model.use_mla, "the model uses MLA attention"),
        (vllm_config.num_speculative_tokens > 0, "speculative decoding is on"),
        (model.original_max_model_len == -1, "max_model_len=-1 (auto-fit) is on"),
        (bool(cache.kv_cache_dtype_skip_layers), "kv_cache_dtype_skip_layers is set"),
        (vllm_config.scheduler_config.disable_hybrid_kv_cache_manager, "the hybrid KV cache manager is disabled"),
        (vllm_config.attention_config.hisparse_config is not None, "HiSparse is on"),
    )
    return next((reason for failed, reason in checks if failed), None)


def spec_reason(kv_cache_specs: list[dict], layout) -> str | None:
    """``kv_cache_specs``: one {layer: KVCacheSpec} per worker, as the engine core collects them."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec  # lazy: vllm

    specs = [spec for worker in kv_cache_specs for spec in worker.values()]
    unknown = sorted({type(s).__name__ for s in specs if type(s) not in (FullAttentionSpec, MambaSpec)})
    if unknown:
        return f"layer spec(s) the plugin does not know: {', '.join(unknown)}"
    attention = [s for s in specs if isinstance(s, FullAttentionSpec)]
    if any(s.sliding_window or s.attention_chunk_size or s.page_size_padded for s in attention):
        return "an attention layer has a sliding window, chunked attention or a padded page"
    if not any(isinstance(s, MambaSpec) for s in specs):
        return "no state layers (nothing to do)"
    if any(s.page_size_padded is not None for s in specs if isinstance(s, MambaSpec)):
        return "state pages are padded (the workers kept vLLM's stock block size)"
    if len(set(attention)) != 1:
        return "attention layers differ in their spec"
    if any(not any(isinstance(s, FullAttentionSpec) for s in worker.values()) for worker in kv_cache_specs):
        return "a pipeline stage has no attention layer (state-only stages are not implemented yet)"
    if not (layout.is_layer_compact and layout.is_block_compact):
        return f"KV cache layout {layout.name} is not layer-outermost with contiguous pages"
    return None


def stock(reason: str) -> None:
    """Log, once per engine (all processes of it), that vLLM stays stock and why."""
    log.once(f"hybrid-alloc: leaving vLLM stock: {reason}")
