"""Plugin log lines: through vLLM's logger, each distinct line once per engine.

vLLM runs the plugin in the front process, the engine core and every worker; children inherit the
environment, so a line marked in the environment by a parent is not repeated by its children.

The front process loads plugins from ``EngineArgs.__post_init__``, before ``LLM()`` configures vLLM's
logging: there the ``vllm`` logger has no handler and drops INFO. A line logged then goes to stderr
directly, so it is neither lost nor (through the mark) repeated by the children.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

logger = logging.getLogger("vllm.hybrid_alloc")


def _has_handler(log: logging.Logger) -> bool:
    node = log
    while node is not None:
        if node.handlers:
            return True
        if not node.propagate:
            return False
        node = node.parent
    return False


def once(line: str) -> None:
    key = "HYBRID_ALLOC_LOGGED_" + hashlib.sha1(line.encode()).hexdigest()[:12]
    if os.environ.get(key):
        return
    os.environ[key] = "1"
    if _has_handler(logger):
        logger.info(line)  # vLLM's format and level (VLLM_LOGGING_LEVEL) apply
    else:
        print(f"INFO {line}", file=sys.stderr, flush=True)
