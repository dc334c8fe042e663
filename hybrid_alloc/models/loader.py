"""``load_layout``: a config.json path, a model folder or a bundled name -> ``ModelLayout``."""

from __future__ import annotations

from pathlib import Path

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.bundled import CONFIG_DIR, bundled_models, find_bundled
from hybrid_alloc.models.family import Context
from hybrid_alloc.models.hf_config import HFConfig, read_json
from hybrid_alloc.models.layout import ModelLayout, dtype_bytes
from hybrid_alloc.models.max_model_len import derive as derive_max_len
from hybrid_alloc.models.registry import MODEL_TYPES, supported_model_types
from hybrid_alloc.models.weights import padded_vocab_rows, weight_bits


def _resolve(model: str) -> tuple[str, str, Path]:
    """(display name, source, path) for a path, a folder holding config.json, or a bundled name / HF id."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"{model}: folder has no config.json")
        return path.parent.name, str(path), path
    if path.is_file():
        return path.stem, str(path), path
    found = find_bundled(model)
    if found is None:
        raise ModelConfigError(f"{model!r}: no such file or folder, and not a bundled model "
                               f"(bundled: {', '.join(sorted(bundled_models()))})")
    hf_id, path = found
    return hf_id, f"bundled:{path.relative_to(CONFIG_DIR).as_posix()}", path


def _checkpoint_kv_cache_dtype(cfg: HFConfig) -> str | None:
    """``resolve_kv_cache_dtype_string``: ModelOpt checkpoints with an fp8 KV scheme make "auto" mean fp8."""
    q = cfg.quantization_config or {}
    if not str(q.get("quant_method", "")).startswith("modelopt") and "producer" not in q:
        return None
    inner = q.get("quantization", q)
    algo = inner.get("kv_cache_scheme") or q.get("kv_cache_scheme") or inner.get("kv_cache_quant_algo") \
        or q.get("kv_cache_quant_algo")
    if isinstance(algo, dict):
        return "fp8" if (algo.get("num_bits") == 8 and algo.get("type") == "float" and not algo.get("dynamic")) else None
    return "fp8" if isinstance(algo, str) and algo.upper().startswith("FP8") else None


MAMBA_DTYPES = ("auto", "float32", "float16", "bfloat16")  # vLLM's MambaDType


def load_layout(model: str, *, tp: int = 1, num_speculative_tokens: int = 0, dtype: str | None = None,
                mamba_ssm_cache_dtype: str = "auto", cpu_avx512_bf16: bool = False) -> ModelLayout:
    """``dtype``: vLLM's ``--dtype`` (None: "auto", resolved from the config as vLLM does);
    ``mamba_ssm_cache_dtype``: ``--mamba-ssm-cache-dtype``; ``cpu_avx512_bf16``: the layout vLLM's CPU
    backend builds on an AVX512-BF16 CPU (``hybrid_alloc.models.cpu_platform``; False on GPUs)."""
    if tp < 1 or num_speculative_tokens < 0:
        raise ModelConfigError(f"tp must be >= 1 and num_speculative_tokens >= 0 (got {tp}, {num_speculative_tokens})")
    if mamba_ssm_cache_dtype not in MAMBA_DTYPES:
        raise ModelConfigError(f"mamba_ssm_cache_dtype {mamba_ssm_cache_dtype!r}: use one of {', '.join(MAMBA_DTYPES)}")
    name, source, path = _resolve(str(model))
    cfg = HFConfig(read_json(path), str(path))
    family = MODEL_TYPES.get(cfg.model_type)
    if family is None:
        raise ModelConfigError(
            f"{path}: unsupported model_type {cfg.model_type or '(none)'!r} ({cfg.architecture or 'no architecture'}); "
            f"supported: {', '.join(supported_model_types())}")
    dtype = dtype or cfg.model_dtype()
    ctx = Context(cfg=cfg, tp=tp, num_spec=num_speculative_tokens, dtype=dtype,
                  mamba_ssm_cache_dtype=mamba_ssm_cache_dtype, cpu_avx512_bf16=cpu_avx512_bf16,
                  linear_attention_layer_types=family.LINEAR_ATTENTION_LAYER_TYPES)
    fam = family.build(ctx)

    bits = weight_bits(cfg, dtype)
    embedding_params = padded_vocab_rows(fam.vocab_size, tp) * fam.hidden_size
    head_bytes = 0 if fam.tie_word_embeddings else round(embedding_params * bits.head / 8)
    notes = list(fam.notes)
    if cfg.defaulted:
        notes.append(f"absent from the config, read at the config class default: {', '.join(cfg.defaulted)}")
    if ctx.cpu_rule_change:
        before, after = ctx.cpu_rule_change
        notes.append(f"SSM state in {after}, not {before}: vLLM's CPU backend on an AVX512-BF16 CPU resets it"
                     + ("" if ctx.linear_attention_layer_types else
                        " (an explicit --mamba-ssm-cache-dtype bfloat16 or float16 is reset too for this model)"))
    kv_dtype = _checkpoint_kv_cache_dtype(cfg)
    if kv_dtype:
        notes.append(f"checkpoint KV cache scheme: --kv-cache-dtype auto resolves to {kv_dtype}")
    return ModelLayout(
        name=name,
        source=source,
        model_type=cfg.model_type,
        architecture=cfg.architecture,
        dtype=dtype,
        num_decoder_layers=fam.num_decoder_layers,
        max_position_embeddings=fam.max_position_embeddings,
        layers=tuple(fam.layers),
        tp=tp,
        num_speculative_tokens=num_speculative_tokens,
        weight_bytes_per_decoder_layer=tuple(bits.layer_bytes(p) for p in fam.layer_params),
        embedding_weight_bytes=round(embedding_params * dtype_bytes(dtype)),
        head_weight_bytes=head_bytes + fam.hidden_size * dtype_bytes(dtype),  # + final norm
        encoder_weight_bytes=round(fam.encoder_params * dtype_bytes(dtype)),
        encoder_activation_bytes=round(fam.encoder_peak_elements * dtype_bytes(dtype)),
        quant_bits=bits.nominal,
        checkpoint_kv_cache_dtype=kv_dtype,
        notes=tuple(notes),
        derived_max_len=derive_max_len(cfg.text, fam.max_position_embeddings),
    )
