import os
import tempfile

import pytest

from harness import build_model


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="hybrid-alloc-engine-") as d:
        yield d


@pytest.fixture(scope="session")
def model(workdir):
    built = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build_model(name, os.path.join(workdir, "models"))
        return built[name]

    return get


@pytest.fixture(scope="session")
def mamba2(model, workdir):
    """(stock, plugin) runs of the float32 Mamba2 hybrid on the shared workloads: shared by every module
    that compares against the plain run (test_engine_plugin, fail-closed, global mode)."""
    from harness import run
    from workloads import spec

    s = spec(model("mamba2"), "float32")
    return run(workdir, s, plugin=False), run(workdir, s, plugin=True)
