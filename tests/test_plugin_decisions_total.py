"""The plugin's stay-stock decisions are total and lazy (issue 14): vLLM's own tests call the patched
functions with stub, partial and attention-free configs, and each must leave vLLM stock without raising,
reading nothing stock would not read. Each case is a failure mode seen running vLLM 0.33's own tests with
the plugin registered (tests/vllm_suite)."""

import os
from types import SimpleNamespace as NS

import pytest

from hybrid_alloc.vllm_plugin import fail_closed, global_mode


class _Raises:
    """A config object whose every attribute read raises ``error`` (a field the decision must not read)."""

    def __init__(self, error):
        object.__setattr__(self, "_error", error)

    def __getattr__(self, name):
        raise self._error


class _SpecProperty:
    """``VllmConfig.num_speculative_tokens`` over a stub speculative config without the field (vLLM's
    eagle planning tests): the property raises AttributeError."""

    def __init__(self, model_config, speculative_config):
        self.model_config, self.speculative_config = model_config, speculative_config

    @property
    def num_speculative_tokens(self):
        return self.speculative_config.num_speculative_tokens


@pytest.fixture(autouse=True)
def _fresh_log_marks(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # log.once's marks live in the environment


def test_not_hybrid_decides_before_anything_else():
    # attention-only model: everything past "not hybrid" raises if read
    config = NS(model_config=NS(is_hybrid=False), cache_config=_Raises(AssertionError("read cache_config")))
    assert "no state layers" in fail_closed.config_reason(config)


def test_stub_speculative_config_on_an_attention_only_model():
    config = _SpecProperty(NS(is_hybrid=False), NS(method="dflash"))
    assert "no state layers" in fail_closed.config_reason(config)


def test_stub_speculative_config_on_a_hybrid_model_stays_stock():
    model = NS(is_hybrid=True, enable_sleep_mode=False, is_encoder_decoder=False, use_mla=False)
    config = _SpecProperty(model, NS(method="dflash"))
    assert "speculative decoding" in fail_closed.config_reason(config)


def test_stub_model_config_without_is_hybrid():
    # vLLM's test_kv_cache_group_metadata: a stub model config, a KV connector, decode context parallel
    config = NS(
        model_config=NS(max_model_len=64),
        cache_config=NS(enable_prefix_caching=False),
        parallel_config=NS(decode_context_parallel_size=2),
        kv_transfer_config=object(),
    )
    assert "no state layers" in fail_closed.config_reason(config)
    hybrid = NS(**{**vars(config), "model_config": NS(is_hybrid=True)})
    assert "KV connector" in fail_closed.config_reason(hybrid)


def test_an_exception_while_deciding_stays_stock_and_is_logged_once(caplog):
    config = NS(model_config=NS(is_hybrid=True), cache_config=_Raises(RuntimeError("boom")))
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        reason = fail_closed.config_reason(config)
        fail_closed.stock(reason)  # the caller logs the reason again: still one line
    assert reason == "deciding raised RuntimeError: boom"
    assert [r.message for r in caplog.records] == ["hybrid-alloc: leaving vLLM stock: deciding raised RuntimeError: boom"]


def _unresolved_layout_config():
    def unresolved():
        raise ValueError("KV cache layout has not been resolved yet")

    return NS(model_config=NS(is_hybrid=False), cache_config=NS(get_resolved_kv_cache_layout=unresolved))


def test_attention_free_model_never_resolves_the_layout():
    pytest.importorskip("vllm")
    from hybrid_alloc.vllm_plugin import kv_cache_planning

    assert "no state layers" in kv_cache_planning._natural_reason(_unresolved_layout_config(), [{}])


def test_global_mode_on_a_partial_worker_config_stays_in_mempool_mode(caplog):
    with caplog.at_level("INFO", logger="vllm.hybrid_alloc"):
        assert global_mode.enable(NS()) is False
    assert any("global mode unavailable" in r.message for r in caplog.records)


def test_chunk_split_on_a_partial_scheduler_is_stock():
    # vLLM's test_mamba_align_chunk_split calls the split on a stub scheduler without a kv_cache_config
    pytest.importorskip("vllm")
    from hybrid_alloc.vllm_plugin import chunk_split

    calls = []
    split = chunk_split._aligned_split(lambda self, *args: calls.append(args) or 7)
    assert split(NS(cache_config=NS(block_size=16)), 1, 2) == 7
    assert calls == [(1, 2)]
