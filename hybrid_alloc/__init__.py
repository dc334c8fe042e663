"""hybrid-alloc: natural, unpadded KV/state memory for hybrid models in stock vLLM."""

__version__ = "0.1.0"
