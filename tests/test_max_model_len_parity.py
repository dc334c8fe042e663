"""models.max_model_len against vLLM 0.33's ``ModelConfig`` (``_get_and_verify_max_len``): the max_model_len
vLLM uses when none is given, and its start-up refusal of a longer one, word for word.

vLLM's side is a real ``ModelConfig`` built from a folder holding the config.json, as in
``test_stock_parity`` (whose CUDA stand-in platform and torchvision stub this module reuses by importing
it); our side reads the same file through ``load_layout``. Configs: every bundled one, and variants of
Llama-3.1-8B, Falcon-H1 and Qwen3.5 at max_position_embeddings 4096 with each RoPE scaling form vLLM
treats apart (the legacy ``type`` key, factors it applies and factors it skips, longrope's default,
per-layer-type nesting) and with the other length keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import test_stock_parity as parity  # noqa: F401  (installs the platform stand-in before vLLM's config)
from hybrid_alloc.models import load_layout
from hybrid_alloc.models.max_model_len import allow_long_max_model_len, of_layout, refusal
from vllm.config import ModelConfig

pytestmark = pytest.mark.vllm

LLAMA = "meta-llama--Llama-3.1-8B.json"
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 64, "long_factor": [4.0] * 64, "factor": 4.0}
# (base config, fields set on it)
VARIANTS = {
    "plain-4096": (LLAMA, {"max_position_embeddings": 4096}),
    "linear-legacy-type": (LLAMA, {"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}),
    "linear-int-factor": (LLAMA, {"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 8}}),
    "dynamic": (LLAMA, {"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "dynamic", "factor": 2.5}}),
    "yarn": (LLAMA, {"max_position_embeddings": 4096,
                     "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}}),
    "llama3": (LLAMA, {"max_position_embeddings": 4096, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512}}),
    "longrope": (LLAMA, {"max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
                         "rope_scaling": LONGROPE}),
    "longrope-legacy-su": (LLAMA, {"max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
                                   "rope_scaling": {**LONGROPE, "rope_type": "su"}}),
    "rope-parameters": (LLAMA, {"max_position_embeddings": 4096,
                                "rope_parameters": {"rope_type": "linear", "factor": 3.0, "rope_theta": 500000.0}}),
    "layer-type-keys-without-layer-types": (LLAMA, {"max_position_embeddings": 4096, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}}),
    "scaling-over-parameters": (LLAMA, {"max_position_embeddings": 4096,
                                        "rope_parameters": {"rope_type": "linear", "factor": 3.0},
                                        "rope_scaling": {"rope_type": "linear", "factor": 1.5}}),
    "nested": ("Qwen--Qwen3.5-0.8B.json", {"max_position_embeddings": 4096, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        "linear_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
    "model-max-length": (LLAMA, {"max_position_embeddings": 4096, "model_max_length": 16384}),
    "smaller-seq-length": (LLAMA, {"max_position_embeddings": 4096, "seq_length": 3000}),
    "max-seq-len": (LLAMA, {"max_position_embeddings": 8192, "max_seq_len": 6000, "n_positions": 7000}),
    "falcon-h1-linear": ("tiiuae--Falcon-H1-0.5B-Instruct.json",
                         {"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen3.5-4096": ("Qwen--Qwen3.5-0.8B.json", {"max_position_embeddings": 4096}),
    "nemotron-h-4096": ("nvidia--Nemotron-H-4B-Base-8K.json", {"max_position_embeddings": 4096}),
}


def _variant_dir(name: str, root: Path) -> str:
    base, fields = VARIANTS[name]
    config = json.loads(Path(parity._model_dir(base, str(root)), "config.json").read_text())
    folder = root / "variants" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return str(folder)


def _vllm(model_dir: str, max_model_len: int | None) -> tuple[int | None, str | None]:
    """(the max_model_len ModelConfig settles on, None) or (None, its refusal)."""
    try:
        return ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=max_model_len).max_model_len, None
    except ValidationError as exc:
        return None, str(exc.errors()[0]["ctx"]["error"])


def _ours(model_dir: str, max_model_len: int | None) -> tuple[int | None, str | None]:
    derived = of_layout(load_layout(model_dir))
    if max_model_len is None:
        return derived.default, None
    error = refusal(derived, max_model_len, allow_long_max_model_len())
    return (None, error) if error else (max_model_len, None)


def _check(model_dir: str) -> None:
    default, _ = _vllm(model_dir, None)
    assert _ours(model_dir, None) == (default, None)
    derived = of_layout(load_layout(model_dir)).value
    for length in sorted({default, int(derived), int(derived) + 1, 2 * int(derived), 32768}):
        assert _ours(model_dir, length) == _vllm(model_dir, length), length


@pytest.mark.parametrize("config_name", parity.CONFIG_NAMES)
def test_bundled_max_model_len_matches_vllm(config_name: str, tmp_path_factory) -> None:
    _check(parity._model_dir(config_name, str(tmp_path_factory.getbasetemp())))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_max_model_len_matches_vllm(variant: str, tmp_path_factory) -> None:
    _check(_variant_dir(variant, tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize("value", ["1", "true", " TRUE "])
def test_allow_long_max_model_len_lets_vllm_start(value: str, tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", value)
    model_dir = _variant_dir("plain-4096", tmp_path_factory.getbasetemp())
    assert _vllm(model_dir, 8192) == _ours(model_dir, 8192) == (8192, None)
