"""Reading a Hugging Face ``config.json`` the way vLLM sees it (``vllm_versions.LATEST``),
without transformers or vLLM.

vLLM builds a transformers config class from the file; fields absent from the file take that class's
default. ``HFConfig.get(field, default)`` reproduces this: each family module passes the default of the
transformers 5.x config class vLLM uses (noted where a default is used for an architecture field).
``HFConfig.require(field)`` is for fields the config class has no default for.

Nested multimodal files (``text_config``, e.g. Qwen3.5 ``Qwen3_5ForConditionalGeneration``) and the
flattened bundled copies (text fields at the top, ``top_level_model_type`` naming the outer type) both
read through ``text`` fields; ``top`` fields (architectures, quantization_config) come from the outer dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybrid_alloc.errors import ModelConfigError

_MISSING = object()

# vLLM's _STR_DTYPE_TO_TORCH_DTYPE names, normalised.
_DTYPE_NAMES = {
    "half": "float16",
    "float16": "float16",
    "float": "float32",
    "float32": "float32",
    "bfloat16": "bfloat16",
}

# transformers' _LEGACY_LAYER_TYPE_REMAP: config classes rewrite these names on load.
_LEGACY_LAYER_TYPES = {"mamba": "linear_attention", "attention": "full_attention"}


def read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelConfigError(f"{path}: cannot read model config ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class HFConfig:
    """One config.json: ``top`` is the outer dict, ``text`` the language model's fields."""

    def __init__(self, data: dict[str, Any], source: str):
        self.source = source
        self.top = data
        text = data.get("text_config")
        self.text: dict[str, Any] = text if isinstance(text, dict) else data
        self.defaulted: list[str] = []  # sized fields read at the config class's default (absent from the file)

    @property
    def model_type(self) -> str:
        """The language model's type (``qwen3_5_text`` for a nested or flattened Qwen3.5)."""
        return str(self.text.get("model_type") or self.top.get("model_type") or "")

    @property
    def architecture(self) -> str:
        archs = self.top.get("architectures") or self.text.get("architectures") or []
        return str(archs[0]) if archs else ""

    def has(self, field: str) -> bool:
        return self.text.get(field) is not None

    def get(self, field: str, default: Any = _MISSING) -> Any:
        """A text field; ``default`` (the config class's default) when absent or null."""
        value = self.text.get(field)
        if value is not None:
            return value
        if default is _MISSING:
            return self.require(field)
        if default and not isinstance(default, (bool, list)) and field not in self.defaulted:
            self.defaulted.append(field)
        return default

    def first(self, *fields: str, default: Any = _MISSING) -> Any:
        """The first of several alias fields present (e.g. ``n_groups`` / ``mamba_n_groups``)."""
        for field in fields:
            if self.has(field):
                return self.text[field]
        if default is _MISSING:
            raise ModelConfigError(f"{self.source}: missing field {' or '.join(map(repr, fields))}")
        return default

    def require(self, field: str) -> Any:
        value = self.text.get(field)
        if value is None:
            raise ModelConfigError(f"{self.source}: missing field {field!r} ({self.model_type})")
        return value

    def int(self, field: str, default: Any = _MISSING) -> int:
        value = self.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelConfigError(f"{self.source}: field {field!r} must be an integer, got {value!r}")
        return value

    def layer_types(self, field: str, default: list[str] | None = None, length: int | None = None) -> list[str]:
        """A per-layer type list, legacy names remapped; at least ``length`` entries when given."""
        value = self.get(field, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ModelConfigError(f"{self.source}: field {field!r} must be a list of strings")
        if length is not None and len(value) < length:
            raise ModelConfigError(f"{self.source}: field {field!r} lists {len(value)} layers, fewer than {length}")
        return [_LEGACY_LAYER_TYPES.get(v, v) for v in value]

    def config_dtype(self) -> str:
        """``ModelArchConfigConvertorBase.get_torch_dtype``: outer dtype, then the text config's;
        float32 when none (vLLM would read safetensors metadata; a config alone has none)."""
        for d in (self.top, self.text):
            for key in ("dtype", "torch_dtype"):
                value = d.get(key)
                if value is not None:
                    name = _DTYPE_NAMES.get(str(value).lower().removeprefix("torch."))
                    if name is None:
                        raise ModelConfigError(f"{self.source}: unsupported {key} {value!r}")
                    return name
        return "float32"

    def model_dtype(self) -> str:
        """``--dtype auto`` (``_resolve_auto_dtype``): float32 configs run in the platform's first
        supported dtype, bfloat16 on CUDA compute capability >= 8.0 (and on x86 CPUs)."""
        dtype = self.config_dtype()
        return "bfloat16" if dtype == "float32" else dtype

    def tie_word_embeddings(self, default: bool = False) -> bool:
        for d in (self.text, self.top):
            if d.get("tie_word_embeddings") is not None:
                return bool(d["tie_word_embeddings"])
        return default

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        """``get_quantization_config``: the outer config's, else the text config's."""
        for d in (self.top, self.text):
            q = d.get("quantization_config") or d.get("compression_config")
            if isinstance(q, dict):
                return q
        return None
