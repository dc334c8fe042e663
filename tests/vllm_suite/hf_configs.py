"""Offline Hugging Face cache entries (``config.json`` only) for the models vLLM's own tests name.

vLLM's tests build ``ModelConfig``s for public model ids (``ModelConfig()``'s default is a small Qwen3); the
stage runs them offline (``HF_HUB_OFFLINE=1``) against a cache holding only each model's ``config.json``:
the public configs' architecture fields, enough for the KV-cache planning and scheduler tests (no weights,
no tokenizer). The bundled hybrid configs come from ``hybrid_alloc/models/configs``.
"""

from __future__ import annotations

import json
import os

from hybrid_alloc.models.bundled import CONFIG_DIR

_QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
_QWEN15_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 32768, "max_window_layers": 28, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}
_OPT = {
    "architectures": ["OPTForCausalLM"], "model_type": "opt", "activation_dropout": 0.0, "activation_function": "relu",
    "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": True, "dropout": 0.1, "eos_token_id": 2,
    "enable_bias": True, "ffn_dim": 3072, "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0,
    "max_position_embeddings": 2048, "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "prefix": "</s>", "torch_dtype": "float16", "use_cache": True, "vocab_size": 50272, "word_embed_proj_dim": 768,
}

# model id -> config.json (a dict, or the name of a bundled config file)
CONFIGS = {
    "Qwen/Qwen3-0.6B": _QWEN3_06B,
    "Qwen/Qwen1.5-7B": _QWEN15_7B,
    "facebook/opt-125m": _OPT,
    "Qwen/Qwen3.5-0.8B": "Qwen--Qwen3.5-0.8B.json",
    "Qwen/Qwen3-Next-80B-A3B-Instruct": "Qwen--Qwen3-Next-80B-A3B-Instruct.json",
}

_REVISION = "0" * 40  # any commit id: the cache's refs/main names it


def write_cache(hub_dir: str) -> None:
    """Write ``hub_dir/models--ORG--NAME/{refs/main, snapshots/REV/config.json}`` for every model in CONFIGS."""
    for model_id, config in CONFIGS.items():
        if isinstance(config, str):
            config = json.loads((CONFIG_DIR / config).read_text(encoding="utf-8"))
        repo = os.path.join(hub_dir, "models--" + model_id.replace("/", "--"))
        snapshot = os.path.join(repo, "snapshots", _REVISION)
        os.makedirs(snapshot, exist_ok=True)
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", "main"), "w", encoding="utf-8") as f:
            f.write(_REVISION)
        with open(os.path.join(snapshot, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
