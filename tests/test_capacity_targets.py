"""Capacity targets of the natural layout with prefix caching on (one running state slot per request,
checkpoints cached and evictable), computed through the CLI's own path (``trace_settings`` -> ``compare_model``)."""

from __future__ import annotations

import pytest

from hybrid_alloc.cli import build_parser, trace_settings
from hybrid_alloc.models import load_layout
from hybrid_alloc.models.bundled import bundled_files, bundled_models
from hybrid_alloc.planner.comparison import LayoutComparison, compare_model


def trace(*argv: str) -> LayoutComparison:
    args = build_parser().parse_args(["trace", *argv])
    return compare_model(args.model or "qwen3.5-9b", trace_settings(args))


def counts(comparison: LayoutComparison, name: str) -> list[int]:
    return [getattr(c, name) for c in comparison.capacities]


def test_qwen35_9b_on_one_gpu_holds_the_physical_need():
    t = trace("Qwen3.5-9B", "--hardware", "rtx3060", "--kv-cache-memory", "8GiB", "--max-model-len", "32768")
    assert t.settings.prefix_caching and t.settings.pp == 1
    assert [c.num_tokens for c in t.capacities] == [512, 4096, 32768]
    assert counts(t, "natural") == [125, 46, 7] == counts(t, "physical")
    assert (t.natural.state_slots_per_request, t.natural.checkpoint_interval) == (1, 2048)


def test_default_trace_beats_stock_everywhere():
    t = trace()  # Qwen3.5-9B on 3x RTX 3060, PP=3, max_model_len 32768, prefix caching on
    assert t.settings.pp == 3 and t.settings.prefix_caching
    natural, stock = counts(t, "natural"), counts(t, "stock")
    assert all(n >= target for n, target in zip(natural, [116, 48, 8])), natural
    assert all(n >= s for n, s in zip(natural, stock)), (natural, stock)
    assert t.natural.max_concurrency >= t.stock.max_concurrency
    assert t.natural.kv_cache_size_tokens >= t.stock.kv_cache_size_tokens


# Known miss, not a loosened bar: 54 Mamba2 layers on 10 attention tensors (r = 6, 6 of 60 page positions
# per slot unused) make a slot of k = 1548 blocks, an eighth of the 8 GiB pool, and run 0 (vLLM's null
# block) holds no slot: 7 requests of 512 tokens where 9 fit physically.
KNOWN_MISSES = {"nemotron-h-56b", "nvidia--Nemotron-H-56B-Base-8K.json"}
MODELS = [*bundled_models(), *(str(path) for path in bundled_files())]


def _model_id(model: str) -> str:
    return model.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason="see KNOWN_MISSES"))
        if _model_id(m) in KNOWN_MISSES else m
        for m in MODELS
    ],
    ids=_model_id,
)
def test_natural_holds_the_physical_need_on_every_bundled_config(model):
    model_len = min(32768, load_layout(model).max_position_embeddings)
    t = trace(model, "--hardware", "rtx3060", "--kv-cache-memory", "8GiB", "--max-model-len", str(model_len))
    for c in t.capacities:
        if c.num_tokens in (512, 4096):
            assert c.natural >= 0.95 * c.physical or (c.physical < 20 and c.natural >= c.physical - 1), c


@pytest.mark.parametrize("prefix_caching", ["--prefix-caching", "--no-prefix-caching"])
@pytest.mark.parametrize("pp", [1, 2, 3])
@pytest.mark.parametrize("model", list(bundled_models()))
def test_natural_never_below_stock(model, pp, prefix_caching):
    """Issue 13 item 4: at every length the trace reports and in vLLM's concurrency, on small and large budgets.
    Before state regions (``StageShape.placement``), 34 such cases with prefix caching off at PP 2-3 fell below
    stock (Qwen3.5-9B, PP=3, 3 GiB: 115 vs 123 requests of 512 tokens)."""
    model_len = min(32768, load_layout(model).max_position_embeddings)
    for memory in ("3GiB", "8GiB", "20GiB"):
        t = trace(model, "--hardware", "rtx3060", "--kv-cache-memory", memory, "--max-model-len", str(model_len),
                  "--pp", str(pp), prefix_caching)
        if t.stock.error:
            continue  # not even one request fits stock: nothing to be below
        case = (memory, [(c.num_tokens, c.stock, c.natural) for c in t.capacities])
        assert all(c.natural >= c.stock for c in t.capacities), case
        assert t.natural.max_concurrency >= t.stock.max_concurrency, (case, t.stock.max_concurrency, t.natural.max_concurrency)
