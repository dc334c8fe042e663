"""The KV cache budget against real vLLM start-up logs of hybrid models (tests/fixtures/startup_logs).

Every expected number here is read from a log line; the fixture headers say where each log comes from
and which settings its thread states. Rounding: vLLM prints GiB with two decimals (``format_gib``), so a
logged "X GiB" is any byte count in [X - 0.005, X + 0.005) GiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import ceil
from pathlib import Path

import pytest

from hybrid_alloc.models.loader import load_layout
from hybrid_alloc.models.weights import QUANTIZATION_CONFIGS
from hybrid_alloc.planner import kv_budget as B
from hybrid_alloc.planner.comparison import compare_model
from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.settings import Settings

GiB = 1 << 30
LOGS = Path(__file__).parent / "fixtures" / "startup_logs"


@dataclass(frozen=True)
class LoggedSettings(Settings):
    """Settings plus the log's --max-num-batched-tokens (``kv_budget.max_num_batched_tokens`` reads it)."""

    max_num_batched_tokens: int | None = None


@dataclass
class StartupLog:
    name: str
    header: dict[str, str]
    text: str

    def number(self, key: str) -> float | None:
        """A header value that starts with a number ("2 (the compose ...)" -> 2), else None."""
        match = re.match(r"[\d.]+", self.header.get(key, ""))
        return float(match.group()) if match else None

    def find(self, pattern: str) -> re.Match | None:
        return re.search(pattern, self.text)


def read_log(path: Path) -> StartupLog:
    header, lines = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            header[key] = value
        else:
            lines.append(line)
    return StartupLog(path.stem, header, "\n".join(lines))


ALL = [read_log(p) for p in sorted(LOGS.glob("*.log"))]


def logs_with(*patterns: str) -> list:
    return [pytest.param(log, id=log.name) for log in ALL if all(log.find(p) for p in patterns)]


GRAPHS = r"Profiling CUDA graph memory: PIECEWISE=(\d+) \(largest=(\d+)\)(?:, FULL=(\d+))?"
GRAPH_MEMORY = r"Estimated CUDA graph memory: ([\d.]+) GiB"
AVAILABLE = r"Available KV cache memory: ([\d.]+) GiB"
TOKENS = r"GPU KV cache size: ([\d,]+) tokens"
CONCURRENCY = r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
BREAKDOWN = (r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup\. Desired GPU memory utilization is "
             r"\(([\d.]+), ([\d.]+) GiB\)\. Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak "
             r"activation, ([\d.]+) GiB for non-torch memory, and ([\d.]+) GiB for CUDAGraph memory")


def test_at_least_ten_real_logs_each_with_source_version_gpu_and_a_bundled_config():
    assert len(ALL) >= 10
    for log in ALL:
        assert log.header["source"].startswith("https://github.com/"), log.name
        for key in ("vllm", "gpu", "tp", "gpu_memory_utilization", "max_model_len", "kv_cache_dtype"):
            assert log.header.get(key), f"{log.name}: header {key} missing"
        load_layout(log.header["bundled"])  # the architecture is bundled
        assert any(log.find(p) for p in (AVAILABLE, TOKENS, GRAPH_MEMORY, BREAKDOWN)), log.name


# vLLM's default capture grid; the LMCache compose's PIECEWISE=3 (largest=16), FULL=2 is not that grid.
DEFAULT_GRID = [p for p in logs_with(GRAPHS) if "not vLLM's default grid" not in p.values[0].header.get("notes", "")]


@pytest.mark.parametrize("log", DEFAULT_GRID)
def test_cudagraph_count_is_what_vllm_profiles(log):
    piecewise, _largest, full = log.find(GRAPHS).groups()
    settings = Settings(max_num_seqs=int(log.number("max_num_seqs")),
                        num_speculative_tokens=int(log.number("num_speculative_tokens")))
    assert B.cudagraph_count(settings, get_hardware("rtx4090")) == int(piecewise) + int(full or 0)


# A fixture whose header says ``graph_memory: outlier (reason)`` runs as a strict xfail.
GRAPH_BYTES = [
    pytest.param(p.values[0], id=p.id, marks=[pytest.mark.xfail(strict=True, reason=p.values[0].header["graph_memory"])]
                 if "graph_memory" in p.values[0].header else [])
    for p in logs_with(GRAPHS, GRAPH_MEMORY)
]


@pytest.mark.parametrize("log", GRAPH_BYTES)
def test_cudagraph_bytes_within_the_stated_40_percent(log):
    piecewise, _largest, full = log.find(GRAPHS).groups()
    graphs = int(piecewise) + int(full or 0)
    layout = load_layout(log.header["bundled"])  # PP 1 in every fixture
    logged = float(log.find(GRAPH_MEMORY).group(1)) * GiB
    assert abs(graphs * B.cudagraph_bytes_per_graph(layout, 0, layout.num_decoder_layers) - logged) <= 0.4 * logged


