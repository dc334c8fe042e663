"""Per-layer cache layouts of models, read from Hugging Face ``config.json`` the way vLLM reads them
(the newest supported release, ``vllm_versions.LATEST``).

``load_layout(model, tp=, num_speculative_tokens=)`` takes a config.json path, a folder holding one, or a
bundled short name / Hugging Face id (``bundled_models()``). Pure Python: no vLLM, torch or transformers.
"""

from hybrid_alloc.models.bundled import bundled_models
from hybrid_alloc.models.layout import ATTENTION, STATE_KINDS, CacheLayer, ModelLayout, StateTensor
from hybrid_alloc.models.loader import load_layout
from hybrid_alloc.models.registry import supported_model_types

__all__ = [
    "ATTENTION",
    "STATE_KINDS",
    "CacheLayer",
    "ModelLayout",
    "StateTensor",
    "bundled_models",
    "load_layout",
    "supported_model_types",
]
