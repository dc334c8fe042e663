"""Global mode: allocator tags for vLLM's worker phases, so statistics and traces say what memory is for.

Each model-runner method below runs with its tag pushed (``allocator.push_tag`` / ``pop_tag``); an inner phase wins
(``profile_cudagraph_memory`` runs inside ``determine_available_memory``, ``capture_model`` inside
``compile_or_warm_up_model``). The names are the same in every supported release, on each model runner
the release's row lists (``hybrid_alloc.vllm_versions``: ``model_runners``, and each name's ``sites``):

``load_model`` -> ``weights``, ``profile_run`` -> ``activations``, ``initialize_kv_cache`` -> ``kv_cache``,
``profile_cudagraph_memory`` and ``capture_model`` -> ``cudagraph`` (``RUNNER_PHASES``).

When ``Worker.compile_or_warm_up_model`` (``vllm.v1.worker.gpu_worker``, the last start-up step) returns,
the worker thread's base tag becomes ``runtime``.
"""

from __future__ import annotations

import functools

from hybrid_alloc import allocator

from . import patching
from .patching import Patch

RUNNER_PHASES = {
    "load_model": "weights",
    "profile_run": "activations",
    "initialize_kv_cache": "kv_cache",
    "profile_cudagraph_memory": "cudagraph",
    "capture_model": "cudagraph",
}
RUNTIME_AFTER = "compile_or_warm_up_model"


def _tagged(tag: str):
    def wrap(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            allocator.push_tag(tag)
            try:
                return method(*args, **kwargs)
            finally:
                allocator.pop_tag()

        wrapper.hybrid_alloc_phase = tag
        return wrapper

    return wrap


def _runtime_after(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        allocator.set_tag("runtime")
        return result

    wrapper.hybrid_alloc_phase = "runtime"
    return wrapper


# owners: the running release's sites (the model runners, the worker)
PATCHES = tuple(Patch(name, _tagged(tag)) for name, tag in RUNNER_PHASES.items()) + (
    Patch(RUNTIME_AFTER, _runtime_after),
)


def wrap_runner(cls) -> None:
    """Tag the RUNNER_PHASES methods of a model-runner class (idempotent; recorded in ``patching``)."""
    patching.apply(Patch(name, _tagged(tag), (cls,)) for name, tag in RUNNER_PHASES.items())


def wrap_worker(cls) -> None:
    """Make ``runtime`` the base tag once the worker's start-up is over (idempotent)."""
    patching.apply([Patch(RUNTIME_AFTER, _runtime_after, (cls,))])


def patch() -> None:
    patching.apply(PATCHES)
