"""A pytest plugin (``-p tests.vllm_suite.register_plugin``): the hybrid-alloc vLLM plugin registered before
collection, as vLLM's plugin loader would register it in a process with ``HYBRID_ALLOC=1``."""

import os

os.environ["HYBRID_ALLOC"] = "1"

from hybrid_alloc import vllm_plugin  # noqa: E402

vllm_plugin.register()
