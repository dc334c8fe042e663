"""Weight bytes on one TP rank: an estimate for the memory budget, not vLLM's exact allocation.

Formula: each decoder layer's parameters are counted from the config in three classes, already divided
by the TP size (column/row-parallel projections and experts split evenly; KV projections replicated when
``tp > num_kv_heads``):
- ``mixer``: attention q/k/v/o and the state mixers' projections (in_proj, conv1d, out_proj, ...);
- ``mlp``: dense MLP, MoE experts, shared experts and routers;
- ``other``: norms and small vectors (always in the model dtype).
Bytes = params x bits / 8, where bits come from ``quantization_config`` (see ``WeightBits``) or the model
dtype. Embeddings and the LM head are padded to 64 rows (``VocabParallelEmbedding``) and split by TP;
a tied LM head costs nothing extra. Biases, rotary caches and vLLM's padding of quantized shards are
ignored (well under 1% for the bundled models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models.hf_config import HFConfig
from hybrid_alloc.models.layout import dtype_bytes

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE


@dataclass(frozen=True)
class Params:
    """Parameters of one decoder layer on one TP rank, by weight class."""

    mixer: float = 0
    mlp: float = 0
    other: float = 0

    def __add__(self, other: Params) -> Params:
        return Params(self.mixer + other.mixer, self.mlp + other.mlp, self.other + other.other)


@dataclass(frozen=True)
class WeightBits:
    """Bits per weight, scales included (e.g. NVFP4: 4 bits + one fp8 scale per 16 = 4.5)."""

    mixer: float
    mlp: float
    head: float
    other: float
    nominal: int | None  # the quantised weight width (ModelLayout.quant_bits); None = unquantised

    def layer_bytes(self, p: Params) -> int:
        return round((p.mixer * self.mixer + p.mlp * self.mlp + p.other * self.other) / 8)


def _scheme_bits(num_bits: int, group_size: int | None, float_type: bool) -> float:
    """One weight scheme: int formats carry an fp16 scale and zero per group, fp4 an fp8 scale per 16."""
    if num_bits >= 8:
        return float(num_bits)
    if float_type:
        return num_bits + 8 / (group_size or 16)
    return num_bits + 32 / (group_size or 128)


_MODELOPT_ALGOS = {"FP8": 8.0, "FP8_PER_CHANNEL_PER_TOKEN": 8.0, "FP8_PB_WO": 8.0, "NVFP4": 4.5,
                   "W4A16_NVFP4": 4.5, "W4A8_NVFP4_FP8": 4.5, "MXFP4": 4.25}


def _classify(module: str) -> str:
    return "mlp" if (".mlp." in module or "expert" in module or "feed_forward" in module) else (
        "head" if module.startswith("lm_head") else "mixer")


# --quantization for a config without quantization_config (a bundled name traced for a quantised
# checkpoint): the quantization_config such a checkpoint carries, in its most common form (AWQ / GPTQ:
# 4-bit, group 128; ModelOpt: FP8 or NVFP4; MXFP4: MoE experts only, as gpt-oss). The fp8 / mxfp8 /
# int8 names quantise a bf16 checkpoint online, to the same width. vLLM's QuantizationMethods not here
# need the checkpoint's own quantization_config (compressed-tensors, quark, torchao, ...).
_GPTQ_LIKE = {"bits": 4, "group_size": 128}
QUANTIZATION_CONFIGS: dict[str, dict[str, Any]] = {
    **{m: {"quant_method": "awq", **_GPTQ_LIKE} for m in ("awq", "auto_awq", "awq_marlin")},
    **{m: {"quant_method": "gptq", **_GPTQ_LIKE} for m in ("gptq", "auto_gptq", "gptq_marlin")},
    **{m: {"quant_method": "fp8"} for m in ("fp8", "fbgemm_fp8", "fp8_per_tensor", "fp8_per_block",
                                            "fp8_per_channel")},
    "modelopt": {"quant_method": "modelopt", "quant_algo": "FP8"},
    **{m: {"quant_method": "modelopt", "quant_algo": "NVFP4"} for m in ("modelopt_fp4", "nvfp4_per_token")},
    **{m: {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 8, "type": "float", "group_size": 32}}}} for m in ("modelopt_mxfp8", "mxfp8")},
    "int8_per_channel_weight_only": {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 8, "type": "int"}}}},
    **{m: {"quant_method": "mxfp4"} for m in ("mxfp4", "gpt_oss_mxfp4")},
}


def _method_family(method: str) -> str:
    """awq_marlin / auto_awq -> awq: the names vLLM accepts for one checkpoint format."""
    return method.lower().removeprefix("auto_").removesuffix("_marlin").replace("-", "_")


def quantization_config(cfg: HFConfig, quantization: str | None) -> dict[str, Any] | None:
    """The quantization_config the weights are loaded with: the checkpoint's (``--quantization`` must
    then name its method, as ``ModelConfig._verify_quantization`` requires), else the one
    ``--quantization`` stands for (``QUANTIZATION_CONFIGS``)."""
    q = cfg.quantization_config
    if quantization is None:
        return q
    if q:
        method = str(q.get("quant_method", ""))
        if _method_family(method) != _method_family(quantization) and not (
            method.startswith("modelopt") and quantization.startswith("modelopt")
        ):
            raise ModelConfigError(
                f"{cfg.source}: quantization method specified in the model config ({method}) does not match "
                f"the quantization method specified in the `quantization` argument ({quantization})"
            )
        return q
    if quantization not in QUANTIZATION_CONFIGS:
        raise ModelConfigError(
            f"--quantization {quantization}: its weight width comes from the checkpoint's quantization_config, "
            f"which {cfg.source} lacks; give the checkpoint's config.json, or one of "
            f"{', '.join(QUANTIZATION_CONFIGS)}"
        )
    return QUANTIZATION_CONFIGS[quantization]


def weight_bits(cfg: HFConfig, model_dtype: str, q: dict[str, Any] | None = None) -> WeightBits:
    """Bits per weight class from a ``quantization_config`` (``q``, default the config's own: AWQ, GPTQ,
    fp8, bitsandbytes, compressed-tensors, ModelOpt FP8 / NVFP4 / mixed precision); unknown methods count
    as unquantised."""
    native = 8.0 * dtype_bytes(model_dtype)
    q = cfg.quantization_config if q is None else q
    if not q:
        return WeightBits(native, native, native, native, None)
    method = str(q.get("quant_method", "")).lower()
    by_class: dict[str, float] = {}
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin", "auto-round", "autoround"):
        bits = _scheme_bits(int(q.get("bits", 4)), q.get("group_size"), False)
        by_class = {"mixer": bits, "mlp": bits}
    elif method in ("fp8", "fbgemm_fp8"):
        by_class = {"mixer": 8.0, "mlp": 8.0}
    elif method == "bitsandbytes":
        bits = 4.5 if q.get("load_in_4bit") else 8.0
        by_class = {"mixer": bits, "mlp": bits}
    elif method == "mxfp4":
        by_class = {"mlp": 4.25}
    elif method.startswith("modelopt") or "quant_algo" in q or isinstance(q.get("quantization"), dict):
        inner = q.get("quantization", q)
        algo = str(inner.get("quant_algo", "")).upper()
        if algo in _MODELOPT_ALGOS:
            by_class = {"mixer": _MODELOPT_ALGOS[algo], "mlp": _MODELOPT_ALGOS[algo]}
        for module, spec in (inner.get("quantized_layers") or {}).items():
            bits = _MODELOPT_ALGOS.get(str(spec.get("quant_algo", "")).upper())
            if bits is not None:
                cls = _classify(module)
                by_class[cls] = min(bits, by_class.get(cls, native))
    elif method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            bits = _scheme_bits(int(w.get("num_bits", 16)), w.get("group_size"), w.get("type") == "float")
            targets = group.get("targets") or ["Linear"]
            classes = {"mixer", "mlp"} if "Linear" in targets else {_classify(t) for t in targets}
            for cls in classes:
                by_class[cls] = min(bits, by_class.get(cls, native))
    if not by_class:
        return WeightBits(native, native, native, native, None)
    nominal = int(min(by_class.values()))
    return WeightBits(by_class.get("mixer", native), by_class.get("mlp", native),
                      by_class.get("head", native), native, nominal)


def padded_vocab_rows(vocab_size: int, tp: int) -> float:
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING / tp


def attention_params(hidden: int, num_heads: int, num_kv_heads_per_rank: int, head_dim: int, tp: int,
                     q_multiplier: int = 1) -> Params:
    """q (x2 with an output gate), k, v, o projections; q-k norms and biases ignored."""
    q_o = (q_multiplier + 1) * hidden * num_heads * head_dim / tp
    kv = 2 * hidden * num_kv_heads_per_rank * head_dim
    return Params(mixer=q_o + kv, other=2 * hidden)


def gated_mlp_params(hidden: int, intermediate: int, tp: int) -> Params:
    """gate_up + down projections (SwiGLU)."""
    return Params(mlp=3 * hidden * intermediate / tp)


def moe_params(hidden: int, num_experts: int, expert_intermediate: int, tp: int, gated: bool = True) -> Params:
    """Routed experts split over TP (no expert parallelism) plus a replicated router."""
    per_expert = (3 if gated else 2) * hidden * expert_intermediate
    return Params(mlp=num_experts * per_expert / tp + hidden * num_experts)


def mamba2_params(hidden: int, intermediate: int, n_groups: int, num_heads: int, state_size: int,
                  conv_kernel: int, tp: int) -> Params:
    """MambaMixer2: in_proj (z, x, B, C, dt), conv1d over x/B/C, out_proj; A, D, dt_bias, gated norm."""
    conv_dim = intermediate + 2 * n_groups * state_size
    mixer = (hidden * (intermediate + conv_dim + num_heads) + conv_dim * conv_kernel + intermediate * hidden) / tp
    return Params(mixer=mixer, other=(3 * num_heads + intermediate) / tp + hidden)


def qwen_vision_params(vision: dict[str, Any], tp: int) -> float:
    """The Qwen3-VL vision tower that vLLM loads for ``Qwen3_5(Moe)ForConditionalGeneration``
    (``models/qwen3_vl.py`` ``Qwen3_VisionTransformer``): patch embedding (Conv3d), position embedding,
    ``depth`` blocks (qkv + proj attention, fc1/fc2 MLP, two LayerNorms, biases) and the patch merger
    (LayerNorm, fc1 over ``spatial_merge_size**2`` patches, fc2 to ``out_hidden_size``), plus one merger per
    ``deepstack_visual_indexes`` entry. Linear layers are column/row parallel (split by TP); embeddings,
    norms and biases of row-parallel layers are counted whole."""
    h, inter = int(vision["hidden_size"]), int(vision["intermediate_size"])
    patch, temporal = int(vision.get("patch_size", 16)), int(vision.get("temporal_patch_size", 2))
    merged = h * int(vision.get("spatial_merge_size", 2)) ** 2
    out = int(vision.get("out_hidden_size", h))
    embed = int(vision.get("in_channels", 3)) * temporal * patch * patch * h + h \
        + int(vision.get("num_position_embeddings", 2304)) * h
    block = (4 * h * h + 2 * h * inter) / tp + 3 * h / tp + inter / tp + 2 * h + 4 * h
    merger = (merged * merged + merged * out) / tp + merged / tp + out + 2 * h
    mergers = 1 + len(vision.get("deepstack_visual_indexes") or [])
    return embed + int(vision["depth"]) * block + mergers * merger
