"""Global mode (``HYBRID_ALLOC_MODE=global``) without a GPU: the mode, the worker hook in vLLM 0.33's real
``WorkerWrapperBase.init_device`` (driven with a stand-in worker and config), the fail-closed lines, and that
the hook is where vLLM 0.32 and 0.33 initialise a worker's device.

On this CPU-only PyTorch ``allocator.install()`` refuses (no CUDA); where a test needs it to succeed it is
replaced by a recorder, which also records what vLLM's memory functions point at when it is called.
"""

from __future__ import annotations

import ast
import os
from types import SimpleNamespace

os.environ.setdefault("HYBRID_ALLOC_BACKEND", "host")

import pytest
import torch

from hybrid_alloc import allocator
from hybrid_alloc.allocator import pytorch as allocator_torch
from hybrid_alloc.vllm_plugin import global_mode, patching, phase_tags, profiler_stats

from vllm_sources import tree, vllm_dirs

worker_base = pytest.importorskip("vllm.v1.worker.worker_base")
gpu_model_runner = pytest.importorskip("vllm.v1.worker.gpu_model_runner")
gpu_worker = pytest.importorskip("vllm.v1.worker.gpu_worker")

LOGGER = "vllm.hybrid_alloc"
STOCK_INIT_DEVICE = vars(worker_base.WorkerWrapperBase)["init_device"]


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """A private environment (the once-per-engine log marks live there); every patch undone afterwards."""
    private = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ALLOC_LOGGED_")}
    private.pop("HYBRID_ALLOC_MODE", None)
    private.pop("HYBRID_ALLOC", None)
    monkeypatch.setattr(os, "environ", private)
    monkeypatch.setattr(allocator_torch, "_installed", False)
    before = len(patching._patched)
    yield
    while len(patching._patched) > before:  # this test's patches only
        owner, name, value = patching._patched.pop()
        setattr(owner, name, value)
    assert vars(worker_base.WorkerWrapperBase)["init_device"] is STOCK_INIT_DEVICE


def config(device_type="cuda", sleep=False, graphs="FULL_AND_PIECEWISE"):
    return SimpleNamespace(
        device_config=SimpleNamespace(device_type=device_type),
        model_config=SimpleNamespace(enable_sleep_mode=sleep, enforce_eager=graphs == "NONE"),
        compilation_config=SimpleNamespace(cudagraph_mode=SimpleNamespace(name=graphs)),
    )


def global_state() -> dict:
    """What global mode changes in a worker: vLLM's memory functions and the model runner's phases."""
    return {
        "memory_stats": torch.accelerator.memory_stats is profiler_stats.memory_stats,
        "cuda.max_memory_allocated": torch.cuda.max_memory_allocated is profiler_stats.max_memory_allocated,
        "load_model": getattr(vars(gpu_model_runner.GPUModelRunner)["load_model"], "hybrid_alloc_phase", None),
        "compile_or_warm_up_model": getattr(
            vars(gpu_worker.Worker)["compile_or_warm_up_model"], "hybrid_alloc_phase", None
        ),
    }


NOTHING = {
    "memory_stats": False, "cuda.max_memory_allocated": False, "load_model": None, "compile_or_warm_up_model": None
}
EVERYTHING = {
    "memory_stats": True, "cuda.max_memory_allocated": True, "load_model": "weights", "compile_or_warm_up_model": "runtime"
}


class FakeWorker:
    def __init__(self, events):
        self.events = events

    def init_device(self):
        self.events.append(("worker.init_device", allocator.installed()))


def start_worker(vllm_config, events):
    """vLLM's own WorkerWrapperBase.init_device (patched or not) on a stand-in worker."""
    wrapper = worker_base.WorkerWrapperBase.__new__(worker_base.WorkerWrapperBase)
    wrapper.__dict__.update(vllm_config=vllm_config, worker=FakeWorker(events), _worker_extension_cls=None)
    wrapper.init_device()
    return wrapper


