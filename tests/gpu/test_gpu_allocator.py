"""The allocator on a real GPU under PyTorch (each case in a fresh process: see gpu_cases.py)."""

import pytest

pytestmark = pytest.mark.gpu


def test_mempool_mode_kv_cache_in_arena(run_case):
    print(run_case("mempool"))


def test_global_mode_fresh_process(run_case):
    print(run_case("global"))


def test_install_refused_after_cuda_init(run_case):
    run_case("install_refused")


def test_record_stream_defers_reuse(run_case):
    print(run_case("record_stream"))


def test_cuda_graph_capture_private_pool(run_case):
    print(run_case("graph", timeout=600))


def test_driver_sees_1gib_slab(run_case):
    print(run_case("nvml_slab"))


def test_plugin_kv_buffer_is_an_arena_slab(run_case):
    print(run_case("plugin_kv_buffer"))


def test_vllm_engine_global_mode(run_case):
    """Issue 6: a tiny vLLM engine in global mode, eager and with CUDA graphs (three engine starts)."""
    print(run_case("vllm_global", timeout=1500))


def test_vllm_engine_ray_pp2(run_case):
    """Issue 15: PP=2 over two GPUs with vLLM's Ray executor, stock and plugin, the plugin's variables through
    runtime_env (needs 2+ GPUs, Ray and a running cluster in $RAY_ADDRESS: tools/gpu_check.sh starts one)."""
    print(run_case("vllm_ray_pp2", timeout=900))


def test_vllm_engine_prefix_caching(run_case):
    """Issue 12: prefix caching on natural pages on CUDA, Mamba2 float32 and GDN bf16 (four engine starts)."""
    print(run_case("vllm_prefix_caching", timeout=900))
