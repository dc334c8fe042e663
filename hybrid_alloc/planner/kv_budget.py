"""The KV cache budget of each pipeline stage (one GPU each; every TP rank of a stage gets the same).

``--kv-cache-memory`` pins it, as vLLM's ``--kv-cache-memory-bytes`` does. Otherwise it is estimated the
way ``Worker.determine_available_memory`` measures it:

    budget = ceil(memory x gpu_memory_utilization)          (vLLM's requested_memory)
             - weights of the stage                         (decoder layers; embeddings and a multimodal
                                                             encoder on the first stage, final norm + LM
                                                             head on the last)
             - non-torch memory                             (NON_TORCH, + NCCL when tp x pp > 1)
             - peak activations of the profiling run        (the larger of the decoder's,
                                                             ACTIVATION_BYTES_PER_TOKEN x max_num_batched_tokens,
                                                             and the encoder's, layout.encoder_activation_bytes)
             - CUDA graphs                                  (graphs vLLM captures x the stage's decoder layers
                                                             x CUDA_GRAPH_BYTES_PER_[STATE_]LAYER, on CUDA)

Every subtracted line is an estimate (vLLM measures them at start-up); the output labels them so. Their
plausible error, from real start-up logs (tests/fixtures/startup_logs): weights within 1% of vLLM's "Model
loading took" for unquantised checkpoints whose config is bundled; the activation peak 40% low where a
log breaks it down at 1024 requests (the sampler warm-up, not modelled) and +-30% for other widths than
Llama-3.1-8B's at few requests; CUDA graphs within 20% of most logged estimates, 40% of all but one driver
outlier; non-torch memory as logged on one GPU, uncertain with TP (about 130 MiB in all in one TP 4 log).
The 7 fair fixtures land within 3% in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import ModelLayout
from hybrid_alloc.planner.hardware import HardwareProfile
from hybrid_alloc.planner.pipeline import pp_indices
from hybrid_alloc.planner.settings import Settings

MiB = 1 << 20
GiB = 1 << 30
NON_TORCH = 256 * MiB  # cuBLAS / attention workspaces created by the profile run
NCCL = 512 * MiB  # communicator buffers when the stage talks to other GPUs
# Peak activations of the profile run per batched token (its forward pass over max_num_batched_tokens):
# "Memory profiling" breakdowns of Llama-3.1-8B (hidden size 4096) give ~0.9-1.1 GiB at 8192 tokens
# (tests/fixtures/startup_logs/vllm-gce-a100-40gb-llama31-8b-eager); the layout has no hidden size, so
# smaller models are overestimated. Not modelled: vLLM's sampler warm-up after the forward pass (one
# float32 logits row per request over the vocabulary, ~15 B per logit with the top-k/top-p sort), the
# larger peak at many requests and large vocabularies: 1.89 GiB logged for Llama-3.1-8B at 1024 requests
# on an H100 (llm-d-planner's sweep) against 1.125 GiB here (see tests/test_budget_real_logs.py).
ACTIVATION_BYTES_PER_TOKEN = 144 * 1024
# Memory of one captured CUDA graph per decoder layer of the stage (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS,
# on by default; a PIECEWISE graph is one piece per layer), from vLLM's "Estimated CUDA graph memory"
# lines (tests/fixtures/startup_logs). Attention (and MLP-only) layers: Llama-3.1-8B, 32 layers, gives
# 202 KiB (86 graphs, A100/A6000/L40S) and 270 KiB (102 graphs, H100): 236 KiB. A state-mixer layer
# (GDN, Mamba) costs about twice that: Qwen3.5-35B-A3B's 1.32 GiB for 86 graphs over 10 attention and
# 30 GDN layers leaves 458 KiB per GDN layer; Qwen3.6-27B's logs (16 + 48 layers) give 300-490 KiB per
# layer on average, where these constants give 402 KiB.
CUDA_GRAPH_BYTES_PER_LAYER = 236 * 1024
CUDA_GRAPH_BYTES_PER_STATE_LAYER = 458 * 1024


def default_max_num_batched_tokens(hardware: HardwareProfile) -> int:
    """``vllm serve``'s default on a GPU (``HardwareProfile.default_max_num_batched_tokens``, parity-tested:
    16384 from 160 GiB, 8192 on the other 1024-sequence GPUs, 2048 elsewhere); 2048 for a CPU profile
    given ``--gpu-memory``."""
    return hardware.default_max_num_batched_tokens or 2048


def cudagraph_count(settings: Settings, hardware: HardwareProfile) -> int:
    """The graphs vLLM captures by default (``VllmConfig._set_cudagraph_sizes``, cudagraph_mode
    FULL_AND_PIECEWISE): one PIECEWISE graph per capture size -- [1, 2, 4], every 8 below 256, every 16
    from 256, up to min(max_num_seqs x decode query length x 2, 512; 1024 on SM100) and
    max_num_batched_tokens -- and, without speculative decoding, one FULL decode graph per capture size up
    to max_num_seqs (with it, backends often fall back to PIECEWISE only: not counted)."""
    query_len = 1 + settings.num_speculative_tokens
    ceiling = 1024 if (hardware.compute_capability or (0, 0))[0] == 10 else 512
    largest = min(settings.max_num_seqs * query_len * 2, ceiling, default_max_num_batched_tokens(hardware))
    sizes = [n for n in (1, 2, 4) if n <= largest] + list(range(8, min(largest + 1, 256), 8)) \
        + list(range(256, largest + 1, 16))
    full = [n for n in sizes if n <= settings.max_num_seqs] if settings.num_speculative_tokens == 0 else []
    return len(sizes) + len(full)


def cudagraph_bytes_per_graph(layout: ModelLayout, start: int, end: int) -> int:
    """One captured graph's memory over decoder layers [start, end): a piece per layer, state-mixer
    layers costing CUDA_GRAPH_BYTES_PER_STATE_LAYER, the others CUDA_GRAPH_BYTES_PER_LAYER."""
    state = len({layer.decoder_layer for layer in layout.state_layers if start <= layer.decoder_layer < end})
    return state * CUDA_GRAPH_BYTES_PER_STATE_LAYER + (end - start - state) * CUDA_GRAPH_BYTES_PER_LAYER


@dataclass(frozen=True)
class KVCacheBudgetLine:
    label: str
    bytes: int  # added to the budget (negative: subtracted)
    estimate: bool


@dataclass(frozen=True)
class KVCacheBudget:
    stage: int
    lines: tuple[KVCacheBudgetLine, ...]

    @property
    def bytes(self) -> int:
        return sum(line.bytes for line in self.lines)

    @property
    def estimated(self) -> bool:
        return any(line.estimate for line in self.lines)


def kv_cache_budgets(layout: ModelLayout, settings: Settings, hardware: HardwareProfile) -> list[KVCacheBudget]:
    """One budget per pipeline stage. Raises UserError when a stage has nothing left for the cache."""
    if settings.kv_cache_memory is not None:
        pinned = KVCacheBudgetLine("--kv-cache-memory", settings.kv_cache_memory, estimate=False)
        budgets = [KVCacheBudget(stage, (pinned,)) for stage in range(settings.pp)]
    else:
        budgets = [_estimate(layout, settings, hardware, stage) for stage in range(settings.pp)]
    for budget in budgets:
        if budget.bytes <= 0:
            detail = ", ".join(f"{line.label} {line.bytes / GiB:+.2f} GiB" for line in budget.lines)
            # A weight estimate built on config-class defaults can be far off: say so in the same line.
            defaults = [note for note in layout.notes if note.startswith("absent from the config")]
            caveat = f" (weights estimated with fields {defaults[0]})" if defaults else ""
            raise UserError(
                f"no memory left for the KV cache on pipeline stage {budget.stage}: {detail} = "
                f"{budget.bytes / GiB:.2f} GiB{caveat}; raise --gpu-memory-utilization, --pp or --tp, "
                "or pin the budget with --kv-cache-memory"
            )
    return budgets


def _estimate(layout: ModelLayout, settings: Settings, hardware: HardwareProfile, stage: int) -> KVCacheBudget:
    memory = settings.gpu_memory or hardware.memory_bytes
    if memory is None:
        raise UserError(
            f"--hardware {hardware.name} has no fixed memory: give --kv-cache-memory (vLLM's "
            "VLLM_CPU_KVCACHE_SPACE / --kv-cache-memory-bytes) or --gpu-memory (the host memory)"
        )
    start, end = pp_indices(layout.num_decoder_layers, stage, settings.pp, settings.pp_layer_partition)
    weights = sum(layout.weight_bytes_per_decoder_layer[start:end])
    lines = [
        KVCacheBudgetLine("memory" if settings.gpu_memory else f"memory ({hardware.name})", memory, estimate=False),
        KVCacheBudgetLine(
            f"x {settings.gpu_memory_utilization} (gpu_memory_utilization)",
            ceil(memory * settings.gpu_memory_utilization) - memory,
            estimate=False,
        ),
        KVCacheBudgetLine("weights: decoder layers", -weights, estimate=True),
    ]
    if stage == 0:
        lines.append(KVCacheBudgetLine("weights: embeddings", -layout.embedding_weight_bytes, estimate=True))
        if layout.encoder_weight_bytes:
            lines.append(KVCacheBudgetLine("weights: vision encoder", -layout.encoder_weight_bytes, estimate=True))
    if stage == settings.pp - 1:
        lines.append(KVCacheBudgetLine("weights: final norm + LM head", -layout.head_weight_bytes, estimate=True))
    non_torch = NON_TORCH + (NCCL if settings.tp * settings.pp > 1 else 0)
    lines.append(KVCacheBudgetLine("non-torch memory", -non_torch, estimate=True))
    # The profiling run's peak: the decoder's forward over max_num_batched_tokens, or the multimodal
    # encoder's over the largest input (first stage), whichever is larger (they run one after the other).
    tokens = default_max_num_batched_tokens(hardware)
    activations = ACTIVATION_BYTES_PER_TOKEN * tokens
    if stage == 0 and layout.encoder_activation_bytes > activations:
        lines.append(KVCacheBudgetLine("activations (encoder profiling)", -layout.encoder_activation_bytes,
                                       estimate=True))
    else:
        lines.append(KVCacheBudgetLine(f"activations ({tokens} tokens)", -activations, estimate=True))
    if hardware.is_cuda:
        graphs = cudagraph_count(settings, hardware)
        lines.append(KVCacheBudgetLine(f"CUDA graphs ({graphs})", -graphs * cudagraph_bytes_per_graph(layout, start, end),
                                       estimate=True))
    return KVCacheBudget(stage, tuple(lines))