@pytest.fixture
def install(monkeypatch):
    """allocator.install replaced by a recorder that succeeds (CPU PyTorch cannot install for real)."""
    events = []

    def fake_install(hooks="require"):
        events.append(("install", global_state() == NOTHING))
        allocator_torch._installed = True

    monkeypatch.setattr(allocator, "install", fake_install)
    monkeypatch.setattr(allocator, "live_hooks", lambda: allocator.ALL_HOOKS)
    return events


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize(
    "value, expected", [(None, "mempool"), ("", "mempool"), ("mempool", "mempool"), ("global", "global")]
)
def test_valid_modes(value, expected, caplog):
    if value is not None:
        os.environ["HYBRID_ALLOC_MODE"] = value
    with caplog.at_level("INFO", logger=LOGGER):
        assert global_mode.mode() == expected
    assert lines(caplog) == []


@pytest.mark.parametrize("value", ["Global", "globals", "on"])
def test_invalid_mode_is_mempool_with_one_line(value, caplog):
    os.environ["HYBRID_ALLOC_MODE"] = value
    with caplog.at_level("INFO", logger=LOGGER):
        assert global_mode.mode() == "mempool"
        global_mode.patch()
        global_mode.patch()
    assert lines(caplog) == [
        f"hybrid-alloc: HYBRID_ALLOC_MODE={value!r} is not a valid mode (valid: mempool, global); "
        "running in mempool mode"
    ]
    assert vars(worker_base.WorkerWrapperBase)["init_device"] is STOCK_INIT_DEVICE


@pytest.mark.parametrize("value", [None, "mempool", "bogus"])
def test_mempool_mode_patches_nothing(value, install):
    if value is not None:
        os.environ["HYBRID_ALLOC_MODE"] = value
    before = len(patching._patched)
    global_mode.patch()
    assert len(patching._patched) == before
    assert vars(worker_base.WorkerWrapperBase)["init_device"] is STOCK_INIT_DEVICE
    events = []
    start_worker(config(), events)
    assert install == [] and events == [("worker.init_device", False)]
    assert global_state() == NOTHING


def test_global_mode_installs_in_the_worker_before_its_device(install, caplog):
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    global_mode.patch()  # register() runs again in spawned workers: one wrapper
    method = vars(worker_base.WorkerWrapperBase)["init_device"]
    assert method is not STOCK_INIT_DEVICE and method.hybrid_alloc_global
    assert sum(1 for owner, name, _ in patching._patched if owner is worker_base.WorkerWrapperBase) == 1
    assert install == [] and global_state() == NOTHING  # the front process changes nothing else
    events = []
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(config(), events)
    # installed first (nothing else patched yet), then the profiler and phase patches, then the device
    assert install == [("install", True)]
    assert events == [("worker.init_device", True)]
    assert global_state() == EVERYTHING
    assert torch.accelerator.reset_peak_memory_stats is profiler_stats.reset_peak_memory_stats
    for name, tag in phase_tags.RUNNER_PHASES.items():
        assert vars(gpu_model_runner.GPUModelRunner)[name].hybrid_alloc_phase == tag
    assert lines(caplog) == [global_mode.ENABLED.format(", ".join(allocator.ALL_HOOKS)), global_mode.GRAPHS_UNVERIFIED]


def test_eager_engine_has_no_graph_line(install, caplog):
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(config(graphs="NONE"), [])
    assert global_state() == EVERYTHING
    assert global_mode.GRAPHS_UNVERIFIED not in lines(caplog)


UNAVAILABLE = "hybrid-alloc: global mode unavailable: {}; running in mempool mode"


@pytest.mark.parametrize(
    "vllm_config, reason",
    [
        (config(device_type="cpu"), "the device is 'cpu', not CUDA"),
        (config(sleep=True), "sleep mode (cumem allocator) is on"),
    ],
)
def test_fails_closed_before_install(vllm_config, reason, install, caplog):
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    events = []
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(vllm_config, events)
        start_worker(vllm_config, events)  # a second engine start in this process: still one line
    assert lines(caplog) == [UNAVAILABLE.format(reason)]
    assert install == []
    assert events == [("worker.init_device", False)] * 2  # vLLM's own device init still runs
    assert global_state() == NOTHING


