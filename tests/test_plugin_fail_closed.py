"""Fail-closed conditions of the plugin, unit level (each with its one reason line)."""

import dataclasses
import os
from types import SimpleNamespace as NS

import pytest

from hybrid_alloc import vllm_versions
from hybrid_alloc.vllm_plugin import fail_closed


def config(**overrides):
    model = NS(is_hybrid=True, enable_sleep_mode=False, is_encoder_decoder=False, use_mla=False, original_max_model_len=1024)
    cache = NS(enable_prefix_caching=False, kv_cache_dtype_skip_layers=[])
    c = NS(
        model_config=model,
        cache_config=cache,
        parallel_config=NS(decode_context_parallel_size=1),
        kv_transfer_config=None,
        num_speculative_tokens=0,
        scheduler_config=NS(disable_hybrid_kv_cache_manager=False),
        attention_config=NS(hisparse_config=None),
    )
    for path, value in overrides.items():
        obj, attr = path.split(".") if "." in path else (None, path)
        setattr(getattr(c, obj) if obj else c, attr, value)
    return c


def test_natural_when_nothing_fails(monkeypatch):
    assert fail_closed.config_reason(config()) is None
    # prefix caching on: vLLM's "align" mode runs on natural pages (issue 7) where the release is verified
    caching = config(**{"cache_config.enable_prefix_caching": True, "cache_config.mamba_cache_mode": "align"})
    for version, release in vllm_versions.RELEASES.items():
        monkeypatch.setattr(vllm_versions, "running", lambda: release)
        assert fail_closed.config_reason(caching) is None, version
    unverified = dataclasses.replace(vllm_versions.RELEASES["0.33"], cache_modes=("none",))
    monkeypatch.setattr(vllm_versions, "running", lambda: unverified)
    assert "not verified on this vLLM release" in fail_closed.config_reason(caching)


@pytest.mark.parametrize(
    "override, words",
    [
        ({"model_config.is_hybrid": False}, "no state layers"),
        ({"cache_config.enable_prefix_caching": True, "cache_config.mamba_cache_mode": "all"}, "only 'align' is implemented"),
        ({"kv_transfer_config": object()}, "KV connector"),
        ({"model_config.enable_sleep_mode": True}, "sleep mode"),
        ({"parallel_config.decode_context_parallel_size": 2}, "decode context parallel"),
        ({"model_config.is_encoder_decoder": True}, "encoder-decoder"),
        ({"model_config.use_mla": True}, "MLA"),
        ({"num_speculative_tokens": 2}, "speculative decoding"),
        ({"model_config.original_max_model_len": -1}, "auto-fit"),
    ],
)
def test_each_config_condition(override, words):
    assert words in fail_closed.config_reason(config(**override))


def test_stock_logs_one_line_per_engine(caplog, monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the once-per-engine marks live in the environment
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        fail_closed.stock("a KV connector is configured (test)")
        fail_closed.stock("a KV connector is configured (test)")  # a child process would see the mark
    assert [r.message for r in caplog.records] == ["hybrid-alloc: leaving vLLM stock: a KV connector is configured (test)"]


def specs():
    torch = pytest.importorskip("torch")  # the vLLM environments (tests/requirements-vllm33.txt, engine)
    kv = pytest.importorskip("vllm.v1.kv_cache_interface")
    attn = kv.FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=torch.float32)
    state = kv.MambaSpec(block_size=1024, shapes=((3, 192), (4, 32, 32)), dtypes=(torch.float32, torch.float32))
    return kv, attn, state


def test_spec_conditions():
    from dataclasses import replace

    from vllm.v1.kv_cache_layout import KVCacheLayout

    kv, attn, state = specs()
    ok = [{"a.0": attn, "m.1": state}]
    assert fail_closed.spec_reason(ok, KVCacheLayout.LBHNC) is None
    cases = [
        ([{"a.0": attn}], "no state layers"),
        ([{"a.0": replace(attn, sliding_window=64), "m.1": state}], "sliding window"),
        ([{"a.0": attn, "m.1": replace(state, page_size_padded=1 << 20)}], "padded"),
        ([{"a.0": attn, "m.1": state}, {"m.2": state}], "a pipeline stage has no attention layer"),
        ([{"a.0": attn, "c.1": kv.CrossAttentionSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=attn.dtype), "m.2": state}], "does not know: CrossAttentionSpec"),
    ]
    for worker_specs, words in cases:
        assert words in fail_closed.spec_reason(worker_specs, KVCacheLayout.LBHNC)
    assert "BLHNC" in fail_closed.spec_reason(ok, KVCacheLayout.BLHNC)


@pytest.mark.parametrize(
    "value, tokens", [("", 4096), ("100", 128), ("32", 32), ("1", 32), ("abc", 4096), ("-64", 4096)]
)
def test_state_checkpoint_interval(value, tokens, monkeypatch):
    pytest.importorskip("vllm")
    from hybrid_alloc.vllm_plugin.checkpoint_interval import checkpoint_tokens

    monkeypatch.setattr(os, "environ", dict(os.environ, HYBRID_ALLOC_STATE_CHECKPOINT=value))
    # 99-block slots of 32 tokens: the planner's interval (3168 tokens up to 4096); a set value is rounded up
    # to a multiple of the 32-token block; bad values: the default.
    assert checkpoint_tokens(32, 99) == tokens
