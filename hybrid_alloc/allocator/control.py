"""The library's controls through ``hybrid_alloc._core``: configuration, statistics, tags, slabs, the trace.

Each is one call of the control module through :func:`~hybrid_alloc.allocator.library.call` (its errors as
``AllocatorError`` / ``AllocatorOOM``); none needs PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

from hybrid_alloc.allocator.library import call, core
from hybrid_alloc.errors import AllocatorError


def last_error() -> str:
    return call(core().last_error)


def backend_name() -> str:
    """'cuda' or 'host' (creates the backend on first call; HYBRID_ALLOC_BACKEND=auto|cuda|host)."""
    return call(core().backend_name)


def configure(**options: Any) -> None:
    """``configure(alignment=512, arena_tags="kv_cache,weights")``: see hybrid_alloc.h for the keys."""
    c = core()
    for key, value in options.items():
        call(c.configure, key, str(int(value) if isinstance(value, bool) else value))


# --------------------------------------------------------------------------------------- statistics
def stats(device: int = 0) -> dict:
    """Counters of one device: {"total"|"arena"|"caching": {current, peak, reserved, alloc_count,
    free_count}, "arena_reserved_bytes", "num_ooms", ...}."""
    return call(core().stats, device)


def tag_stats(device: int = 0) -> dict[str, dict]:
    """Per-tag counters of one device: {tag: {current, peak, reserved, alloc_count, free_count}}."""
    return call(core().tag_stats, device)


def slabs(device: int = 0) -> list[dict]:
    """Live slabs in address order: [{ptr, size, carved, offset, name, tag}]."""
    return call(core().slabs, device)


def reset_peak_stats(device: int = 0) -> None:
    call(core().reset_peak_stats, device)


# --------------------------------------------------------------------------------------------- tags
def set_tag(tag: str) -> None:
    call(core().set_tag, tag)


def push_tag(tag: str) -> None:
    call(core().push_tag, tag)


def pop_tag() -> None:
    call(core().pop_tag)


def current_tag() -> str:
    return call(core().current_tag)


@contextlib.contextmanager
def tag(name: str) -> Iterator[None]:
    """Charge this thread's allocations inside the block to `name`."""
    push_tag(name)
    try:
        yield
    finally:
        pop_tag()


# ------------------------------------------------------------------------------------ slabs (direct)
def slab_alloc(size: int, name: str = "", tag: str = "", device: int = 0) -> int:
    """Allocate a slab of exactly `size` bytes; returns its address. Free it with slab_free()."""
    if size <= 0:
        raise AllocatorError(f"slab size must be > 0 (got {size})")
    return call(core().slab_alloc, device, size, name, tag)


def slab_free(ptr: int) -> None:
    call(core().slab_free, ptr)


def arena_reserve(nbytes: int, device: int = 0) -> None:
    """Reserve the device arena (rounded up to 2 MiB); 0 = on demand. Fails while slabs are live."""
    call(core().arena_reserve, device, nbytes)


# --------------------------------------------------------------------------------------------- trace
@dataclass
class AllocationTrace:
    """A dumped allocation trace: the header line and the events (dicts with t_ns, op, device, stream, ptr,
    size, tag, pool), in time order. Iterating yields the events."""

    header: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def trace_enable(enabled: bool = True, capacity_events: int = 0) -> None:
    call(core().trace_enable, 1 if enabled else 0, capacity_events)


def trace_clear() -> None:
    call(core().trace_clear)


def trace(path: str | None = None) -> AllocationTrace:
    """Dump the trace (to `path`, or a temporary file removed afterwards) and parse its JSON lines."""
    c = core()
    tmp = None
    if path is None:
        fd, tmp = tempfile.mkstemp(prefix="hybrid_alloc_trace_", suffix=".jsonl")
        os.close(fd)
        path = tmp
    try:
        call(c.trace_dump, path)
        return parse_trace(path)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def parse_trace(path: str) -> AllocationTrace:
    out = AllocationTrace()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise AllocatorError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if rec.get("type") == "header":
                out.header = rec
            else:
                out.events.append(rec)
    return out
