"""Nemotron-H, Nemotron Nano v2 and Nemotron-3 (``nemotron_h``): one mixer per decoder layer, chosen by
``hybrid_override_pattern``: M = Mamba2, * = attention, - = MLP, E = MoE (the last two hold no cache).

vLLM: ``models/nemotron_h.py`` (layer count = pattern length); defaults from transformers'
``NemotronHConfig``, which also derives the pattern from ``layers_block_type`` / ``layer_types``.
"""

from __future__ import annotations

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.state_shapes import mamba2_state
from hybrid_alloc.models.weights import Params, attention_params, mamba2_params

MODEL_TYPES = ("nemotron_h",)
LINEAR_ATTENTION_LAYER_TYPES = True  # "linear_attention" in transformers' layer_types (cpu_platform)

_PATTERN_CHARS = {"linear_attention": "M", "moe": "E", "full_attention": "*", "mlp": "-"}


def _pattern(ctx: Context) -> str:
    """``NemotronHConfig``: an explicit ``layers_block_type`` / ``layer_types`` list wins over the legacy
    ``hybrid_override_pattern`` string; with neither, the class default list."""
    cfg = ctx.cfg
    field = next((f for f in ("layers_block_type", "layer_types") if cfg.has(f)), None)
    if field is None and cfg.has("hybrid_override_pattern"):
        pattern = str(cfg.get("hybrid_override_pattern"))
    else:
        types = cfg.layer_types(field or "layer_types", ["linear_attention", "moe", "full_attention", "mlp"])
        pattern = "".join(_PATTERN_CHARS.get(t, "?") for t in types)
    bad = sorted(set(pattern) - set("ME*-"))
    if bad:
        raise ModelConfigError(f"{cfg.source}: hybrid_override_pattern has unknown layer types {bad}; "
                               "supported: M (Mamba2), * (attention), - (MLP), E (MoE)")
    return pattern


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    pattern = _pattern(ctx)
    hidden = cfg.int("hidden_size", 4096)

    heads = cfg.int("num_attention_heads", 32)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", 8))
    head_dim = cfg.int("head_dim", 128)  # NemotronHConfig default; attention_head_dim is not read

    m_heads, m_head_dim = cfg.int("mamba_num_heads", 128), cfg.int("mamba_head_dim", 64)
    n_groups = cfg.first("mamba_n_groups", "n_groups", default=8)  # the legacy name overrides
    state_size = cfg.int("ssm_state_size", 128)
    kernel = cfg.first("mamba_d_conv", "conv_kernel", default=4)
    # NemotronHForCausalLMConfig: "auto" becomes the config's mamba_ssm_cache_dtype, else float32.
    ssm_dtype = cfg.get("mamba_ssm_cache_dtype", "float32")
    state = mamba2_state(tp, m_heads * m_head_dim, n_groups, m_heads, m_head_dim, state_size, kernel,
                         ctx.num_spec, ctx.state_dtypes(ssm_dtype))

    mamba = mamba2_params(hidden, m_heads * m_head_dim, n_groups, m_heads, state_size, kernel, tp)
    attn = attention_params(hidden, heads, kv, head_dim, tp)
    intermediate = cfg.get("intermediate_size", 21504)

    def mlp(i: int) -> Params:  # relu2, not gated: up + down
        size = intermediate
        if isinstance(size, list):
            size = size[0] if len(size) == 1 else size[pattern[: i + 1].count("-") - 1]
        return Params(mlp=2 * hidden * size / tp, other=hidden)

    def moe() -> Params:  # relu2 experts (up + down) on the latent or hidden width, router, shared experts
        experts = cfg.int("n_routed_experts", 8)
        latent = cfg.get("moe_latent_size", None)
        width = latent or hidden
        shared = cfg.int("moe_shared_expert_intermediate_size", 7688) * cfg.int("n_shared_experts", 1)
        routed = experts * 2 * width * cfg.int("moe_intermediate_size", 7688) / tp
        return Params(mlp=routed + hidden * experts + 2 * hidden * shared / tp + (2 * hidden * latent if latent else 0),
                      other=hidden)

    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i, kind in enumerate(pattern):
        if kind == "M":
            layers.append(CacheLayer(name=f"model.layers.{i}.mixer", decoder_layer=i, kind="mamba2", state=state))
            params.append(mamba)
        elif kind == "*":
            layers.append(attention_layer(f"model.layers.{i}.mixer.attn", i, kv, head_dim))
            params.append(attn)
        elif kind == "-":
            params.append(mlp(i))
        else:
            params.append(moe())

    notes = [f"Mamba2 ssm state in {ssm_dtype} (NemotronH default unless --mamba-ssm-cache-dtype)"]
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 131072),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", 4096), notes=notes)
