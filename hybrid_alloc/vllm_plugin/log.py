"""Plugin log lines: through vLLM's logger, each distinct line once per engine.

vLLM runs the plugin in the front process, the engine core and every worker; children inherit the
environment, so a line marked in the environment by a parent is not repeated by its children.
"""

from __future__ import annotations

import hashlib
import logging
import os

logger = logging.getLogger("vllm.hybrid_alloc")


def once(line: str) -> None:
    key = "HYBRID_ALLOC_LOGGED_" + hashlib.sha1(line.encode()).hexdigest()[:12]
    if os.environ.get(key):
        return
    os.environ[key] = "1"
    logger.info(line)
