"""The scheduler's ordered free structure: a state slot takes the highest free aligned run of ``k`` ids
(slot ``s`` = block ids ``[s*k, (s+1)*k)``); attention takes ids that no run a slot could have holds first
(the ``num_blocks % k`` ids above the last run, then the lowest ids of runs already broken), and breaks a
run only when there is no such id, so runs stay available.

Replaces vLLM's ``FreeKVCacheBlockQueue`` (``vllm/v1/core/kv_cache_utils.py``), an LRU list that cannot
answer "lowest id" or "highest free aligned run" without a scan, inside the one ``BlockPool`` that every
group shares. Invariant: a block id is either free here or held by exactly one owner.

``OrderedFreeBlockQueue`` orders only by id and run: "none" mode (no block is ever cached). Prefix caching
("align" mode) uses ``CachingFreeBlockQueue``: uncached free ids in the same ordered structure, cached-but-free
attention blocks and state slots in one LRU. A slot that needs a free aligned run evicts LRU units until one
exists (it may evict more than the run it gets: no run-aware victim choice yet); attention evicts a cached
attention block outside available runs before it breaks one.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict


class FreeRuns:
    """Free block ids ``0..num_blocks-1`` with attention-order and highest-free-aligned-run queries.

    A run is *available* while each of its ``k`` ids is free or evictable (a cached-free id the caller
    reports with ``evictable``; none in "none" mode): a slot can have it. Attention order keeps available
    runs whole: the spare ids above the last whole run (never part of a run), then the free ids of runs
    that are not available anyway, ascending, then the free ids of available runs, ascending. Filling an
    empty pool with identical requests is ascending order, so ``n`` requests fit while
    ``n * blocks_per_request <= num_blocks - 1`` and ``n * m`` runs are left above run 0 (the planner's
    ``requests_that_fit``).
    Lazy heaps: an entry is checked against ``free`` and its run's availability when popped; a run that
    becomes (un)available pushes its free ids into the other heap; heaps are rebuilt when stale entries
    outnumber live ones, so every operation is O(log n) amortised (O(k log n) when a run changes side).
    """

    def __init__(self, num_blocks: int, k: int, free_ids) -> None:
        assert k >= 1 and num_blocks >= 1
        self.k = k
        self.num_runs = num_blocks // k
        self.first_spare = self.num_runs * k  # ids from here up belong to no run
        self.free = bytearray(num_blocks)
        self.run_free = [0] * self.num_runs  # free ids in each aligned run
        self.run_avail = [0] * self.num_runs  # free or evictable ids in each aligned run
        self.num_free = 0
        self.num_free_runs = 0
        self.num_avail_runs = 0
        self._broken: list[int] = []  # min-heap: spare ids (negative keys), free ids of unavailable runs
        self._whole: list[int] = []  # min-heap: free ids of available runs
        self._runs: list[int] = []  # max-heap (negated) of fully free runs, possibly stale
        for i in free_ids:
            self._mark_free(i, +1)
        self._rebuild()

    def _mark_free(self, i: int, avail: int) -> None:
        assert not self.free[i], f"block {i} freed twice"
        self.free[i] = 1
        self.num_free += 1
        s = i // self.k
        if s < self.num_runs:
            self.run_free[s] += 1
            if self.run_free[s] == self.k:
                self.num_free_runs += 1
                heapq.heappush(self._runs, -s)
            self._add_avail(s, avail)

    def _mark_taken(self, i: int) -> None:
        assert self.free[i], f"block {i} is not free"
        self.free[i] = 0
        self.num_free -= 1
        s = i // self.k
        if s < self.num_runs:
            if self.run_free[s] == self.k:
                self.num_free_runs -= 1
            self.run_free[s] -= 1
            self._add_avail(s, -1)

    def _add_avail(self, s: int, delta: int) -> None:
        if not delta:
            return
        was = self.run_avail[s] == self.k
        self.run_avail[s] += delta
        now = self.run_avail[s] == self.k
        if was != now:
            self.num_avail_runs += 1 if now else -1
            heap = self._whole if now else self._broken
            for i in range(s * self.k, (s + 1) * self.k):
                if self.free[i]:
                    heapq.heappush(heap, i)
            if not now:
                self.on_unavailable(s)

    def on_unavailable(self, s: int) -> None:
        """Run ``s`` stopped being available (a caller's hook: its evictable ids may now go to attention)."""

    def in_available_run(self, i: int) -> bool:
        """Id ``i`` lies in an available run (spare ids lie in none)."""
        s = i // self.k
        return s < self.num_runs and self.run_avail[s] == self.k

    def _rebuild(self) -> None:
        n = len(self.free)
        spare = [i - n for i in range(self.first_spare, n) if self.free[i]]
        ids = [i for i in range(self.first_spare) if self.free[i]]
        self._broken = spare + [i for i in ids if not self.in_available_run(i)]  # sorted: already a heap
        self._whole = [i for i in ids if self.in_available_run(i)]
        self._runs = [-s for s in range(self.num_runs - 1, -1, -1) if self.run_free[s] == self.k]

    def _maybe_compact(self) -> None:
        if len(self._broken) + len(self._whole) > 2 * self.num_free + 64 or \
                len(self._runs) > 2 * self.num_free_runs + 64:
            self._rebuild()

    def take_broken(self) -> int | None:
        """Take the lowest free id no available run holds (spare ids first), or None."""
        n = len(self.free)
        while self._broken:
            key = heapq.heappop(self._broken)
            i = key + n if key < 0 else key
            if self.free[i] and (key < 0 or not self.in_available_run(i)):
                self._mark_taken(i)
                self._maybe_compact()
                return i
        return None

    def take_whole(self) -> int | None:
        """Take the lowest free id of an available run (it stops being available), or None."""
        while self._whole:
            i = heapq.heappop(self._whole)
            if self.free[i] and self.in_available_run(i):
                self._mark_taken(i)
                self._maybe_compact()
                return i
        return None

    def take_lowest(self, n: int) -> list[int]:
        """``n`` ids for attention, in attention order (the class docstring)."""
        if n > self.num_free:
            raise ValueError(f"cannot take {n} blocks: {self.num_free} free")
        out = []
        while len(out) < n:
            i = self.take_broken()
            out.append(self.take_whole() if i is None else i)
        return out

    def take_run(self) -> int:
        """Take the highest fully free aligned run; returns its slot id ``s``."""
        if not self.num_free_runs:
            raise ValueError("no free aligned run")
        while True:
            s = -heapq.heappop(self._runs)
            if self.run_free[s] == self.k:
                break
        for i in range(s * self.k, (s + 1) * self.k):
            self._mark_taken(i)
        return s

    def take(self, i: int) -> None:
        """Take one specific free id (vLLM's ``remove``)."""
        self._mark_taken(i)

    def release(self, ids, evicted: bool = False) -> None:
        """``ids`` become free: from held, or (``evicted``) from evictable, which kept their runs available."""
        n = len(self.free)
        for i in ids:
            self._mark_free(i, 0 if evicted else +1)
            if i >= self.first_spare:
                heapq.heappush(self._broken, i - n)
            else:
                heapq.heappush(self._whole if self.in_available_run(i) else self._broken, i)
        self._maybe_compact()

    def evictable(self, ids, delta: int) -> None:
        """Held ids became cached-free (``delta`` +1), or cached-free ids were touched again (-1)."""
        for i in ids:
            s = i // self.k
            if s < self.num_runs:
                self._add_avail(s, delta)

    def free_ids(self) -> list[int]:
        return [i for i, f in enumerate(self.free) if f]


class OrderedFreeBlockQueue:
    """``FreeKVCacheBlockQueue``'s interface as ``BlockPool`` uses it, over ``FreeRuns``."""

    def __init__(self, blocks: list, k: int, free_blocks) -> None:
        self.blocks = blocks  # BlockPool.blocks: blocks[i].block_id == i
        self.runs = FreeRuns(len(blocks), k, (b.block_id for b in free_blocks))

    @property
    def num_free_blocks(self) -> int:
        return self.runs.num_free

    def popleft(self):
        return self.popleft_n(1)[0]

    def popleft_n(self, n: int) -> list:
        return [self.blocks[i] for i in self.runs.take_lowest(n)]

    def pop_run(self) -> tuple[int, list]:
        """The highest free aligned run: (slot id, its ``k`` blocks)."""
        s = self.runs.take_run()
        k = self.runs.k
        return s, self.blocks[s * k : (s + 1) * k]

    @property
    def num_free_runs(self) -> int:
        return self.runs.num_free_runs

    def remove(self, block) -> None:
        self.runs.take(block.block_id)

    def append(self, block) -> None:
        self.runs.release([block.block_id])

    def append_n(self, blocks) -> None:
        self.runs.release([b.block_id for b in blocks])

    prepend_n = append_n  # order among free blocks is by id, not by release time

    def get_all_free_blocks(self) -> list:
        return [self.blocks[i] for i in self.runs.free_ids()]


def take_slot(block_pool) -> tuple[int, list]:
    """Take the highest free aligned run from ``block_pool`` as ``BlockPool.get_new_blocks`` takes blocks:
    reuse watchers notified, reference counts and metrics updated."""
    s, blocks = block_pool.free_block_queue.pop_run()
    if block_pool._reuse_watchers:
        block_pool._notify_reuse(blocks)
    for block in blocks:
        assert block.ref_cnt == 0
        block.ref_cnt += 1
        if block_pool.metrics_collector:
            block_pool.metrics_collector.on_block_allocated(block)
    return s, blocks


class CachingFreeBlockQueue(OrderedFreeBlockQueue):
    """The free structure of "align" mode (prefix caching on): uncached free ids in ``FreeRuns`` (slots: the
    highest free aligned runs) plus cached-but-free *units* in one LRU (no ratio between cached attention
    and cached state). A slot evicts oldest-first until a run is free. Attention takes an uncached free id
    outside available runs (free or evictable ids only) first; where requests wait for runs
    (``_runs_bind``), next the oldest cached attention block outside them (evicted); then an uncached free
    id inside one (the run breaks), then the oldest unit. Otherwise cached blocks at low ids push attention
    into free runs and a new request finds no run for its slot (tests/engine/
    test_engine_prefix_caching_capacity.py: 48 steps against 40 with caching off).

    A unit is an attention block (1 id) or a state slot (its representative id ``s*k`` and the ``k - 1``
    ids under it, held while the slot is held or cached). In "align" mode a state group's block table holds
    representatives, so vLLM's hashes, reference counts and ``cached_block_hash_to_block`` work on them
    unchanged; eviction of a slot frees its whole aligned run. ``num_free_blocks`` counts uncached free ids
    plus every id of every cached-free unit; ``num_free_runs`` counts aligned runs that are free or would
    be after evicting cached-free units (what admission of a slot needs)."""

    def __init__(self, pool, k: int, free_blocks) -> None:
        super().__init__(pool.blocks, k, free_blocks)
        self.pool = pool
        self.k = k
        self.lru: OrderedDict = OrderedDict()  # unit representative id -> unit size (1 or k); oldest first
        self.num_cached_free = 0
        self.slot_reps: set[int] = set()  # representatives of slots held or cached
        self.waiting_requests = 0  # requests waiting for admission, as the scheduler last counted (chunk_split)
        self.age: dict[int, int] = {}  # cached attention block id -> its LRU position (smaller = older)
        self._newest = self._oldest = 0
        self._outside: list[tuple[int, int]] = []  # min-heap (age, id): cached attention blocks outside
        # available runs, possibly stale (checked when popped; pushed again when their run stops being available)
        self.runs.on_unavailable = self._run_unavailable

    def _runs_bind(self) -> bool:
        """Available runs are what admission runs out of: no more of them than requests waiting for one. Only
        then does attention evict a cached block rather than break a run; with runs to spare, it keeps the
        cache (an estimate from the pool alone, without the queue, cost a quarter of the hits in
        tests/engine/test_engine_checkpoint_keys.py, one request at a time)."""
        return self.runs.num_avail_runs <= self.waiting_requests

    def _is_outside(self, i: int) -> bool:
        return not self.runs.in_available_run(i)

    def _push_outside(self, i: int) -> None:
        heapq.heappush(self._outside, (self.age[i], i))
        if len(self._outside) > 2 * len(self.age) + 64:
            self._outside = [(a, j) for j, a in self.age.items() if self._is_outside(j)]
            heapq.heapify(self._outside)

    def _run_unavailable(self, s: int) -> None:
        for i in range(s * self.k, (s + 1) * self.k):
            if i in self.age:
                self._push_outside(i)

    def _evict_outside(self) -> bool:
        """Evict the oldest cached attention block outside available runs; False if there is none."""
        while self._outside:
            age, i = heapq.heappop(self._outside)
            if self.age.get(i) == age and self._is_outside(i):
                self._evict(i)
                return True
        return False

    def _unit_ids(self, rep: int, size: int) -> range:
        return range(rep, rep + size)

    @property
    def num_free_blocks(self) -> int:
        return self.runs.num_free + self.num_cached_free

    @property
    def num_free_runs(self) -> int:
        return self.runs.num_avail_runs

    def free_runs_besides(self, blocks) -> int:
        """Aligned runs free or evictable that stay so once ``blocks`` (prefix-cache hits about to be
        touched, of any group) leave the LRU: a touched unit makes its run unavailable."""
        runs, avail = self.runs, self.runs.run_avail
        touched = {b.block_id // self.k for b in blocks if b.block_id in self.lru}
        return runs.num_avail_runs - sum(1 for s in touched if s < runs.num_runs and avail[s] == self.k)

    def _release_ids(self, ids, evicted: bool) -> None:
        """Ids of a unit that is no longer held or cached go to the uncached free set."""
        for i in ids:
            if i != ids[0]:  # the representative's ref_cnt is vLLM's; the others' are the slot's
                self.blocks[i].ref_cnt = 0
        self.runs.release(list(ids), evicted=evicted)

    def evict_one(self) -> None:
        self._evict(next(iter(self.lru)))

    def _evict(self, rep: int) -> None:
        size = self.lru.pop(rep)
        self.age.pop(rep, None)
        self.num_cached_free -= size
        block = self.blocks[rep]
        self.pool._maybe_evict_cached_block(block)
        self.slot_reps.discard(rep)
        self._release_ids(self._unit_ids(rep, size), evicted=True)  # availability unchanged

    # --- FreeKVCacheBlockQueue interface
    def popleft_n(self, n: int) -> list:
        if n > self.num_free_blocks:
            raise ValueError(f"cannot take {n} blocks: {self.num_free_blocks} free")
        runs, out = self.runs, []
        runs_bind = self._runs_bind()
        while len(out) < n:
            i = runs.take_broken()
            if i is None and runs_bind and self._evict_outside():
                i = runs.take_broken()
            if i is None:
                i = runs.take_whole()
            if i is None:
                self.evict_one()
                continue
            out.append(i)
        return [self.blocks[i] for i in out]

    def pop_run(self) -> tuple[int, list]:
        while not self.runs.num_free_runs and self.lru:
            self.evict_one()
        s = self.runs.take_run()
        k = self.k
        self.slot_reps.add(s * k)
        return s, self.blocks[s * k : (s + 1) * k]

    def remove(self, block) -> None:
        """Take one free block (vLLM's touch of a cache hit: the unit leaves the LRU, stays held)."""
        i = block.block_id
        size = self.lru.pop(i, None)
        if size is not None:
            self.age.pop(i, None)
            self.num_cached_free -= size
            self.runs.evictable(self._unit_ids(i, size), -1)
            return
        assert i not in self.slot_reps, f"slot {i} is held, not free"
        self.runs.take(i)

    def _free(self, block, front: bool) -> None:
        i = block.block_id
        size = self.k if i in self.slot_reps else 1
        if block.block_hash is None:
            if size > 1:
                self.slot_reps.discard(i)
            self._release_ids(self._unit_ids(i, size), evicted=False)
            return
        self.lru[i] = size
        if front:
            self.lru.move_to_end(i, last=False)
        self.num_cached_free += size
        self.runs.evictable(self._unit_ids(i, size), +1)
        if size == 1:
            if front:
                self._oldest -= 1
            else:
                self._newest += 1
            self.age[i] = self._oldest if front else self._newest
            if self._is_outside(i):
                self._push_outside(i)

    def append(self, block) -> None:
        self._free(block, False)

    def append_n(self, blocks) -> None:
        for b in blocks:
            self._free(b, False)

    def prepend_n(self, blocks) -> None:
        for b in reversed(list(blocks)):
            self._free(b, True)

    def flush(self) -> None:
        """After ``reset_prefix_cache``: every cached-free unit lost its hash."""
        while self.lru:
            self.evict_one()

    def get_all_free_blocks(self) -> list:
        return [self.blocks[i] for i in self.runs.free_ids()] + [self.blocks[i] for i in self.lru]


class SlotPool:
    """A state manager's view of the shared ``BlockPool`` in "align" mode: ``get_new_blocks`` hands out
    slots (the representative block ``s*k`` of the highest free aligned run, evicting LRU cached units
    when needed); everything else is the shared pool's."""

    def __init__(self, pool) -> None:
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def get_new_blocks(self, num_blocks: int) -> list:
        return [self._pool.blocks[s * self._pool.free_block_queue.k] for s, _ in
                (take_slot(self._pool) for _ in range(num_blocks))]
