"""Qwen3.5 / Qwen3.6 (dense and MoE) and Qwen3-Next: Gated DeltaNet + gated full attention.

vLLM: ``models/qwen3_5.py``, ``models/qwen3_next.py``; defaults from transformers' ``Qwen3_5TextConfig``,
``Qwen3_5MoeTextConfig`` and ``Qwen3NextConfig``.
"""

from __future__ import annotations

from hybrid_alloc.models.family import Context, FamilyLayout, attention_layer, kv_heads_per_rank
from hybrid_alloc.models.layout import CacheLayer
from hybrid_alloc.models.state_shapes import gated_delta_net_state
from hybrid_alloc.models.weights import Params, attention_params, gated_mlp_params, moe_params

MODEL_TYPES = ("qwen3_5_text", "qwen3_5_moe_text", "qwen3_5", "qwen3_5_moe", "qwen3_next")
LINEAR_ATTENTION_LAYER_TYPES = True  # "linear_attention" in transformers' layer_types (cpu_platform)

# MODELS_CONFIG_MAP entries whose verify_and_update_config reads ``mamba_ssm_dtype``
# (Qwen3_5ForConditionalGenerationConfig / Qwen3_5ForCausalLMConfig). Qwen3-Next has none: "auto".
_SSM_DTYPE_ARCHS = ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration",
                    "Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
# Multimodal wrappers build the text model under "language_model".
_NESTED_ARCHS = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")


def _layer_types(ctx: Context, n: int) -> list[str]:
    cfg = ctx.cfg
    if cfg.has("layer_types"):
        return cfg.layer_types("layer_types", length=n)
    interval = cfg.int("full_attention_interval", 4)
    return ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]


def build(ctx: Context) -> FamilyLayout:
    cfg, tp = ctx.cfg, ctx.tp
    moe_type = cfg.model_type in ("qwen3_5_moe_text", "qwen3_5_moe", "qwen3_next")
    n = cfg.int("num_hidden_layers", 32)
    hidden = cfg.int("hidden_size", 2048 if cfg.model_type == "qwen3_next" else 4096)
    types = _layer_types(ctx, n)
    prefix = "language_model.model.layers" if cfg.architecture in _NESTED_ARCHS else "model.layers"

    heads = cfg.int("num_attention_heads", 16)
    kv = kv_heads_per_rank(ctx, heads, cfg.int("num_key_value_heads", 2 if cfg.model_type == "qwen3_next" else 4))
    head_dim = cfg.int("head_dim", 256)
    gate = 2 if cfg.get("attn_output_gate", True) else 1

    nk, nv = cfg.int("linear_num_key_heads", 16), cfg.int("linear_num_value_heads", 32)
    dk, dv = cfg.int("linear_key_head_dim", 128), cfg.int("linear_value_head_dim", 128)
    kernel = cfg.int("linear_conv_kernel_dim", 4)
    ssm_dtype = cfg.get("mamba_ssm_dtype", "auto") if cfg.architecture in _SSM_DTYPE_ARCHS else "auto"
    state = gated_delta_net_state(tp, nk, nv, dk, dv, kernel, ctx.num_spec, ctx.state_dtypes(ssm_dtype))
    key_dim, value_dim = nk * dk, nv * dv
    conv_dim = 2 * key_dim + value_dim
    gdn = Params(mixer=(hidden * (2 * key_dim + 2 * value_dim + 2 * nv) + conv_dim * kernel + value_dim * hidden) / tp,
                 other=(2 * nv) / tp + dv + 2 * hidden)
    attn = attention_params(hidden, heads, kv, head_dim, tp, q_multiplier=gate)

    num_experts = cfg.int("num_experts", 512 if cfg.model_type == "qwen3_next" else 256) if moe_type else 0
    mlp_only = set(cfg.get("mlp_only_layers", [])) if num_experts else set()
    sparse_step = cfg.int("decoder_sparse_step", 1) if num_experts else 1

    def mlp(i: int) -> Params:
        if num_experts and i not in mlp_only and (i + 1) % sparse_step == 0:
            shared = cfg.int("shared_expert_intermediate_size", 512)
            return (moe_params(hidden, num_experts, cfg.int("moe_intermediate_size", 512), tp)
                    + gated_mlp_params(hidden, shared, tp) + Params(mlp=hidden))
        return gated_mlp_params(hidden, cfg.int("intermediate_size", 5632 if moe_type else 12288), tp)

    layers: list[CacheLayer] = []
    params: list[Params] = []
    for i, kind in enumerate(types[:n]):
        if kind == "linear_attention":
            layers.append(CacheLayer(name=f"{prefix}.{i}.linear_attn", decoder_layer=i, kind="gdn", state=state))
            params.append(gdn + mlp(i))
        else:
            layers.append(attention_layer(f"{prefix}.{i}.self_attn.attn", i, kv, head_dim))
            params.append(attn + mlp(i))

    notes = []
    mtp = cfg.int("mtp_num_hidden_layers", 0) or cfg.int("num_nextn_predict_layers", 0)
    if mtp:
        notes.append(f"{mtp} MTP layer(s) hold no cache and no weights here unless speculative decoding uses "
                     "them (--speculative-config method mtp adds their weights and attention KV cache as a draft model)")
    if ssm_dtype != "auto" and ctx.mamba_ssm_cache_dtype == "auto":
        notes.append(f"GDN recurrent state in {ssm_dtype} (config mamba_ssm_dtype)")
    return FamilyLayout(layers=layers, layer_params=params, hidden_size=hidden,
                        vocab_size=cfg.int("vocab_size", 151936 if cfg.model_type == "qwen3_next" else 248320),
                        tie_word_embeddings=cfg.tie_word_embeddings(False),
                        max_position_embeddings=cfg.int("max_position_embeddings", 32768), notes=notes)
