"""Vision encoder weights of a multimodal checkpoint, for the budget estimate (vLLM loads the encoder on
the first pipeline stage unless ``--language-model-only``).

Counted from a Qwen3-VL-style ``vision_config`` (Qwen3.5 / 3.6 ``...ForConditionalGeneration``,
``vllm/model_executor/models/qwen3_vl.py``): per block qkv + proj (4 h^2) and a two-layer MLP
(2 h x intermediate), TP-split; the patch merger (and one per deepstack layer), TP-split; the patch
embedding and the position embedding, replicated. Norms and biases are ignored (< 0.1%).
"""

from __future__ import annotations

from hybrid_alloc.models.hf_config import HFConfig


_REQUIRED = ("depth", "hidden_size", "intermediate_size")


def is_multimodal(cfg: HFConfig) -> bool:
    """A vision-language architecture (vLLM's multimodal ``...ForConditionalGeneration`` classes)."""
    return cfg.architecture.endswith("ForConditionalGeneration")


def vision_encoder_params(cfg: HFConfig, tp: int) -> float | None:
    """Parameters of the vision encoder on one TP rank; None when the config has no ``vision_config``
    with a Qwen3-VL shape (e.g. a bundled, flattened text config)."""
    v = cfg.top.get("vision_config")
    if not isinstance(v, dict) or not all(isinstance(v.get(k), int) for k in _REQUIRED):
        return None
    h, inter = v["hidden_size"], v["intermediate_size"]
    merged = v.get("spatial_merge_size", 2) ** 2 * h
    merger = merged * merged + merged * v.get("out_hidden_size", h)
    mergers = 1 + len(v.get("deepstack_visual_indexes") or [])
    patch = v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * v.get("patch_size", 16) ** 2 * h
    positions = v.get("num_position_embeddings", 0) * h
    return (v["depth"] * (4 * h * h + 2 * h * inter) + mergers * merger) / tp + patch + positions
