"""The scheduler's ordered free structure: a state slot takes the highest free aligned run of ``k`` ids
(slot ``s`` = block ids ``[s*k, (s+1)*k)``), attention the ids no run can use first (the ``num_blocks % k``
ids above the last run), then the lowest free ids, so runs stay available.

Replaces vLLM's ``FreeKVCacheBlockQueue`` (``vllm/v1/core/kv_cache_utils.py``), an LRU list that cannot
answer "lowest id" or "highest free aligned run" without a scan, inside the one ``BlockPool`` that every
group shares. Invariant: a block id is either free here or held by exactly one owner.

``OrderedFreeBlockQueue`` orders only by id: "none" mode (no block is ever cached). Prefix caching ("align"
mode) uses ``CachingFreeBlockQueue``: uncached free ids in the same ordered structure, cached-but-free
attention blocks and state slots in one LRU, evicted oldest-first when either side needs room. A slot that
needs a free aligned run evicts LRU units until one exists (it may evict more than the run it gets: no
run-aware victim choice yet).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict


class FreeRuns:
    """Free block ids ``0..num_blocks-1`` with attention-order and highest-free-aligned-run queries.

    Attention order: the spare ids above the last whole run (never part of a run), then ascending ids. So
    ``n`` identical requests fit while ``n * blocks_per_request <= num_blocks - 1`` and ``n * m`` runs are
    left above run 0 (the planner's ``requests_that_fit``).
    Lazy heaps: entries are checked against ``free`` / ``run_free`` when popped and rebuilt when stale
    entries outnumber live ones, so every operation is O(log n) amortised.
    """

    def __init__(self, num_blocks: int, k: int, free_ids) -> None:
        assert k >= 1 and num_blocks >= 1
        self.k = k
        self.num_runs = num_blocks // k
        self.first_spare = self.num_runs * k  # ids from here up belong to no run
        self.free = bytearray(num_blocks)
        self.run_free = [0] * self.num_runs  # free ids in each aligned run
        self.num_free = 0
        self.num_free_runs = 0
        self._low: list[int] = []  # min-heap of attention-order keys (_key), possibly stale
        self._runs: list[int] = []  # max-heap (negated) of fully free runs, possibly stale
        for i in free_ids:
            self._mark_free(i)
        self._rebuild()

    def _mark_free(self, i: int) -> None:
        assert not self.free[i], f"block {i} freed twice"
        self.free[i] = 1
        self.num_free += 1
        s = i // self.k
        if s < self.num_runs:
            self.run_free[s] += 1
            if self.run_free[s] == self.k:
                self.num_free_runs += 1
                heapq.heappush(self._runs, -s)

    def _mark_taken(self, i: int) -> None:
        assert self.free[i], f"block {i} is not free"
        self.free[i] = 0
        self.num_free -= 1
        s = i // self.k
        if s < self.num_runs:
            if self.run_free[s] == self.k:
                self.num_free_runs -= 1
            self.run_free[s] -= 1

    def _key(self, i: int) -> int:
        """Attention order: spare ids (negative keys) before every id of a run."""
        return i - len(self.free) if i >= self.first_spare else i

    def _id(self, key: int) -> int:
        return key + len(self.free) if key < 0 else key

    def _rebuild(self) -> None:
        n = len(self.free)
        spare = [i - n for i in range(self.first_spare, n) if self.free[i]]
        self._low = spare + [i for i in range(self.first_spare) if self.free[i]]  # sorted: already a heap
        self._runs = [-s for s in range(self.num_runs - 1, -1, -1) if self.run_free[s] == self.k]

    def _maybe_compact(self) -> None:
        if len(self._low) > 2 * self.num_free + 64 or len(self._runs) > 2 * self.num_free_runs + 64:
            self._rebuild()

    def take_lowest(self, n: int) -> list[int]:
        """``n`` ids for attention: free spare ids first, then the lowest free ids."""
        if n > self.num_free:
            raise ValueError(f"cannot take {n} blocks: {self.num_free} free")
        out = []
        while len(out) < n:
            i = self._id(heapq.heappop(self._low))
            if self.free[i]:
                self._mark_taken(i)
                out.append(i)
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

    def release(self, ids) -> None:
        for i in ids:
            self._mark_free(i)
            heapq.heappush(self._low, self._key(i))
        self._maybe_compact()

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
    """The free structure of "align" mode (prefix caching on): uncached free ids in ``FreeRuns`` (attention:
    lowest ids; slots: highest free aligned runs) plus cached-but-free *units* in one LRU, evicted
    oldest-first whenever either side needs room (no ratio between cached attention and cached state).

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
        runs = self.runs
        self.avail = [runs.run_free[s] for s in range(runs.num_runs)]  # free or evictable ids per run
        self.num_avail_runs = sum(1 for a in self.avail if a == k)

    # --- availability bookkeeping (free or cached-free ids per aligned run)
    def _avail(self, ids, delta: int) -> None:
        k = self.k
        for i in ids:
            s = i // k
            if s < len(self.avail):
                if self.avail[s] == k:
                    self.num_avail_runs -= 1
                self.avail[s] += delta
                if self.avail[s] == k:
                    self.num_avail_runs += 1

    def _unit_ids(self, rep: int, size: int) -> range:
        return range(rep, rep + size)

    @property
    def num_free_blocks(self) -> int:
        return self.runs.num_free + self.num_cached_free

    @property
    def num_free_runs(self) -> int:
        return self.num_avail_runs

    def free_runs_besides(self, blocks) -> int:
        """Aligned runs free or evictable that stay so once ``blocks`` (prefix-cache hits about to be
        touched, of any group) leave the LRU: a touched unit makes its run unavailable."""
        runs = {b.block_id // self.k for b in blocks if b.block_id in self.lru}
        return self.num_avail_runs - sum(1 for s in runs if s < len(self.avail) and self.avail[s] == self.k)

    def _release_ids(self, ids) -> None:
        """Ids of a unit that stopped being cached (evicted) go to the uncached free set."""
        for i in ids:
            if i != ids[0]:  # the representative's ref_cnt is vLLM's; the others' are the slot's
                self.blocks[i].ref_cnt = 0
        self.runs.release(list(ids))

    def evict_one(self) -> None:
        rep, size = self.lru.popitem(last=False)
        self.num_cached_free -= size
        block = self.blocks[rep]
        self.pool._maybe_evict_cached_block(block)
        self.slot_reps.discard(rep)
        self._release_ids(self._unit_ids(rep, size))  # availability unchanged: evictable -> free

    # --- FreeKVCacheBlockQueue interface
    def popleft_n(self, n: int) -> list:
        while self.runs.num_free < n and self.lru:
            self.evict_one()
        ids = self.runs.take_lowest(n)
        self._avail(ids, -1)
        return [self.blocks[i] for i in ids]

    def pop_run(self) -> tuple[int, list]:
        while not self.runs.num_free_runs and self.lru:
            self.evict_one()
        s = self.runs.take_run()
        k = self.k
        ids = range(s * k, (s + 1) * k)
        self._avail(ids, -1)
        self.slot_reps.add(s * k)
        return s, self.blocks[s * k : (s + 1) * k]

    def remove(self, block) -> None:
        """Take one free block (vLLM's touch of a cache hit: the unit leaves the LRU, stays held)."""
        i = block.block_id
        size = self.lru.pop(i, None)
        if size is not None:
            self.num_cached_free -= size
            self._avail(self._unit_ids(i, size), -1)
            return
        assert i not in self.slot_reps, f"slot {i} is held, not free"
        self.runs.take(i)
        self._avail([i], -1)

    def _free(self, block, front: bool) -> None:
        i = block.block_id
        size = self.k if i in self.slot_reps else 1
        if block.block_hash is None:
            if size > 1:
                self.slot_reps.discard(i)
            ids = self._unit_ids(i, size)
            self._release_ids(ids)
            self._avail(ids, +1)
            return
        self.lru[i] = size
        if front:
            self.lru.move_to_end(i, last=False)
        self.num_cached_free += size
        self._avail(self._unit_ids(i, size), +1)

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
