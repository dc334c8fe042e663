"""A pytest plugin for both runs of vLLM's own tests (stock and with hybrid-alloc registered): marks every
test ``skip_global_cleanup`` (vLLM's conftest then skips its per-test distributed/accelerator cleanup, which
these CPU unit tests do not need and which costs about half a second per test; vLLM's own hook for this,
``should_do_global_cleanup_after_test``)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip_global_cleanup)