@pytest.mark.parametrize("log", logs_with(BREAKDOWN))
def test_requested_memory_line_reproduces_vllms(log):
    """``memory`` + ``x gpu_memory_utilization`` lines = vLLM's requested memory (two-decimal rounding)."""
    _free, total, util, requested = (float(v) for v in log.find(BREAKDOWN).groups()[:4])
    settings = Settings(hardware="h100", gpu_memory=round(total * GiB), gpu_memory_utilization=util)
    layout = load_layout(log.header["bundled"])
    # _estimate, not kv_cache_budgets: this log's TP is not stated and the whole budget may be negative at TP 1
    lines = {line.label: line.bytes for line in B._estimate(layout, settings, get_hardware("h100"), 0).lines}
    ours = lines["memory"] + lines[f"x {util} (gpu_memory_utilization)"]
    # total is itself rounded to 0.01 GiB: util x 0.005 GiB on top of the printed rounding
    assert abs(ours - requested * GiB) <= (0.005 + util * 0.005) * GiB
    assert ours == ceil(round(total * GiB) * util)


def _pinned_interval(available_gib: float) -> tuple[int, int]:
    """The bytes a logged "X GiB" can stand for (format_gib rounds to two decimals)."""
    return ceil((available_gib - 0.005) * GiB), ceil((available_gib + 0.005) * GiB) - 1


# Pinned budget: the stock plan at both ends of the interval the log's two-decimal rounding allows must
# give the logged KV tokens and concurrency. A fixture whose header says parity is "not expected" (with
# the reason: a vLLM release the planner does not implement, settings the thread does not state) runs as
# a strict xfail, so a surprise match fails and gets looked at.
PINNED = [
    pytest.param(log, id=log.name, marks=[] if log.header["pinned_parity"].startswith("expected")
                 else pytest.mark.xfail(strict=True, reason=log.header["pinned_parity"]))
    for log in ALL if "pinned_parity" in log.header
]
assert all(log.find(AVAILABLE) and log.find(TOKENS) for log in ALL if "pinned_parity" in log.header)


@pytest.mark.parametrize("log", PINNED)
def test_pinned_budget_kv_tokens_and_concurrency(log):
    available = float(log.find(AVAILABLE).group(1))
    tokens = int(log.find(TOKENS).group(1).replace(",", ""))
    max_len, concurrency = log.find(CONCURRENCY).groups()
    kv_dtype = log.header["kv_cache_dtype"].split()[0]
    ends = []
    for pinned in _pinned_interval(available):
        settings = Settings(hardware="rtx4090", tp=int(log.number("tp")), kv_cache_memory=pinned,
                            max_model_len=int(max_len.replace(",", "")),
                            max_num_seqs=int(log.number("max_num_seqs") or 256),
                            kv_cache_dtype="fp8" if kv_dtype.startswith("fp8") else "auto",
                            num_speculative_tokens=int(log.number("num_speculative_tokens") or 0))
        ends.append(compare_model(log.header["bundled"], settings).stock)
    low, high = ends
    # Tokens and concurrency grow with the budget: the logged ones lie between the interval's ends.
    assert low.kv_cache_size_tokens <= tokens <= high.kv_cache_size_tokens
    assert float(f"{low.max_concurrency:.2f}") <= float(concurrency) <= float(f"{high.max_concurrency:.2f}")


# The estimate (no --kv-cache-memory) against the log's "Available KV cache memory". Fixtures whose header
# says ``estimate: fair`` (an unquantised checkpoint whose config is bundled, or vLLM's --quantization of
# it, the settings stated or read off the log) must land within 5%; ``estimate: xfail (reason)`` runs as a strict xfail.
EAGER = "Cudagraph is disabled under eager mode"  # no graphs captured: the CUDA graph line does not apply
# vLLM 0.19 estimates the graphs but does not subtract them (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1, the
# default since 0.21, would): the comparable budget is Available minus the log's own estimate. 0.19 says so in
# a reminder line; an excerpt without it (0.18, which behaves the same) says so in a ``graphs_subtracted: no``
# header.
GRAPHS_NOT_SUBTRACTED = "CUDA graph memory profiling will be enabled by default"
ESTIMATED = [
    pytest.param(log, id=log.name, marks=[] if log.header["estimate"].startswith("fair")
                 else pytest.mark.xfail(strict=True, reason=log.header["estimate"]))
    for log in ALL if log.header.get("estimate", "").startswith(("fair", "xfail"))
]


def logged_budget(log: StartupLog) -> float:
    """The log's KV cache budget in bytes, as vLLM >= 0.21 (graphs subtracted) would log it."""
    available = float(log.find(AVAILABLE).group(1)) * GiB
    if log.find(GRAPHS_NOT_SUBTRACTED) or log.header.get("graphs_subtracted", "").startswith("no"):
        available -= float(log.find(GRAPH_MEMORY).group(1)) * GiB
    return available


