"""Global mode: allocator tags for vLLM's worker phases, so statistics and traces say what memory is for.

Each model-runner method below runs with its tag pushed (``allocator.push_tag`` / ``pop_tag``); an inner phase wins
(``profile_cudagraph_memory`` runs inside ``determine_available_memory``, ``capture_model`` inside
``compile_or_warm_up_model``). The names are the same in vLLM 0.32 and 0.33, on both model runners
(``vllm.v1.worker.gpu_model_runner.GPUModelRunner``, ``vllm.v1.worker.gpu.model_runner.GPUModelRunner``):

``load_model`` -> ``weights``, ``profile_run`` -> ``activations``, ``initialize_kv_cache`` -> ``kv_cache``,
``profile_cudagraph_memory`` and ``capture_model`` -> ``cudagraph`` (``RUNNER_PHASES``).

When ``Worker.compile_or_warm_up_model`` (``vllm/v1/worker/gpu_worker.py``, the last start-up step) returns,
the worker thread's base tag becomes ``runtime``.
"""

from __future__ import annotations

import functools

from hybrid_alloc import allocator

from . import patching

RUNNER_PHASES = {
    "load_model": "weights",
    "profile_run": "activations",
    "initialize_kv_cache": "kv_cache",
    "profile_cudagraph_memory": "cudagraph",
    "capture_model": "cudagraph",
}
RUNTIME_AFTER = "compile_or_warm_up_model"
RUNNER_MODULES = ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner")


def _tagged(method, tag: str):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        allocator.push_tag(tag)
        try:
            return method(*args, **kwargs)
        finally:
            allocator.pop_tag()

    wrapper.hybrid_alloc_phase = tag
    return wrapper


def _runtime_after(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        allocator.set_tag("runtime")
        return result

    wrapper.hybrid_alloc_phase = "runtime"
    return wrapper


def wrap_runner(cls) -> None:
    """Tag the RUNNER_PHASES methods of a model-runner class (idempotent; recorded in ``patching``)."""
    for name, tag in RUNNER_PHASES.items():
        method = cls.__dict__[name]
        if not hasattr(method, "hybrid_alloc_phase"):
            patching.replace([cls], name, _tagged(method, tag))


def wrap_worker(cls) -> None:
    """Make ``runtime`` the base tag once the worker's start-up is over (idempotent)."""
    method = cls.__dict__[RUNTIME_AFTER]
    if not hasattr(method, "hybrid_alloc_phase"):
        patching.replace([cls], RUNTIME_AFTER, _runtime_after(method))


def patch() -> None:
    import importlib

    from vllm.v1.worker.gpu_worker import Worker

    for module in RUNNER_MODULES:
        wrap_runner(importlib.import_module(module).GPUModelRunner)
    wrap_worker(Worker)
