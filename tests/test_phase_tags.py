"""Phase tags: fake vLLM worker / model runner classes with the real method names, wrapped by
``phase_tags``, allocate through the allocator (host backend); its tag statistics charge each phase."""

from __future__ import annotations

import os

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

import pytest

from hybrid_alloc import allocator, vllm_versions
from hybrid_alloc.vllm_plugin import phase_tags

from vllm_sources import class_methods, tree, vllm_dirs

WEIGHTS, ACTIVATIONS, KV, GRAPH, RUNTIME = 3_000_000, 5_000_000, 6_000_000, 1_000_000, 2_000_000


class Runner:
    def __init__(self):
        self.live = []

    def _keep(self, n):
        self.live.append((allocator.lib().hybrid_alloc_malloc(n, 0, None), n))

    def load_model(self):
        self._keep(WEIGHTS)

    def profile_run(self):
        n = ACTIVATIONS
        allocator.lib().hybrid_alloc_free(allocator.lib().hybrid_alloc_malloc(n, 0, None), n, 0, None)

    def initialize_kv_cache(self):
        self._keep(KV)

    def profile_cudagraph_memory(self):
        raise RuntimeError("capture failed")

    def capture_model(self):
        self._keep(GRAPH)


class Worker:
    def __init__(self, runner):
        self.model_runner = runner

    def compile_or_warm_up_model(self):
        self.model_runner.capture_model()


@pytest.fixture
def tagged():
    if allocator.backend_name() != "host":
        pytest.skip("needs the host backend")
    phase_tags.wrap_runner(Runner)
    phase_tags.wrap_worker(Worker)
    runner = Runner()
    yield Worker(runner)
    for ptr, n in runner.live:
        allocator.lib().hybrid_alloc_free(ptr, n, 0, None)
    allocator.set_tag("other")


def _tags() -> dict[str, dict]:
    return allocator.tag_stats(0)


def _delta(before, after, tag, key):
    return after.get(tag, {}).get(key, 0) - before.get(tag, {}).get(key, 0)


def test_each_phase_charges_its_tag(tagged):
    before = _tags()
    base = allocator.current_tag()
    runner = tagged.model_runner
    runner.load_model()
    runner.profile_run()
    runner.initialize_kv_cache()
    with pytest.raises(RuntimeError):
        runner.profile_cudagraph_memory()
    assert allocator.current_tag() == base  # popped on the exception
    tagged.compile_or_warm_up_model()
    assert allocator.current_tag() == "runtime"
    runner._keep(RUNTIME)
    after = _tags()
    assert _delta(before, after, "weights", "current") == WEIGHTS
    assert _delta(before, after, "activations", "current") == 0
    assert _delta(before, after, "activations", "alloc_count") == 1
    assert after["activations"]["peak"] >= ACTIVATIONS
    assert _delta(before, after, "kv_cache", "current") == KV
    assert _delta(before, after, "cudagraph", "current") == GRAPH
    assert _delta(before, after, "runtime", "current") == RUNTIME


def test_wrapping_twice_tags_once(tagged):
    phase_tags.wrap_runner(Runner)
    phase_tags.wrap_worker(Worker)
    for name, tag in phase_tags.RUNNER_PHASES.items():
        method = Runner.__dict__[name]
        assert method.hybrid_alloc_phase == tag
        assert not hasattr(method.__wrapped__, "hybrid_alloc_phase"), name
    assert not hasattr(Worker.compile_or_warm_up_model.__wrapped__, "hybrid_alloc_phase")


def test_wrapped_names_exist_in_vllm_032_and_033():
    for label, found in vllm_dirs():
        for runner in vllm_versions.RELEASES[found["version"]].model_runners:
            module, cls = runner.split(":")
            relpath = module.removeprefix("vllm.").replace(".", "/") + ".py"
            methods = class_methods(tree(found["vllm"], relpath), cls)
            assert set(phase_tags.RUNNER_PHASES) <= methods, (label, module)
        worker = class_methods(tree(found["vllm"], "v1/worker/gpu_worker.py"), "Worker")
        assert phase_tags.RUNTIME_AFTER in worker, label


def test_patch_wraps_vllm_once_and_is_undone():
    """patch() on vLLM's own classes (this environment's vLLM) goes through ``patching``: recorded once, undone."""
    worker = pytest.importorskip("vllm.v1.worker.gpu_worker").Worker
    from hybrid_alloc.vllm_plugin import patching

    runners = [patching.resolve(r) for r in vllm_versions.running().model_runners]
    originals = {(cls, name): vars(cls)[name] for cls in runners for name in phase_tags.RUNNER_PHASES}
    originals[(worker, phase_tags.RUNTIME_AFTER)] = vars(worker)[phase_tags.RUNTIME_AFTER]
    assert not any(hasattr(m, "hybrid_alloc_phase") for m in originals.values())
    before = len(patching._patched)
    try:
        phase_tags.patch()
        phase_tags.patch()
        assert len(patching._patched) - before == len(originals)
        for (cls, name), method in originals.items():
            wrapped = vars(cls)[name]
            assert wrapped.__wrapped__ is method
            assert wrapped.hybrid_alloc_phase == phase_tags.RUNNER_PHASES.get(name, "runtime")
    finally:
        while len(patching._patched) > before:
            owner, name, value = patching._patched.pop()
            setattr(owner, name, value)
    assert all(vars(cls)[name] is method for (cls, name), method in originals.items())