def quantization(log: StartupLog) -> str | None:
    """The run's --quantization for a comparable fixture: ``none``, or a method the planner estimates from
    the bundled unquantised config alone (``weights.QUANTIZATION_CONFIGS``, e.g. vLLM's online fp8)."""
    method = log.header["quantization"].split()[0]
    return None if method == "none" else method


def estimated_budget(log: StartupLog) -> B.KVCacheBudget:
    settings = LoggedSettings(
        hardware=log.header["planner_hardware"].split()[0], tp=int(log.number("tp")),
        gpu_memory=round(log.number("gpu_memory_gib") * GiB),
        gpu_memory_utilization=log.number("gpu_memory_utilization"),
        max_model_len=int(log.number("max_model_len")), max_num_seqs=int(log.number("max_num_seqs")),
        max_num_batched_tokens=int(log.number("max_num_batched_tokens")),
        num_speculative_tokens=int(log.number("num_speculative_tokens")))
    dtype = log.header.get("dtype")  # vLLM's --dtype where the run overrode the config's
    layout = load_layout(log.header["bundled"], tp=settings.tp, dtype=dtype, quantization=quantization(log))
    budget = B.kv_cache_budgets(layout, settings, get_hardware(settings.hardware))[0]
    if log.find(EAGER):
        budget = B.KVCacheBudget(0, tuple(line for line in budget.lines if not line.label.startswith("CUDA graphs")))
    return budget


def test_the_fair_fixtures_say_why():
    for log in ALL:
        verdict = log.header.get("estimate", "")
        assert verdict.startswith(("fair", "xfail", "not comparable")), f"{log.name}: header estimate: {verdict!r}"
        if verdict.startswith(("fair", "xfail")):  # the bundled config's checkpoint, or --quantization of it
            assert quantization(log) in (None, *QUANTIZATION_CONFIGS), log.name


@pytest.mark.parametrize("log", ESTIMATED)
def test_estimate_within_5_percent_of_the_logged_budget(log):
    logged = logged_budget(log)
    assert abs(estimated_budget(log).bytes - logged) <= 0.05 * logged


WEIGHTS = r"Model loading took ([\d.]+) GiB|weights memory: ([\d.]+)GiB"
# vLLM 0.19's DEBUG breakdown of the profile run (gpu_worker.py "Memory profiling takes ...").
DEBUG_BREAKDOWN = (r"Total non KV cache memory: ([\d.]+)GiB; torch peak memory increase: ([\d.]+)GiB; "
                   r"non-torch forward increase memory: ([\d.]+)GiB; weights memory: ([\d.]+)GiB")


def _line(budget: B.KVCacheBudget, prefix: str) -> int:
    return -sum(line.bytes for line in budget.lines if line.label.startswith(prefix))


# The lines themselves are checked on every fixture whose estimate is comparable, the xfails included.
COMPARABLE = [log for log in ALL if log.header.get("estimate", "").startswith(("fair", "xfail"))]


@pytest.mark.parametrize("log", [pytest.param(log, id=log.name) for log in COMPARABLE if log.find(WEIGHTS)])
def test_weights_within_1_percent_of_model_loading(log):
    logged = float(next(g for g in log.find(WEIGHTS).groups() if g)) * GiB
    assert abs(_line(estimated_budget(log), "weights") - logged) <= 0.01 * logged


BROKEN_DOWN = [pytest.param(log, id=log.name) for log in COMPARABLE if log.find(DEBUG_BREAKDOWN)]


@pytest.mark.parametrize("log", BROKEN_DOWN)
def test_non_torch_memory_as_vllm_breaks_it_down(log):
    non_torch = float(log.find(DEBUG_BREAKDOWN).group(3)) * GiB
    assert abs(_line(estimated_budget(log), "non-torch memory") - non_torch) <= 0.005 * GiB  # two decimals


# Every broken-down fixture so far runs 1024 requests on an H100: vLLM's sampler warm-up (one float32
# logits row per request over the 128256-token vocabulary, ~1.8 GiB) is the peak there, and the estimate
# does not model it (kv_budget.ACTIVATION_BYTES_PER_TOKEN); a strict xfail until it does.
@pytest.mark.xfail(strict=True, reason="the sampler warm-up peak is not modelled: 1.125 GiB estimated against "
                                       "1.89-2.21 GiB logged at 1024 requests")
@pytest.mark.parametrize("log", BROKEN_DOWN)
def test_activation_peak_within_20_percent_of_vllms_breakdown(log):
    peak = float(log.find(DEBUG_BREAKDOWN).group(2)) * GiB
    assert abs(_line(estimated_budget(log), "activations") - peak) <= 0.2 * peak


def test_at_least_ten_fair_fixtures_from_ten_distinct_logs():
    """Item 8 of issue 13: at least 10 fair fixtures (each held within 5% above), no log counted twice."""
    fair = [re.sub(r"/blob/[0-9a-f]{40}/", "/blob/", log.header["source"].split()[0])  # one file at any commit
            for log in ALL if log.header["estimate"].startswith("fair")]
    assert len(fair) >= 10
    assert len(set(fair)) == len(fair)
