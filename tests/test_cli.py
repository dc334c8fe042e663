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
from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.natural import plan_natural
from hybrid_alloc.planner.settings import Settings
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
