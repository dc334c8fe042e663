"""vLLM's CPU-platform state-dtype rule (hybrid_alloc.models.cpu_platform) and how the trace applies it.

Parity with vLLM's own ``CpuPlatform.check_and_update_config`` under both answers of the AVX512-BF16 check is
in test_models_vllm_parity.py (RULE_CASES); on the real CPU engine in tests/engine/test_engine_cpu_rule.py.
"""

from __future__ import annotations

import json

import pytest

from hybrid_alloc.cli import main
from hybrid_alloc.models import load_layout
from hybrid_alloc.models.cpu_platform import cpu_ssm_cache_dtype, host_has_avx512_bf16


def test_host_answer_is_torchs():
    """The trace reads /proc/cpuinfo (no torch in the demo environment); vLLM asks torch: same answer."""
    torch = pytest.importorskip("torch")
    assert host_has_avx512_bf16() == torch.cpu._is_avx512_bf16_supported()


@pytest.mark.parametrize("flags, expected", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 avx512f avx512_vnni avx512_bf16x", False),  # whole flags only
    ("fpu avx2", False),
])
def test_host_answer_from_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\n")
    assert host_has_avx512_bf16(cpuinfo) is expected
    assert host_has_avx512_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize("dtype, linear_attention, expected", [
    ("auto", True, "float32"),
    ("auto", False, "float32"),
    ("float32", False, "float32"),
    ("bfloat16", True, "bfloat16"),  # kept for the "accelerated GDN" backend
    ("float16", True, "float16"),
    ("bfloat16", False, "float32"),
])
def test_rule(dtype, linear_attention, expected):
    assert cpu_ssm_cache_dtype(dtype, linear_attention) == expected


def state_dtypes(model: str, **kwargs) -> list[str]:
    return [t.dtype for t in load_layout(model, **kwargs).state_layers[0].state]


def test_layout_under_each_answer():
    # Falcon-H1 (bf16, ssm "auto"): bf16 state without the rule, float32 with it, even when asked for bf16.
    assert state_dtypes("falcon-h1-0.5b") == ["bfloat16", "bfloat16"]
    assert state_dtypes("falcon-h1-0.5b", cpu_avx512_bf16=True) == ["bfloat16", "float32"]
    assert state_dtypes("falcon-h1-0.5b", cpu_avx512_bf16=True, mamba_ssm_cache_dtype="bfloat16") == ["bfloat16", "float32"]
    # Qwen3-Next ("linear_attention" layer types): an explicit bf16 survives the rule.
    assert state_dtypes("qwen3-next-80b-a3b-instruct", cpu_avx512_bf16=True) == ["bfloat16", "float32"]
    assert state_dtypes("qwen3-next-80b-a3b-instruct", cpu_avx512_bf16=True,
                        mamba_ssm_cache_dtype="bfloat16") == ["bfloat16", "bfloat16"]
    layout = load_layout("falcon-h1-0.5b", cpu_avx512_bf16=True)
    assert any("AVX512-BF16" in note for note in layout.notes)
    assert not any("AVX512-BF16" in note for note in load_layout("falcon-h1-0.5b").notes)


def trace_json(argv, capsys) -> dict:
    assert main(["trace", "falcon-h1-0.5b", "--kv-cache-memory", "1GiB", "--max-model-len", "4096", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_trace_states_the_rule(capsys):
    on = trace_json(["--hardware", "cpu", "--cpu-avx512-bf16"], capsys)
    off = trace_json(["--hardware", "cpu", "--no-cpu-avx512-bf16"], capsys)
    host = trace_json(["--hardware", "cpu"], capsys)
    gpu = trace_json([], capsys)
    assert on["cpu_platform_rule"] == {"avx512_bf16": True, "source": "stated", "state_dtypes": ["bfloat16", "float32"]}
    assert off["cpu_platform_rule"] == {"avx512_bf16": False, "source": "stated", "state_dtypes": ["bfloat16"]}
    assert host["cpu_platform_rule"]["source"] == "host"
    assert host["cpu_platform_rule"]["avx512_bf16"] == host_has_avx512_bf16()
    assert gpu["cpu_platform_rule"] is None
    # float32 state: larger slots, fewer requests at once
    assert on["stages"][0]["natural"]["state_slot_blocks"] > off["stages"][0]["natural"]["state_slot_blocks"]
    assert on["capacity"][0]["natural"] < off["capacity"][0]["natural"]


def test_trace_rule_flag_needs_the_cpu_backend(capsys):
    code = main(["trace", "falcon-h1-0.5b", "--cpu-avx512-bf16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--hardware cpu" in err


def test_trace_mamba_ssm_cache_dtype(capsys):
    doc = trace_json(["--hardware", "cpu", "--no-cpu-avx512-bf16", "--mamba-ssm-cache-dtype", "float32"], capsys)
    assert doc["cpu_platform_rule"]["state_dtypes"] == ["bfloat16", "float32"]
    with pytest.raises(SystemExit) as exit_:
        main(["trace", "falcon-h1-0.5b", "--mamba-ssm-cache-dtype", "fp8"])
    assert exit_.value.code == 2
