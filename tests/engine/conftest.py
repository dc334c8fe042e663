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