def test_cuda_already_initialised_fails_closed(install, monkeypatch, caplog):
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # e.g. a worker forked after CUDA init
    events = []
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(config(), events)
    assert lines(caplog) == [
        UNAVAILABLE.format("CUDA is already initialised in this worker process (e.g. forked after CUDA init)")
    ]
    assert install == [] and events == [("worker.init_device", False)]
    assert global_state() == NOTHING


def test_install_failure_fails_closed(caplog):
    """The real allocator.install() on this CPU-only PyTorch raises AllocatorError: its first line is the reason."""
    if torch.version.cuda:
        pytest.skip("needs a PyTorch without CUDA (install would not fail here)")
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    events = []
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(config(), events)
    (line,) = lines(caplog)
    assert line.startswith("hybrid-alloc: global mode unavailable: PyTorch ") and "is built without CUDA" in line
    assert line.endswith("; running in mempool mode") and "\n" not in line
    assert not allocator.installed() and events == [("worker.init_device", False)]
    assert global_state() == NOTHING


def test_other_install_errors_fail_closed(monkeypatch, caplog):
    def broken(hooks="require"):
        raise OSError("libhybrid_alloc.so: cannot open shared object file\nsecond line")

    monkeypatch.setattr(allocator, "install", broken)
    os.environ["HYBRID_ALLOC_MODE"] = "global"
    global_mode.patch()
    with caplog.at_level("INFO", logger=LOGGER):
        start_worker(config(), [])
    assert lines(caplog) == [UNAVAILABLE.format("OSError: libhybrid_alloc.so: cannot open shared object file")]
    assert global_state() == NOTHING


def test_register_wires_global_mode_without_cuda(monkeypatch):
    """register() (front process): only the worker hook, no CUDA call; unregister() undoes it."""
    import vllm

    from hybrid_alloc import vllm_plugin

    if not vllm.__version__.startswith(("0.32", "0.33")):
        pytest.skip(f"vLLM {vllm.__version__}")

    def no_cuda(*args, **kwargs):
        raise AssertionError("register() initialised CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    monkeypatch.setattr(torch.cuda, "init", no_cuda)
    os.environ.update(HYBRID_ALLOC="1", HYBRID_ALLOC_MODE="global")
    monkeypatch.setattr(vllm_plugin, "_registered", False)
    vllm_plugin.register()
    try:
        assert vars(worker_base.WorkerWrapperBase)["init_device"].hybrid_alloc_global  # global_mode's wrapper
        assert global_state() == NOTHING
    finally:
        vllm_plugin.unregister()
    assert vars(worker_base.WorkerWrapperBase)["init_device"] is STOCK_INIT_DEVICE


def _method(module: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found")


def _calls(fn: ast.AST) -> list[str]:
    return [ast.unparse(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)]


def test_the_hook_is_where_vllm_032_and_033_initialise_a_worker_device():
    """WorkerWrapperBase.init_device calls the worker's init_device; every executor calls the wrapper's; the
    GPU worker's init_device touches CUDA only after it starts; WorkerWrapperBase.init_worker, which runs
    before (and loads the plugins), calls no CUDA."""
    for label, found in vllm_dirs():
        base = tree(found["vllm"], "v1/worker/worker_base.py")
        assert "self.worker.init_device" in _calls(_method(base, "WorkerWrapperBase", "init_device")), label
        init_worker = _calls(_method(base, "WorkerWrapperBase", "init_worker"))
        assert "load_general_plugins" in init_worker, label
        assert not [c for c in init_worker if c.startswith(("torch.cuda", "torch.accelerator"))], label
        for relpath, call in (
            ("v1/executor/uniproc_executor.py", "self.driver_worker.init_device"),
            ("v1/executor/multiproc_executor.py", "self.worker.init_device"),
        ):
            assert call in _calls(tree(found["vllm"], relpath)), (label, relpath)
        worker = tree(found["vllm"], "v1/worker/gpu_worker.py")
        assert "torch.accelerator.set_device_index" in _calls(_method(worker, "Worker", "init_device")), label
        assert not [c for c in _calls(_method(worker, "Worker", "__init__")) if c.startswith("torch.cuda")], label
