"""Every vLLM attribute the plugin replaces is set here, so one list says what was patched.

vLLM modules often import a function by name (``from ... import get_kv_cache_configs``): the defining
module and each importer hold their own reference, so a patch names all of them. ``restore`` undoes
everything (tests that apply the plugin inside a process that also runs stock vLLM).
"""

from __future__ import annotations

_patched: list[tuple[object, str, object]] = []  # (owner, attribute, original raw value), in patch order


def replace(owners: list, name: str, new) -> object:
    """Set ``name`` to ``new`` on every owner (the defining module or class first) and return the first
    owner's original (a class's raw descriptor, e.g. a classmethod, as stored)."""
    original = vars(owners[0])[name]
    for owner in owners:
        _patched.append((owner, name, vars(owner)[name]))
        setattr(owner, name, new)
    return original


def restore() -> None:
    while _patched:
        owner, name, value = _patched.pop()
        setattr(owner, name, value)
