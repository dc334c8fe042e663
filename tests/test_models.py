"""hybrid_alloc.models without vLLM: every bundled config loads, layer kinds come from the config's own
fields, bad input fails with one ModelConfigError line. Shapes and head counts are checked against vLLM
itself in test_models_vllm_parity.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_alloc.errors import ModelConfigError
from hybrid_alloc.models import bundled_models, load_layout
from hybrid_alloc.models.bundled import CONFIG_DIR, bundled_files

# Tiny configs written the way vLLM's model files read them (none of these families is bundled).
TINY_CONFIGS = {
    "zamba2": {
        "architectures": ["Zamba2ForCausalLM"], "model_type": "zamba2", "torch_dtype": "float32",
        "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "num_mem_blocks": 2,
        "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"],
        "n_mamba_heads": 4, "mamba_ngroups": 1, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2,
        "intermediate_size": 128, "vocab_size": 256,
    },
    "lfm2": {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "torch_dtype": "bfloat16",
        "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "layer_types": ["conv", "full_attention", "conv", "full_attention"],
        "conv_dim": 64, "block_dim": 64, "conv_L_cache": 3, "intermediate_size": 128, "vocab_size": 256,
    },
}


def write_config(tmp_path: Path, data: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def raw(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data.get("text_config", data)


@pytest.mark.parametrize("path", bundled_files(), ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_bundled_config_loads(path: Path):
    layout = load_layout(str(path))
    assert layout.layers and layout.num_decoder_layers == len(layout.weight_bytes_per_decoder_layer)
    assert all(w > 0 for w in layout.weight_bytes_per_decoder_layer)
    decoder = [layer.decoder_layer for layer in layout.layers]
    assert decoder == sorted(decoder) and decoder[-1] < layout.num_decoder_layers
    assert len({layer.name for layer in layout.layers}) == len(layout.layers)
    for layer in layout.state_layers:
        assert layer.state_page_bytes > 0 and layer.num_kv_heads == 0
    for layer in layout.attention_layers:
        assert layer.num_kv_heads > 0 and layer.head_size > 0 and not layer.state


def test_bundled_names_resolve_case_insensitively_and_by_hf_id():
    names = bundled_models()
    for required in ("qwen3.5-9b", "nemotron-h-8b", "falcon-h1-0.5b", "granite-4.0-h-tiny", "jamba-mini-1.5",
                     "llama-3.1-8b"):
        assert (CONFIG_DIR / names[required]).is_file()
    by_id = load_layout("Qwen/Qwen3.5-9B")
    assert load_layout("QWEN3.5-9B") == by_id
    assert by_id.name == "Qwen/Qwen3.5-9B" and by_id.source == "bundled:Qwen--Qwen3.5-9B.json"


def test_folder_and_file_paths(tmp_path: Path):
    src = CONFIG_DIR / bundled_models()["nemotron-h-8b"]
    write_config(tmp_path, json.loads(src.read_text()))
    assert load_layout(str(tmp_path)).layers == load_layout(str(src)).layers == load_layout("nemotron-h-8b").layers


@pytest.mark.parametrize("name", ["qwen3.5-9b", "qwen3.5-27b", "qwen3-next-80b-a3b-instruct", "qwen3.6-27b-nvfp4"])
def test_qwen_layer_kinds_follow_layer_types(name: str):
    path = CONFIG_DIR / bundled_models()[name]
    types = raw(path)["layer_types"]
    layout = load_layout(name)
    assert [layer.kind for layer in layout.layers] == ["gdn" if t == "linear_attention" else "attention" for t in types]
    assert len(layout.state_layers) == 3 * len(layout.attention_layers)  # full_attention_interval 4


def test_qwen_layer_types_fall_back_to_full_attention_interval(tmp_path: Path):
    data = raw(CONFIG_DIR / bundled_models()["qwen3.5-9b"])
    data = {k: v for k, v in data.items() if k != "layer_types"} | {"full_attention_interval": 2}
    layout = load_layout(str(write_config(tmp_path, data)))
    assert [layer.kind for layer in layout.layers[:4]] == ["gdn", "attention", "gdn", "attention"]


def test_nested_text_config_equals_flattened(tmp_path: Path):
    """The flattened bundled copy and a nested form of the same fields read identically."""
    flat = json.loads((CONFIG_DIR / bundled_models()["qwen3.5-9b"]).read_text())
    text = {k: v for k, v in flat.items() if k not in ("architectures", "top_level_model_type")}
    nested = {"architectures": flat["architectures"], "model_type": flat["top_level_model_type"],
              "text_config": text, "vision_config": {}}
    assert load_layout(str(write_config(tmp_path, nested))).layers == load_layout("qwen3.5-9b").layers


@pytest.mark.parametrize("name", ["nemotron-nano-9b-v2", "nemotron-h-8b", "nemotron-3-nano-30b-a3b"])
def test_nemotron_layer_kinds_follow_pattern(name: str):
    pattern = raw(CONFIG_DIR / bundled_models()[name])["hybrid_override_pattern"]
    layout = load_layout(name)
    assert layout.num_decoder_layers == len(pattern)
    assert [(layer.decoder_layer, layer.kind) for layer in layout.layers] == [
        (i, "mamba2" if c == "M" else "attention") for i, c in enumerate(pattern) if c in "M*"]


def test_falcon_h1_holds_attention_and_mamba_in_every_layer():
    layout = load_layout("falcon-h1-0.5b")
    n = layout.num_decoder_layers
    assert [(layer.decoder_layer, layer.kind) for layer in layout.layers] == [
        (i, kind) for i in range(n) for kind in ("attention", "mamba2")]


def test_jamba_and_granite_layer_kinds():
    jamba = raw(CONFIG_DIR / bundled_models()["jamba-mini-1.5"])
    kinds = [layer.kind for layer in load_layout("jamba-mini-1.5").layers]
    assert kinds == ["attention" if i % jamba["attn_layer_period"] == jamba["attn_layer_offset"] else "mamba1"
                     for i in range(jamba["num_hidden_layers"])]
    granite = raw(CONFIG_DIR / bundled_models()["granite-4.0-h-tiny"])
    kinds = [layer.kind for layer in load_layout("granite-4.0-h-tiny").layers]
    assert kinds == ["mamba2" if t == "mamba" else "attention" for t in granite["layer_types"]]


def test_attention_only_models_have_no_state():
    layout = load_layout("llama-3.1-8b")
    assert not layout.state_layers and not layout.is_hybrid and len(layout.attention_layers) == 32


def test_tiny_zamba2_and_lfm2(tmp_path: Path):
    zamba = load_layout(str(write_config(tmp_path, TINY_CONFIGS["zamba2"], "zamba2.json")))
    assert [layer.kind for layer in zamba.layers].count("mamba2") == 6
    assert [layer.decoder_layer for layer in zamba.attention_layers] == [1, 3, 5]
    lfm2 = load_layout(str(write_config(tmp_path, TINY_CONFIGS["lfm2"], "lfm2.json")))
    assert [layer.kind for layer in lfm2.layers] == ["short_conv", "attention", "short_conv", "attention"]


def test_tp_splits_kv_heads_and_replicates_past_their_count():
    kv = raw(CONFIG_DIR / bundled_models()["qwen3.5-9b"])["num_key_value_heads"]
    assert load_layout("qwen3.5-9b", tp=2).attention_layers[0].num_kv_heads == kv // 2
    assert load_layout("qwen3.5-9b", tp=2 * kv).attention_layers[0].num_kv_heads == 1


def test_speculative_tokens_lengthen_conv_state():
    base = load_layout("nemotron-h-8b").state_layers[0].state[0].shape
    assert load_layout("nemotron-h-8b", num_speculative_tokens=2).state_layers[0].state[0].shape == (
        base[0] + 2, base[1])


def test_quantized_checkpoint(tmp_path: Path):
    nvfp4 = load_layout("qwen3.6-27b-nvfp4")
    plain = load_layout("qwen3.5-27b")
    assert nvfp4.quant_bits == 4 and plain.quant_bits is None
    assert sum(nvfp4.weight_bytes_per_decoder_layer) < 0.5 * sum(plain.weight_bytes_per_decoder_layer)
    assert nvfp4.resolve_kv_cache_dtype() == "fp8" and plain.resolve_kv_cache_dtype() == "bfloat16"
    awq = raw(CONFIG_DIR / bundled_models()["qwen3.5-9b"]) | {
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    awq_layout = load_layout(str(write_config(tmp_path, awq)))
    assert awq_layout.quant_bits == 4
    assert awq_layout.layers == load_layout("qwen3.5-9b").layers


# Published parameter counts (model cards): the weight estimate must stay within 10% of them.
PUBLISHED_PARAMS = {"qwen3.5-9b": 9.0e9, "nemotron-h-8b": 8.0e9, "llama-3.1-8b": 8.03e9, "qwen3-8b": 8.2e9,
                    "qwen3.5-27b": 27e9, "nemotron-3-nano-30b-a3b": 31.6e9, "qwen3.5-397b-a17b": 397e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_weight_estimate_near_published_parameter_count(name: str):
    layout = load_layout(name)
    total = sum(layout.weight_bytes_per_decoder_layer) + layout.embedding_weight_bytes + layout.head_weight_bytes
    assert total / 2 == pytest.approx(PUBLISHED_PARAMS[name], rel=0.10)  # bf16: 2 bytes per parameter
    tp2 = load_layout(name, tp=2)
    assert sum(tp2.weight_bytes_per_decoder_layer) == pytest.approx(sum(layout.weight_bytes_per_decoder_layer) / 2,
                                                                    rel=0.05)


@pytest.mark.parametrize("model, message", [
    ("no-such-model", "qwen3.5-9b"),
    ("/nonexistent/config.json", "no such file"),
])
def test_unknown_model_names_the_bundled_ones(model: str, message: str):
    with pytest.raises(ModelConfigError, match=message):
        load_layout(model)


def test_bad_inputs_raise_one_line_errors(tmp_path: Path):
    cases = {
        "bad.json": ("{not json", "not valid JSON"),
        "list.json": ("[1, 2]", "expected a JSON object"),
        "unsupported.json": (json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
                             "unsupported model_type 'gpt2'.*supported: .*nemotron_h"),
        "missing.json": (json.dumps({"model_type": "llama", "hidden_size": 64}), "missing field 'num_hidden_layers'"),
        "lfm2.json": (json.dumps({k: v for k, v in TINY_CONFIGS["lfm2"].items() if k != "conv_dim"}),
                      "missing field 'conv_dim'"),
        "pattern.json": (json.dumps({"model_type": "nemotron_h", "hybrid_override_pattern": "M*X"}),
                         "unknown layer types"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ModelConfigError, match=message) as err:
            load_layout(str(path))
        assert "\n" not in str(err.value) and (name in str(err.value) or "gpt2" in str(err.value))
    unreadable = tmp_path / "folder.json"
    unreadable.mkdir()
    with pytest.raises(ModelConfigError, match="folder has no config.json"):
        load_layout(str(unreadable))
    with pytest.raises(ModelConfigError, match="not divisible by tensor parallel size 3"):
        load_layout("qwen3.5-9b", tp=3)


def test_no_vllm_or_torch_import():
    """Checked in a fresh process: other test modules import vLLM."""
    code = ("import sys; from hybrid_alloc.models import load_layout; load_layout('qwen3.5-9b', tp=2); "
            "assert not {'vllm', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_nemotron_layer_list_wins_over_legacy_pattern(tmp_path: Path):
    """transformers' NemotronHConfig reads hybrid_override_pattern only when no layer list is given."""
    data = raw(CONFIG_DIR / bundled_models()["nemotron-h-8b"]) | {
        "layers_block_type": ["mamba", "attention", "mlp"]}
    layout = load_layout(str(write_config(tmp_path, data)))
    assert layout.num_decoder_layers == 3 and [layer.kind for layer in layout.layers] == ["mamba2", "attention"]


def test_short_layer_list_is_an_error(tmp_path: Path):
    data = raw(CONFIG_DIR / bundled_models()["qwen3.5-9b"])
    data = data | {"layer_types": data["layer_types"][:-1]}
    with pytest.raises(ModelConfigError, match="'layer_types' lists 31 layers, fewer than 32"):
        load_layout(str(write_config(tmp_path, data)))
