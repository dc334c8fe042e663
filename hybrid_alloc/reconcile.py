"""The old path of `hybrid_alloc.validation.reconcile` (the same module object, so patches of either apply to both),
kept while `vllm_plugin/startup_report.py` imports it from here."""

import sys

from hybrid_alloc.validation import reconcile

sys.modules[__name__] = reconcile
