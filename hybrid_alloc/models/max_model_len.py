"""vLLM's max_model_len from a config.json, offline: ``ModelArchConfigConvertorBase.derive_max_model_len_and_key``
then ``_get_and_verify_max_len`` (``vllm/config/model.py``), as ``ModelConfig`` runs it at start-up.

- derived: the smallest of ``POSSIBLE_KEYS`` present in the text config (``model_max_length``, when set,
  wins over all of them), times the RoPE scaling factor of every rope type except ``NO_FACTOR_ROPE_TYPES``
  (their ``max_position_embeddings`` is already scaled). vLLM keeps it a float (the refusal prints
  ``131072.0``).
- no ``--max-model-len``: ``int(derived)``; with longrope, ``original_max_position_embeddings`` when the
  config has it.
- a longer ``--max-model-len``: refused at start-up (``refusal``) unless it is within ``model_max_length`` or
  ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` is 1 / true.
What never applies to ``hybrid-alloc trace``: the sliding-window cap (``--disable-sliding-window`` only), the
tokenizer's ``model_max_length`` (pooling models with absolute positions only), a sentence-transformers
encoder config and a draft model's target length. ``tests/test_max_model_len_parity.py`` checks all of it
against ``ModelConfig``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# derive_max_model_len_and_key, in vLLM's order
POSSIBLE_KEYS = (
    "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
    "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len",
)
# _get_and_verify_max_len: rope types whose factor is not applied
NO_FACTOR_ROPE_TYPES = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
# transformers' ALLOWED_LAYER_TYPES and DeepSeek-V4's keys: rope parameters nested per layer type
# (vLLM's is_rope_parameters_nested)
_NESTED_KEYS = {
    "full_attention", "sliding_attention", "chunked_attention", "window_attention", "indexed_attention",
    "compressed_sparse_attention", "heavily_compressed_attention", "minimax_m3_sparse", "conv", "moe", "hybrid",
    "hybrid_sliding", "reference_sliding_attention", "linear_attention", "sparse", "dense", "main", "compress",
}
NO_KEY_DEFAULT = 2048  # vLLM's length when the config has none of the keys


@dataclass(frozen=True)
class DerivedMaxLen:
    """What vLLM derives from one config: ``value`` (float, RoPE-scaled), the ``key`` it came from,
    ``model_max_length`` (None: absent) and ``default``, the max_model_len used when none is given."""

    value: float
    key: str | None
    model_max_length: Any
    default: int


def allow_long_max_model_len(environ=os.environ) -> bool:
    """``envs.VLLM_ALLOW_LONG_MAX_MODEL_LEN``."""
    return environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() in ("1", "true")


def _rope_parameters(text: dict) -> list[dict]:
    """``iter_rope_parameters`` after transformers' ``convert_rope_params_to_dict`` (``rope_scaling`` first)
    and vLLM's legacy patch: one dict per layer type where the dict is keyed by the config's layer types,
    else one; ``rope_type`` set (``type`` is its legacy name, ``su`` longrope's, ``mrope`` default's)."""
    params = text.get("rope_scaling") or text.get("rope_parameters")
    if not isinstance(params, dict) or not params:
        return []
    labels = set(text.get("layer_types") or ())
    nested = any(key in labels for key in params) and set(params) <= _NESTED_KEYS
    found = [p for p in params.values() if isinstance(p, dict) and p] if nested else [params]
    result = []
    for p in found:
        rope_type = p.get("rope_type", p.get("type", "default"))
        result.append({**p, "rope_type": {"su": "longrope", "mrope": "default"}.get(rope_type, rope_type)})
    return result


def derive(text: dict, max_position_embeddings: int | None) -> DerivedMaxLen:
    """``text``: the language model's config fields; ``max_position_embeddings``: as the config class reads
    it (its default when absent from the file; None: the class has no such field)."""
    fields = {**text, "max_position_embeddings": max_position_embeddings}
    derived, key = float("inf"), None
    for name in POSSIBLE_KEYS:
        value = fields.get(name)
        if value is not None:
            if value < derived:
                key = name
            derived = min(derived, value)
    model_max_length = fields.get("model_max_length")
    if model_max_length:  # Command-R / Cohere
        derived, key = model_max_length, "model_max_length"
    if derived == float("inf"):
        derived = NO_KEY_DEFAULT
    derived = float(derived)  # ModelArchitectureConfig holds it as a float
    rope = _rope_parameters(text)
    if rope and "gemma3" not in str(text.get("model_type", "")):
        factor = 1.0
        for p in rope:
            if p["rope_type"] not in NO_FACTOR_ROPE_TYPES:
                factor = p.get("factor", factor)
        derived *= 1.0 if factor is None else factor
    default = int(derived)
    if any(p["rope_type"] == "longrope" for p in rope):
        default = int(text.get("original_max_position_embeddings", derived))
    return DerivedMaxLen(derived, key, model_max_length, default)


def refusal(derived: DerivedMaxLen, max_model_len: int, allow_long: bool) -> str | None:
    """vLLM's start-up refusal of a ``--max-model-len`` above the derived one, or None where it starts."""
    if max_model_len <= derived.value or allow_long:
        return None
    limit = derived.model_max_length
    if limit is not None and max_model_len <= limit:
        return None
    return (
        f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len "
        f"({derived.key}={derived.value} or model_max_length={limit} in model's config.json). "
        "To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative "
        "position encoding (RoPE), positions exceeding derived_max_model_len lead to nan. If the model uses "
        "absolute position encoding, positions exceeding derived_max_model_len will cause a CUDA array "
        "out-of-bounds error."
    )


def of_layout(layout) -> DerivedMaxLen:
    """A ``ModelLayout``'s derivation (read from its config by the loader; max_position_embeddings alone for
    a layout built by hand)."""
    return layout.derived_max_len or derive({}, layout.max_position_embeddings)
