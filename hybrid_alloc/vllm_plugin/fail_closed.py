"""When the natural layout cannot keep vLLM's semantics, the plugin leaves vLLM stock: the conditions.

``config_reason`` is evaluated identically in the engine core and in every worker (same VllmConfig), so
both sides agree before any spec exists; ``spec_reason`` is evaluated by the engine core on the workers'
specs. Each returns None (natural layout applies) or a one-line reason.

Both are total and lazy (vLLM's own tests call the patched functions with stub and partial configs): the
conditions are tested in order, cheapest and most certain first (no model, no state layers), each read
defensively (a missing field reads as its stock default) and only once every earlier one has passed, so
nothing is read that stock would not read for that input (the KV cache layout comes last); an exception
while deciding is itself a reason to stay stock, logged once naming it (``decide``).
"""

from __future__ import annotations

from hybrid_alloc import vllm_versions

from . import log


def _get(obj, *path, default=None):
    """``obj.a.b...`` or ``default`` where any step is missing or None (stub and partial configs)."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


def _spec_tokens(vllm_config) -> int:
    """``VllmConfig.num_speculative_tokens``; where a partial config cannot say, any speculative config
    counts as speculative decoding (stay stock)."""
    try:
        return vllm_config.num_speculative_tokens or 0
    except AttributeError:
        return 0 if _get(vllm_config, "speculative_config") is None else 1


def _config_checks(vllm_config):
    """(failed?, reason) pairs in the order they are tested: cheapest and most certain first (no model,
    no state layers), each a thunk (a reason may be one too) so that nothing after the first failure is read."""
    model = lambda *path, default=None: _get(vllm_config, "model_config", *path, default=default)  # noqa: E731
    cache = lambda *path, default=None: _get(vllm_config, "cache_config", *path, default=default)  # noqa: E731
    caching = lambda: bool(cache("enable_prefix_caching", default=False))  # noqa: E731
    mode = lambda: cache("mamba_cache_mode", default="none")  # noqa: E731
    return (
        (lambda: _get(vllm_config, "model_config") is None, "no model config"),
        (lambda: not model("is_hybrid", default=False), "the model has no state layers alongside attention (nothing to do)"),
        (
            lambda: caching() and mode() != "align",
            lambda: f"prefix caching in mamba cache mode {mode()!r}: only 'align' is implemented",
        ),
        (
            lambda: caching() and not vllm_versions.running().align_mode,
            "prefix caching ('align' mode) on natural pages is not verified on this vLLM release "
            "(pass --no-enable-prefix-caching for natural pages)",
        ),
        (lambda: _get(vllm_config, "kv_transfer_config") is not None, "a KV connector is configured"),
        (lambda: bool(model("enable_sleep_mode", default=False)), "sleep mode (cumem allocator) is on"),
        (lambda: _get(vllm_config, "parallel_config", "decode_context_parallel_size", default=1) > 1, "decode context parallel is on"),
        (lambda: bool(model("is_encoder_decoder", default=False)), "the model is encoder-decoder"),
        (lambda: bool(model("use_mla", default=False)), "the model uses MLA attention"),
        (lambda: _spec_tokens(vllm_config) > 0, "speculative decoding is on"),
        (lambda: model("original_max_model_len") == -1, "max_model_len=-1 (auto-fit) is on"),
        (lambda: bool(cache("kv_cache_dtype_skip_layers")), "kv_cache_dtype_skip_layers is set"),
        (
            lambda: bool(_get(vllm_config, "scheduler_config", "disable_hybrid_kv_cache_manager", default=False)),
            "the hybrid KV cache manager is disabled",
        ),
        (lambda: _get(vllm_config, "attention_config", "hisparse_config") is not None, "HiSparse is on"),
    )


def decide(checks) -> str | None:
    """The first failed check's reason (None: all pass), tested in order; an exception while testing is a
    reason too (stay stock), naming it."""
    try:
        reason = next((reason for failed, reason in checks() if failed()), None)
        return reason() if callable(reason) else reason
    except Exception as e:  # noqa: BLE001 (deciding must never break vLLM: stay stock and say why)
        reason = f"deciding raised {type(e).__name__}: {e}"
        stock(reason)
        return reason


def config_reason(vllm_config) -> str | None:
    return decide(lambda: _config_checks(vllm_config))


def _spec_checks(kv_cache_specs: list[dict], layout):
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec  # lazy: vllm

    specs = [spec for worker in kv_cache_specs for spec in worker.values()]
    attention = [s for s in specs if isinstance(s, FullAttentionSpec)]
    known = (FullAttentionSpec, MambaSpec)

    def resolved():  # the layout last: stock resolves it only where it needs it
        return layout() if callable(layout) else layout

    return (
        (lambda: not any(isinstance(s, MambaSpec) for s in specs), "no state layers (nothing to do)"),
        (
            lambda: any(type(s) not in known for s in specs),
            "layer spec(s) the plugin does not know: "
            + ", ".join(sorted({type(s).__name__ for s in specs if type(s) not in known})),
        ),
        (
            lambda: any(s.sliding_window or s.attention_chunk_size or s.page_size_padded for s in attention),
            "an attention layer has a sliding window, chunked attention or a padded page",
        ),
        (
            lambda: any(s.page_size_padded is not None for s in specs if isinstance(s, MambaSpec)),
            "state pages are padded (the workers kept vLLM's stock block size)",
        ),
        (lambda: len(set(attention)) != 1, "attention layers differ in their spec"),
        (
            lambda: any(not any(isinstance(s, FullAttentionSpec) for s in w.values()) for w in kv_cache_specs),
            "a pipeline stage has no attention layer (state-only stages are not implemented yet)",
        ),
        (
            lambda: not (resolved().is_layer_compact and resolved().is_block_compact),
            lambda: f"KV cache layout {resolved().name} is not layer-outermost with contiguous pages",
        ),
    )


def spec_reason(kv_cache_specs: list[dict], layout) -> str | None:
    """``kv_cache_specs``: one {layer: KVCacheSpec} per worker, as the engine core collects them;
    ``layout``: the KV cache layout, or a function returning it (read only if every other check passes)."""
    return decide(lambda: _spec_checks(kv_cache_specs, layout))


def stock(reason: str) -> None:
    """Log, once per engine (all processes of it), that vLLM stays stock and why."""
    log.once(f"hybrid-alloc: leaving vLLM stock: {reason}")
