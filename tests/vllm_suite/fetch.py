"""vLLM's source distribution for a release, downloaded at test time like any other dependency (never
copied into the repository): the sdist named by the package index (PEP 691 JSON, the index pip uses),
checked against the index's sha256, and only its ``tests/`` tree and ``pyproject.toml`` (pytest's
configuration) unpacked into the cache folder. ``pip download --no-binary :all:`` would build vLLM's
metadata first (CUDA build requirements), so the index is read directly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.request

INDEX = os.environ.get("HYBRID_ALLOC_VLLM_INDEX", "https://pypi.org/simple")


def _sdist(version: str) -> dict:
    request = urllib.request.Request(f"{INDEX}/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        files = json.load(response)["files"]
    name = f"vllm-{version}.tar.gz"
    return next(f for f in files if f["filename"] == name)


def vllm_tests(version: str, cache: str) -> str:
    """The folder holding vLLM ``version``'s ``tests/`` and ``pyproject.toml`` (downloaded once into ``cache``)."""
    root = os.path.join(cache, f"vllm-{version}")
    done = os.path.join(root, ".unpacked")
    if os.path.exists(done):
        return root
    os.makedirs(cache, exist_ok=True)
    entry = _sdist(version)
    archive = os.path.join(cache, entry["filename"])
    if not os.path.exists(archive) or _sha256(archive) != entry["hashes"]["sha256"]:
        with urllib.request.urlopen(entry["url"], timeout=600) as response, open(archive + ".part", "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(archive + ".part", archive)
    if _sha256(archive) != entry["hashes"]["sha256"]:
        raise RuntimeError(f"{archive}: sha256 differs from the index's")
    shutil.rmtree(root, ignore_errors=True)
    prefix = f"vllm-{version}/"
    with tarfile.open(archive) as tar:
        members = [
            m for m in tar.getmembers()
            if m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml"
        ]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(root, members=members, filter="data")
    open(done, "w").close()
    return root


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
