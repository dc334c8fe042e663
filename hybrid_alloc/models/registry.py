"""Which family module reads which ``model_type`` (the language model's type).

A family module declares ``MODEL_TYPES``, ``LINEAR_ATTENTION_LAYER_TYPES`` (transformers' config lists its
state layers as "linear_attention": vLLM's CPU platform then keeps an explicit bf16/fp16 state,
``cpu_platform``) and ``build(ctx) -> FamilyLayout``."""

from __future__ import annotations

from types import ModuleType

from hybrid_alloc.models import attention_only, falcon_h1, granite_h, jamba, lfm2, nemotron_h, qwen_gdn, zamba2

FAMILIES: tuple[ModuleType, ...] = (qwen_gdn, nemotron_h, falcon_h1, granite_h, jamba, zamba2, lfm2, attention_only)

MODEL_TYPES: dict[str, ModuleType] = {t: family for family in FAMILIES for t in family.MODEL_TYPES}


def supported_model_types() -> list[str]:
    return sorted(MODEL_TYPES)
