"""The configs bundled in ``configs/``: short names (``configs/index.json``) and their Hugging Face ids."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


@lru_cache(maxsize=1)
def _index() -> dict[str, dict]:
    return json.loads((CONFIG_DIR / "index.json").read_text(encoding="utf-8"))["models"]


def bundled_models() -> dict[str, str]:
    """Short name -> bundled file name (relative to ``configs/``)."""
    return {name: entry["file"] for name, entry in _index().items()}


def find_bundled(model: str) -> tuple[str, Path] | None:
    """(Hugging Face id, path) for a short name or HF id (case-insensitive), else None."""
    key = model.strip().lower()
    for name, entry in _index().items():
        ids = [entry["hf_id"], *entry.get("aliases", [])]
        if key == name or key in (i.lower() for i in ids):
            return entry["hf_id"], CONFIG_DIR / entry["file"]
    return None


def bundled_files() -> list[Path]:
    """Every bundled config file, flattened and verbatim (``index.json`` excluded)."""
    return sorted(p for p in CONFIG_DIR.rglob("*.json") if p.name != "index.json")
