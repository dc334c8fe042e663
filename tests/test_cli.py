"""`hybrid-alloc trace` end to end: default run, JSON contract, plot, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_alloc.cli import main, parse_size
from hybrid_alloc.models import load_layout
from hybrid_alloc.models.weights import QUANTIZATION_CONFIGS
from hybrid_alloc.planner.hardware import HARDWARE, KERNEL_BLOCK_SIZE, get_hardware
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.settings import KV_CACHE_DTYPES, VLLM_KV_CACHE_DTYPES, VLLM_QUANTIZATION_METHODS, Settings
from hybrid_alloc.planner.stock import plan_stock

BUNDLED = Path(__file__).parent.parent / "hybrid_alloc" / "models" / "configs"


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_default_run_is_qwen35_9b_on_three_rtx3060(capsys):
    code, out, err = run(["trace"], capsys)
    assert (code, err) == (0, "")
    assert "Qwen3.5-9B" in out and "PP=3" in out and "RTX 3060" in out
    assert out.count("Stage ") == 3 and "estimate" in out and "32,768" in out


def test_json_contract(capsys):
    code, out, _ = run(["trace", "qwen3.5-9b", "--kv-cache-memory", "8GiB", "--max-model-len", "32768",
                        "--pp", "2", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert {"model", "vllm_version", "hardware", "settings", "stages", "stock", "natural"} <= doc.keys()
    assert len(doc["stages"]) == 2
    for stage in doc["stages"]:
        assert {"stage", "layers", "kv_cache_memory_bytes", "stock", "natural"} <= stage.keys()
        assert {"attention", "state"} <= stage["layers"].keys()
        assert {"block_size", "mamba_page_size_padded", "num_groups", "bytes_per_block", "num_blocks"} <= stage[
            "stock"
        ].keys()
        assert {"attention_block_size", "num_attention_blocks", "state_slot_blocks", "state_layers_per_tensor",
                "bytes"} <= stage["natural"].keys()
        assert stage["kv_cache_memory_bytes"] == 8 << 30
    assert {"num_blocks", "kv_cache_size_tokens", "max_concurrency"} <= doc["stock"].keys()
    assert {"kv_cache_size_tokens", "max_concurrency"} <= doc["natural"].keys()
    assert doc["settings"]["max_model_len"] == 32768


def test_json_reports_vllms_refusal(capsys):
    # A budget between what one 32k request needs in the natural pool and in vLLM's (null block included).
    layout = load_layout("qwen3.5-9b")
    settings = Settings(max_model_len=32768, max_num_seqs=256)
    stock = plan_stock(layout, settings, [1 << 34]).stages[0]
    natural = plan_natural(layout, settings, [1 << 34], get_hardware("rtx3060"))
    natural_need = (natural.blocks_per_request(32768) + 1) * natural.stages[0].bytes_per_block
    stock_need = (plan_stock(layout, settings, [1 << 34]).blocks_per_request + 1) * stock.bytes_per_block
    assert natural_need < stock_need
    budget = (natural_need + stock_need) // 2
    code, out, _ = run(["trace", "qwen3.5-9b", "--kv-cache-memory", str(budget), "--max-model-len", "32768",
                        "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["stock"].keys() == {"error"}
    assert "max seq len (32768)" in doc["stock"]["error"]
    assert doc["natural"]["max_concurrency"] >= 1


def test_tables_say_the_natural_layout_starts_where_stock_refuses(capsys):
    # Qwen3.5-9B at 32k: 1080 MiB is short of one request in vLLM's pool, enough in the natural one.
    code, out, err = run(["trace", "qwen3.5-9b", "--kv-cache-memory", "1080MiB", "--max-model-len", "32768"], capsys)
    assert (code, err) == (0, "")
    assert "stock vLLM refuses to start: To serve at least one request" in " ".join(out.split())
    assert "The natural layout starts where stock vLLM refuses" in " ".join(out.split())


def test_not_even_one_request_anywhere_is_a_result(capsys):
    code, out, err = run(["trace", "--kv-cache-memory", "64MiB", "--json"], capsys)
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["stock"].keys() == doc["natural"].keys() == {"error"}
    assert "max seq len (32768)" in doc["stock"]["error"]
    assert doc["natural"]["error"].startswith("hybrid-alloc: one request of max_model_len=32768 needs")
    assert all(c["stock"] is None and c["natural"] is None for c in doc["capacity"])
    code, out, err = run(["trace", "--kv-cache-memory", "64MiB"], capsys)
    assert (code, err) == (0, "")
    assert out.count("refused") >= 6 and "the natural layout (hybrid-alloc's plugin) refuses to start" in out


def test_max_model_len_above_the_config_is_vllms_refusal(capsys, monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    argv = ["trace", "nemotron-h-8b", "--max-model-len", "32768", "--kv-cache-memory", "4GiB"]
    code, out, err = run([*argv, "--json"], capsys)
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["stock"] == doc["natural"] and doc["stages"] == doc["capacity"] == []
    assert doc["stock"]["error"].startswith(
        "User-specified max_model_len (32768) is greater than the derived max_model_len "
        "(max_position_embeddings=8192.0 or model_max_length=None in model's config.json)."
    )
    assert doc["derived_max_model_len"] == {"value": 8192.0, "key": "max_position_embeddings", "default": 8192}
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "") and "vLLM refuses to start" in out and "Stage 0" not in out
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")  # vLLM starts, so does the trace
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0 and "num_blocks" in json.loads(out)["stock"]


def test_omitted_max_model_len_is_the_derived_one(capsys):
    code, out, _ = run(["trace", "nemotron-h-8b", "--kv-cache-memory", "4GiB", "--json"], capsys)
    assert code == 0 and json.loads(out)["settings"]["max_model_len"] == 8192


def test_held_at_once_and_logged_concurrency_are_told_apart(capsys):
    # issue 13: Llama-3.1-8B, 8 GiB, 32k: vLLM logs 2.00x; its pool holds 1 (block 0 is the null block)
    code, out, _ = run(["trace", "llama-3.1-8b", "--kv-cache-memory", "8GiB", "--max-model-len", "32768"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "2.00x" in text
    assert "stock vLLM: 1 request(s) of 32,768 tokens held at once where vLLM's log line reads 2.00x" in text


def test_plot_writes_a_png(tmp_path, capsys):
    path = tmp_path / "bytes.png"
    code, _, err = run(["trace", "--plot", str(path)], capsys)
    assert (code, err) == (0, "")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad_config(tmp_path, name: str) -> str:
    path = tmp_path / name
    if name == "broken.json":
        path.write_text("{not json")
    else:  # Llama-3.1-8B without hidden_size
        config = json.loads((BUNDLED / "meta-llama--Llama-3.1-8B.json").read_text())
        del config["hidden_size"]
        path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["trace", "no-such-model"], "no-such-model"),
        (["trace", "{tmp}/missing.json"], "missing.json"),
        (["trace", "{broken.json}"], "broken.json"),
        (["trace", "{fields.json}"], "fields.json: missing field 'hidden_size'"),
        (["trace", "--gpu-memory", "4GiB"], "--kv-cache-memory"),
        (["trace", "--pp", "0"], "--pp"),
        (["trace", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["trace", "--kv-cache-memory", "12XB"], "--kv-cache-memory"),
        (["trace", "--hardware", "tpu"], "--hardware"),
        (["trace", "--kv-cache-dtype", "int4"], "--kv-cache-dtype"),
        (["trace", "--pp-layer-partition", "10,10"], "partition"),
        (["trace", "--plot", "/nonexistent-dir/plot.png"], "/nonexistent-dir/plot.png"),
        (["trace", "--hardware", "cpu"], "--kv-cache-memory"),
        (["trace", "--kv-cache-dtype", "nvfp4"], "--kv-cache-dtype nvfp4"),
        (["trace", "--block-size", "0"], "--block-size"),
        (["trace", "--kv-cache-memory", "4GiB", "--block-size", "8"], "--block-size 8"),
        (["trace", "--mamba-block-size", "256", "--no-prefix-caching"], "--mamba-block-size"),
        (["trace", "--mamba-cache-mode", "all"], "--mamba-cache-mode"),
        (["trace", "--quantization", "int3"], "--quantization"),
        (["trace", "--quantization", "compressed-tensors"], "--quantization compressed-tensors"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    argv = [
        a.replace("{tmp}", str(tmp_path)).replace("{broken.json}", _bad_config(tmp_path, "broken.json"))
        .replace("{fields.json}", _bad_config(tmp_path, "fields.json"))
        for a in argv
    ]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_module_entry_point_fails_cleanly():
    result = subprocess.run(
        [sys.executable, "-m", "hybrid_alloc", "trace", "no-such-model"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [("12GiB", 12 << 30), ("8GB", 8 * 10**9), ("512MiB", 512 << 20), ("1234", 1234), ("1.5gib", 3 << 29),
     ("4 KiB", 4096)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "-1GiB", "GiB", "", "1e9"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_trace_over_every_bundled_config_takes_under_3_s():
    spec = importlib.util.spec_from_file_location("time_trace", Path(__file__).parent.parent / "tools" / "time_trace.py")
    time_trace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(time_trace)
    seconds = time_trace.time_all()
    assert len(seconds) >= 20 and sum(seconds.values()) < time_trace.LIMIT_S


# --- vLLM's engine flags and the GPU profiles (issue 13, items 6 and 7) ---

VERBATIM = BUNDLED / "verbatim"
PINNED = ["--kv-cache-memory", "8GiB", "--max-model-len", "32768"]


def _json(argv, capsys) -> dict:
    code, out, err = run(["trace", *argv, "--json"], capsys)
    assert (code, err) == (0, ""), err
    return json.loads(out)


def _without_settings(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "settings"}


@pytest.mark.parametrize("dtype", VLLM_KV_CACHE_DTYPES)
def test_every_vllm_kv_cache_dtype_plans_or_fails_in_one_line(dtype, capsys):
    code, out, err = run(["trace", "qwen3.5-9b", *PINNED, "--kv-cache-dtype", dtype], capsys)
    if dtype == "float16":  # a bfloat16 model: vLLM refuses an explicit float KV dtype that differs
        assert code == 2 and err.count("\n") == 1 and "incompatible with the model dtype bfloat16" in err
    elif dtype in KV_CACHE_DTYPES:
        assert (code, err) == (0, "")
    else:
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert f"--kv-cache-dtype {dtype}" in err and ", ".join(KV_CACHE_DTYPES) in err


def test_fp8_spellings_are_one_byte_fp8(capsys):
    """fp8 = fp8_e4m3; fp8_e5m2 has the same 1-byte pages (its backend differs only where FlashAttention
    takes e4m3 alone: SM90 / SM10.x)."""
    fp8 = _without_settings(_json(["qwen3.5-9b", *PINNED, "--kv-cache-dtype", "fp8"], capsys))
    assert _without_settings(_json(["qwen3.5-9b", *PINNED, "--kv-cache-dtype", "fp8_e4m3"], capsys)) == fp8
    e5m2 = _without_settings(_json(["qwen3.5-9b", *PINNED, "--kv-cache-dtype", "fp8_e5m2"], capsys))
    assert e5m2 == fp8  # rtx3060: FlashInfer for both
    bf16 = _json(["qwen3.5-9b", *PINNED], capsys)
    assert fp8["stages"][0]["stock"]["block_size"] == 2 * bf16["stages"][0]["stock"]["block_size"]


def test_block_size_and_mamba_block_size(capsys):
    base = _json(["llama-3.1-8b", *PINNED], capsys)
    assert base["stages"][0]["stock"]["block_size"] == 16
    assert _json(["llama-3.1-8b", *PINNED, "--block-size", "64"], capsys)["stages"][0]["stock"]["block_size"] == 64
    # hybrid: the alignment raises it only when the state page needs more
    hybrid = _json(["qwen3.5-9b", *PINNED], capsys)["stages"][0]["stock"]["block_size"]
    assert _json(["qwen3.5-9b", *PINNED, "--block-size", str(2 * hybrid)], capsys)["stages"][0]["stock"][
        "block_size"] == 2 * hybrid
    # --mamba-block-size: overwritten by the alignment on a stage with attention (vLLM's parity:
    # tests/test_stock_parity_flags.py)
    assert _without_settings(_json(["qwen3.5-9b", *PINNED, "--mamba-block-size", "256"], capsys)) == \
        _without_settings(_json(["qwen3.5-9b", *PINNED], capsys))


def test_mamba_cache_mode_has_no_effect(capsys):
    base = _without_settings(_json(["qwen3.5-9b", *PINNED], capsys))
    code, out, err = run(["trace", "qwen3.5-9b", *PINNED, "--mamba-cache-mode", "align", "--json"], capsys)
    assert (code, err) == (0, "") and _without_settings(json.loads(out)) == base
    code, out, err = run(["trace", "qwen3.5-9b", *PINNED, "--mamba-cache-mode", "none", "--json"], capsys)
    assert code == 0 and _without_settings(json.loads(out)) == base
    assert err.count("\n") == 1 and "--mamba-cache-mode none has no effect" in err


@pytest.mark.parametrize("method", VLLM_QUANTIZATION_METHODS)
def test_every_vllm_quantization_method_estimates_or_fails_in_one_line(method, capsys):
    code, out, err = run(["trace", "qwen3.5-9b", "--hardware", "h100", "--max-model-len", "32768",
                          "--quantization", method], capsys)
    if method in QUANTIZATION_CONFIGS:
        assert (code, err) == (0, "")
    else:
        assert code == 2 and out == "" and err.count("\n") == 1 and f"--quantization {method}" in err


def _decoder_weights(layout) -> int:
    return sum(layout.weight_bytes_per_decoder_layer)


def test_quantization_shrinks_the_weights_of_a_bundled_name():
    """AWQ / GPTQ: 4-bit weights with an fp16 scale and zero per 128 (4.25 bits) in the projections; norms
    stay bf16. NVFP4: 4 bits + an fp8 scale per 16 (4.5)."""
    bf16 = _decoder_weights(load_layout("qwen3.5-9b"))
    for method, bits in (("awq", 4.25), ("gptq_marlin", 4.25), ("modelopt_fp4", 4.5), ("fp8", 8)):
        ratio = _decoder_weights(load_layout("qwen3.5-9b", quantization=method)) / bf16
        assert bits / 16 < ratio < bits / 16 + 0.005, method
    assert any("awq checkpoint" in note for note in load_layout("qwen3.5-9b", quantization="awq").notes)


def test_quantization_must_match_the_checkpoint(capsys):
    nvfp4 = str(VERBATIM / "nvidia--Qwen3.6-27B-NVFP4.json")
    assert load_layout(nvfp4, quantization="modelopt").weight_bytes_per_decoder_layer == \
        load_layout(nvfp4).weight_bytes_per_decoder_layer
    code, out, err = run(["trace", nvfp4, "--quantization", "gptq"], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not match" in err and "(gptq)" in err


def test_language_model_only_drops_the_vision_encoder():
    """Qwen3.5-27B's vision tower: a SigLIP2-so400m-sized ViT (27 blocks of width 1152, ~0.4B parameters)
    plus its patch merger (~45M): 0.4-0.5B parameters in bf16."""
    path = str(VERBATIM / "Qwen--Qwen3.5-27B.json")
    full, text_only = load_layout(path), load_layout(path, language_model_only=True)
    vision = full.encoder_weight_bytes / 2
    assert 0.4e9 < vision < 0.5e9 and full.encoder_activation_bytes > 0
    assert (text_only.encoder_weight_bytes, text_only.encoder_activation_bytes) == (0, 0)
    assert full.embedding_weight_bytes == text_only.embedding_weight_bytes
    assert any("--language-model-only" in note for note in text_only.notes)
    assert full.weight_bytes_per_decoder_layer == text_only.weight_bytes_per_decoder_layer
    # a text-only architecture: nothing to drop
    assert load_layout("llama-3.1-8b", language_model_only=True) == load_layout("llama-3.1-8b")


def _stage0_lines(doc: dict) -> dict[str, int]:
    return {line["label"]: line["bytes"] for line in doc["stages"][0]["budget"]}


def test_default_trace_is_text_only_and_says_so(capsys):
    """The embedded default is Qwen3.5-9B as if --language-model-only were given: the same plan as naming it
    with that flag, the header says so, and --no-language-model-only puts the tower back on stage 0."""
    code, out, err = run(["trace"], capsys)
    assert (code, err) == (0, "")
    assert "language model only (--language-model-only): the vision tower is not loaded" in out.split("KV cache budget")[0]
    default = _json([], capsys)
    assert default == _json(["qwen3.5-9b", "--pp", "3", "--max-model-len", "32768", "--language-model-only"], capsys)
    assert default["settings"]["language_model_only"] is True
    assert not any("vision" in label or "encoder" in label for label in _stage0_lines(default))
    tower = _json(["--no-language-model-only"], capsys)
    layout = load_layout("qwen3.5-9b")
    assert layout.encoder_weight_bytes > 0
    assert _stage0_lines(tower)["weights: vision encoder"] == -layout.encoder_weight_bytes
    assert tower["stages"][0]["kv_cache_memory_bytes"] < default["stages"][0]["kv_cache_memory_bytes"]
    assert [s["kv_cache_memory_bytes"] for s in tower["stages"][1:]] == \
        [s["kv_cache_memory_bytes"] for s in default["stages"][1:]]
    code, out, _ = run(["trace", "--no-language-model-only"], capsys)
    assert "vision tower loaded (no --language-model-only)" in out.split("KV cache budget")[0]


def test_a_named_qwen35_9b_counts_its_vision_tower(capsys):
    """`trace qwen3.5-9b` traces what `vllm serve Qwen/Qwen3.5-9B` loads: the bundled config has the
    checkpoint's vision_config, so the tower's weights and its profiling peak are on stage 0."""
    layout = load_layout("qwen3.5-9b")
    doc = _json(["qwen3.5-9b", "--max-model-len", "32768", "--pp", "3"], capsys)
    lines = _stage0_lines(doc)
    assert lines["weights: vision encoder"] == -layout.encoder_weight_bytes
    assert lines["activations (encoder profiling)"] == -layout.encoder_activation_bytes
    assert doc["settings"]["language_model_only"] is False


@pytest.mark.parametrize("hardware", ["l4", "l40s", "rtx3090", "rtx5090", "gb10", "h20", "b200"])
def test_trace_on_each_new_profile(hardware, capsys):
    """No traceback; the budget is what the profile's memory leaves; both layouts fit requests; blocks are
    whole kernel blocks of the backend vLLM picks there."""
    hw = get_hardware(hardware)
    doc = _json(["qwen3.5-9b", "--hardware", hardware, "--max-model-len", "32768", "--pp", "2"], capsys)
    for stage in doc["stages"]:
        assert 0 < stage["kv_cache_memory_bytes"] < hw.memory_bytes * 0.92
        assert stage["stock"]["block_size"] % KERNEL_BLOCK_SIZE[hw.attention_backend] == 0
    assert doc["stock"]["max_concurrency"] >= 1
    assert doc["natural"]["max_concurrency"] >= doc["stock"]["max_concurrency"]
    assert doc["settings"]["max_num_seqs"] == hw.default_max_num_seqs


def test_readme_lists_every_profile():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in HARDWARE:
        assert f"`{name}`" in readme, name


def test_readme_excerpt_is_the_default_trace():
    """Every table row and suggestion of the README's excerpt of `hybrid-alloc trace` is in today's output
    (the excerpt went stale once: 140 physical where the trace said 139)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    excerpt = readme.split("Excerpt of `hybrid-alloc trace` (no arguments):", 1)[1].split("```", 2)[1]
    out = subprocess.run([sys.executable, "-m", "hybrid_alloc", "trace"], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "COLUMNS": "120"}).stdout
    lines = [line for line in excerpt.splitlines()
             if line.startswith(("│", "Suggestion", "Stage ", "Qwen/", "language model only"))]
    assert len(lines) > 10
    missing = [line for line in lines if line.rstrip() not in out]
    assert not missing, missing
