"""Tiny hybrid models for the CPU engine tests, built with ``transformers`` and random weights.

Each builder writes ``config.json`` + ``model.safetensors`` into a directory and returns it. Prompts are
passed as token ids (the engine runs with ``skip_tokenizer_init=True``), so no tokenizer is needed.
Weights come from a fixed seed: the same directory content on every build.
"""

from __future__ import annotations

import os

VOCAB = 512

# name -> (dtype, builder kwargs); the patterns use Nemotron-H's letters: M = Mamba2, * = attention, - = MLP.
MODELS = ("mamba2", "gdn", "attention", "mamba2_pp", "mamba2_pp_region", "mamba2_longmem", "gdn_longmem", "gdn_pp")


def _long_memory(model):
    """State decay nearly off: every ``A_log`` = -8 (Mamba2: A = -exp(A_log); GDN: g = -exp(A_log) *
    softplus(...)), so a state resumed from the wrong position shows in the greedy tokens."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                param.fill_(-8.0)
    return model


def _save(model, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _nemotron_h(path: str, pattern: str, long_memory: bool = False, kv_heads: int = 2, n_groups: int = 1) -> str:
    import torch
    from transformers import NemotronHConfig, NemotronHForCausalLM

    torch.manual_seed(0)
    config = NemotronHConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        hybrid_override_pattern=pattern,
        num_attention_heads=max(4, kv_heads),
        num_key_value_heads=kv_heads,
        head_dim=32,
        intermediate_size=128,
        mamba_num_heads=4,
        mamba_head_dim=32,  # 4 heads x 32 = 128 = expand x hidden
        n_groups=n_groups,
        ssm_state_size=32,
        conv_kernel=4,
        expand=2,
        chunk_size=64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        dtype="float32",
        initializer_range=0.2,  # wide enough that greedy tokens are not one constant
    )
    model = NemotronHForCausalLM(config).to(torch.float32)
    return _save(_long_memory(model) if long_memory else model, path)


def build_mamba2(path: str) -> str:
    """Float32 Nemotron-H style: 4 Mamba2 + 2 attention + 2 MLP layers."""
    return _nemotron_h(path, "M*M-M*M-")


def build_mamba2_pp(path: str) -> str:
    """Nine layers for 3 pipeline stages, [MM*][M**][M**]: attention on every stage; stage 0 holds two
    state layers on one attention layer, the others one on two, so under a large enough budget the shared
    k is smaller than stage 0 needs and stage 0 pads its attention page stride (the planner's choice)."""
    return _nemotron_h(path, "MM*M**M**")


def build_mamba2_pp_region(path: str) -> str:
    """Twenty-seven layers for 3 pipeline stages, [MM*MM*MMM][*M*M*M---][*M*M*M---], attention pages of 8 KV
    heads (64 KiB at 32 tokens, float32) and Mamba2 states (2 groups) of 19,456 B: stage 0 holds 7 state
    layers on 2 attention layers (r = 4, k = 2 alone), stages 1 and 2 3 on 3 (k = 1); at the shared k = 1
    (a large budget) stage 0 keeps 1 state layer in a state region of 19,456 B per block id, cheaper than padding both attention pages by 13,312 B
    (the planner's ``StageShape.placement``)."""
    return _nemotron_h(path, "MM*MM*MMM" + "*M*M*M---" * 2, kv_heads=8, n_groups=2)


def build_mamba2_longmem(path: str) -> str:
    """``mamba2`` with state decay nearly off (``_long_memory``)."""
    return _nemotron_h(path, "M*M-M*M-", long_memory=True)


def build_gdn_longmem(path: str) -> str:
    """``gdn`` with state decay nearly off (``_long_memory``)."""
    return build_gdn(path, long_memory=True)


def build_gdn_pp(path: str) -> str:
    """``gdn`` with six layers for 3 pipeline stages, [L*][L*][L*]: a Gated DeltaNet and an attention layer
    on every stage."""
    return build_gdn(path, layer_types=["linear_attention", "full_attention"] * 3)


def build_gdn(path: str, long_memory: bool = False, layer_types: list | None = None) -> str:
    """Bfloat16 Qwen3-Next style: 3 Gated DeltaNet + 1 attention layer (the CPU GDN kernel needs bf16)."""
    import torch
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(0)
    layer_types = layer_types or ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
    config = Qwen3NextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        decoder_sparse_step=1,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    model = Qwen3NextForCausalLM(config)
    return _save((_long_memory(model) if long_memory else model).to(torch.bfloat16), path)


def build_attention(path: str) -> str:
    """Float32 Llama: attention only (the plugin must change nothing)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    return _save(LlamaForCausalLM(config).to(torch.float32), path)


BUILDERS = {
    "mamba2": build_mamba2,
    "mamba2_pp": build_mamba2_pp,
    "mamba2_pp_region": build_mamba2_pp_region,
    "gdn": build_gdn,
    "attention": build_attention,
    "mamba2_longmem": build_mamba2_longmem,
    "gdn_longmem": build_gdn_longmem,
    "gdn_pp": build_gdn_pp,
}


def build(name: str, root: str) -> str:
    """Build model ``name`` under ``root`` once; returns its directory."""
    path = os.path.join(root, name)
    if not os.path.exists(os.path.join(path, "config.json")):
        BUILDERS[name](path)
    return path
