"""Every attribute the plugin replaces goes through ``apply``, so one list says what was patched.

A plugin module declares what it replaces as ``Patch`` es: the attribute's name, the owners that hold it
and ``wrap``, which receives the original (the raw value as the first owner stores it: a classmethod
stays one) and returns the replacement. vLLM modules often import a function by name (``from ...
import get_kv_cache_configs``): the defining module and each importer hold their own reference, so a
patch names all of them; by default the owners are where the running vLLM release keeps the name
(``hybrid_alloc.vllm_versions``). Attributes of live objects vLLM creates at run time (a pool's free
queue, a manager's class) are declared the same way, as ``Swap`` s, and set by ``swap``.

Invariants: an attribute is replaced at most once per owner or object (applying again while the
replacement is in place changes nothing: vLLM calls ``register()`` again in spawned processes); ``_patched`` holds (owner, name, original) in patch
order, ``_swapped`` the swapped attributes of live objects while they live (no original kept: it would
keep the object alive); ``restore`` undoes the patches (tests that apply the plugin inside a process that
also runs stock vLLM).
"""

from __future__ import annotations

import importlib
import weakref
from dataclasses import dataclass
from typing import Callable

from hybrid_alloc import vllm_versions

_patched: list[tuple[object, str, object]] = []  # (owner, attribute, original raw value), in patch order
_installed: dict[tuple[int, str], object] = {}  # (id(owner), attribute) -> the replacement set there
_swapped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # live object -> {swapped attribute}


@dataclass(frozen=True)
class Patch:
    name: str
    wrap: Callable  # original -> replacement
    owners: tuple = ()  # objects or "module[:Class]" strings; empty: the running release's sites for name


def resolve(owner):
    """A "module" or "module:Class" string -> the object; any other owner as given."""
    if not isinstance(owner, str):
        return owner
    module, _, cls = owner.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def _owners(patch: Patch) -> list:
    if patch.owners:
        return [resolve(o) for o in patch.owners]
    return [resolve(o) for o in vllm_versions.running().sites.get(patch.name, ())]


def _in_place(owner, name: str) -> bool:
    """The owner's attribute is the replacement set here (not restored since, here or by a test)."""
    key = (id(owner), name)
    return key in _installed and vars(owner).get(name) is _installed[key]


def apply(patches) -> None:
    """Replace each patch's attribute on all its owners (none: a name the running release lacks). Owners
    holding the same original (a function imported by name) get the same replacement; each other
    original (the same method name on two classes) is wrapped on its own."""
    for patch in patches:
        replacements: dict[int, object] = {}  # id(original) -> its replacement
        for owner in _owners(patch):
            if not _in_place(owner, patch.name):
                original = vars(owner)[patch.name]
                if id(original) not in replacements:
                    replacements[id(original)] = patch.wrap(original)
                _patched.append((owner, patch.name, original))
                _installed[id(owner), patch.name] = replacements[id(original)]
                setattr(owner, patch.name, replacements[id(original)])


@dataclass(frozen=True)
class Swap:
    owner: type  # the class of the live objects (vLLM creates them)
    name: str
    wrap: Callable  # (original, obj, *context) -> replacement


def swap(obj, declared: Swap, *context) -> None:
    """Set ``declared.name`` on the live object ``obj`` to ``declared.wrap(original, obj, *context)``, once."""
    assert isinstance(obj, declared.owner), f"{type(obj).__name__} is not a {declared.owner.__name__}"
    swapped = _swapped.setdefault(obj, set())
    if declared.name not in swapped:
        swapped.add(declared.name)
        setattr(obj, declared.name, declared.wrap(getattr(obj, declared.name), obj, *context))


def original(patch: Patch):
    """What ``patch`` replaced on its first owner (the defining module or class)."""
    owner = _owners(patch)[0]
    return next(value for o, n, value in _patched if o is owner and n == patch.name)


def restore() -> None:
    """Undo every patch. Live objects keep their swaps: each was built whole under the plugin (a pool's
    queue already hands out its blocks), and dies with its engine."""
    while _patched:
        owner, name, value = _patched.pop()
        setattr(owner, name, value)
    _installed.clear()
