"""Which family module reads which ``model_type`` (the language model's type)."""

from __future__ import annotations

from types import ModuleType

from hybrid_alloc.models import attention_only, falcon_h1, granite_h, jamba, lfm2, nemotron_h, qwen_gdn, zamba2

FAMILIES: tuple[ModuleType, ...] = (qwen_gdn, nemotron_h, falcon_h1, granite_h, jamba, zamba2, lfm2, attention_only)

MODEL_TYPES: dict[str, ModuleType] = {t: family for family in FAMILIES for t in family.MODEL_TYPES}


def supported_model_types() -> list[str]:
    return sorted(MODEL_TYPES)
