""""align" mode's shared pool (prefix caching on): cached attention blocks and cached state slots in one
LRU over vLLM's own BlockPool (the 0.33 planning install: /tmp/venv33), no vLLM engine needed."""

import random

import pytest

pytest.importorskip("vllm.v1.core.block_pool")

from vllm.v1.core.block_pool import BlockPool  # noqa: E402
from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id  # noqa: E402

from hybrid_alloc.vllm_plugin import patching  # noqa: E402
from hybrid_alloc.vllm_plugin.block_pool import CachingFreeBlockQueue, SlotPool  # noqa: E402
from hybrid_alloc.vllm_plugin.kv_cache_coordinator import SWAPS  # noqa: E402


def make_pool(num_blocks=40, k=4):
    pool = BlockPool(num_blocks, enable_caching=True, hash_block_size=32)
    pool.free_block_queue = CachingFreeBlockQueue(pool, k, pool.free_block_queue.get_all_free_blocks())
    patching.swap(pool, SWAPS["reset_prefix_cache"])  # as kv_cache_coordinator.use_align_slots does
    return pool, SlotPool(pool)


def cache(pool, block, name):
    pool._insert_block_hash(make_block_hash_with_group_id(name.encode(), 0), block, None)


def owners_ok(pool, held):
    """Every id is free (uncached), cached-free (in one LRU unit) or held, never two of them."""
    q = pool.free_block_queue
    k = q.k
    free = set(q.runs.free_ids())
    cached = set()
    for rep, size in q.lru.items():
        ids = set(range(rep, rep + size))
        assert not ids & cached and not ids & free
        cached |= ids
    held_ids = set()
    for b in held:
        ids = set(range(b.block_id, b.block_id + k)) if b.block_id in q.slot_reps else {b.block_id}
        assert not ids & held_ids
        held_ids |= ids
    reserved = {0}  # vLLM's null block
    assert not held_ids & (free | cached) and not reserved & (free | cached | held_ids)
    assert free | cached | held_ids | reserved == set(range(pool.num_gpu_blocks))
    assert q.num_free_blocks == len(free) + len(cached) == pool.get_num_free_blocks()
    avail = [sum(1 for i in range(s * k, (s + 1) * k) if i in free or i in cached) for s in range(pool.num_gpu_blocks // k)]
    assert q.num_free_runs == sum(a == k for a in avail)


def test_slot_cached_then_hit_then_evicted_as_a_whole_run():
    pool, slots = make_pool(40, 4)  # id 0 is the null block (run 0 never holds a slot); runs 1..9
    (slot,) = slots.get_new_blocks(1)
    assert slot.block_id == 36 and pool.get_num_free_blocks() == 40 - 1 - 4
    cache(pool, slot, "state@96")
    pool.free_blocks([slot])
    assert pool.get_num_free_blocks() == 39 and pool.free_block_queue.lru == {36: 4}
    assert pool.get_cached_block(b"state@96", [0])[0] is slot
    pool.touch([slot])  # a hit: the slot leaves the LRU, its run stays held
    assert pool.get_num_free_blocks() == 35 and slot.ref_cnt == 1
    owners_ok(pool, [slot])
    pool.free_blocks([slot])
    # attention needs every uncached id and one more: the LRU slot is evicted and its whole run freed
    attn = pool.get_new_blocks(36)
    assert pool.free_block_queue.lru == {} and slot.block_hash is None
    assert sorted(b.block_id for b in attn)[-1] == 36  # lowest ids first: 1..35, then 36 from the run
    owners_ok(pool, attn)


def test_lru_order_across_attention_and_state():
    pool, slots = make_pool(24, 4)  # runs 1..5
    a = pool.get_new_blocks(2)
    s = slots.get_new_blocks(1)[0]
    for i, b in enumerate(a):
        cache(pool, b, f"a{i}")
    cache(pool, s, "s")
    pool.free_blocks([s])  # oldest
    pool.free_blocks(a)
    q = pool.free_block_queue
    assert list(q.lru) == [s.block_id, a[0].block_id, a[1].block_id]
    # a new slot needs a free run: runs 1..4 are free except run 0, which holds a[0], a[1] (ids 1, 2)
    got = [slots.get_new_blocks(1)[0] for _ in range(3)]
    assert s.block_hash is not None or s.block_id in [g.block_id for g in got]
    owners_ok(pool, got)


def test_attention_evicts_cached_blocks_before_breaking_the_last_run():
    """Runs bind (one available run, a request waiting for it): a new request's attention evicts cached
    attention blocks in the null block's run instead of taking the free run's ids, which would leave no
    run for the request's slot (CPU engine, GDN mixed workload: 48 steps against 40 with caching off)."""
    pool, slots = make_pool(24, 4)  # runs 0..5; run 0 holds the null block
    a = pool.get_new_blocks(3)
    assert [b.block_id for b in a] == [1, 2, 3]
    for i, b in enumerate(a):
        cache(pool, b, f"a{i}")
    pool.free_blocks(a)
    held = [slots.get_new_blocks(1)[0] for _ in range(4)]  # runs 5, 4, 3, 2
    q = pool.free_block_queue
    q.waiting_requests = 1  # the scheduler's count (chunk_split)
    assert q.num_free_runs == 1 and q._runs_bind()
    got = pool.get_new_blocks(3)
    assert sorted(b.block_id for b in got) == [1, 2, 3] and q.num_free_runs == 1
    assert all(b.block_hash is None for b in got)  # evicted
    owners_ok(pool, held + got)


def outside_available_runs(pool):
    """Free and cached-free ids attention can take without breaking a run a slot could have."""
    q = pool.free_block_queue
    ids = set(q.runs.free_ids()) | {rep for rep, size in q.lru.items() if size == 1}
    return {i for i in ids if not q.runs.in_available_run(i)}


@pytest.mark.parametrize("seed", range(8))
def test_random_against_invariants(seed):
    """Single owners and counts after every operation; while available runs bind (``_runs_bind``),
    attention breaks none while it can take ids outside them, evicting cached attention blocks there."""
    rng = random.Random(seed)
    pool, slots = make_pool(64, 4)
    held = []
    names = bound = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.3 and pool.free_block_queue.num_free_runs and pool.get_num_free_blocks() >= 4:
            held.extend(slots.get_new_blocks(1))
        elif op < 0.6 and pool.get_num_free_blocks() >= 1:
            n, q = rng.randint(1, min(3, pool.get_num_free_blocks())), pool.free_block_queue
            q.waiting_requests = rng.choice((0, 1, 4, 20))
            runs, room, binding = q.num_free_runs, len(outside_available_runs(pool)), q._runs_bind()
            held.extend(pool.get_new_blocks(n))
            if room >= n and binding:
                assert q.num_free_runs == runs, "attention broke a run while runs bind and it could spare one"
                bound += 1
        elif op < 0.9 and held:
            b = held.pop(rng.randrange(len(held)))
            if b.block_hash is None and rng.random() < 0.6:
                names += 1
                cache(pool, b, f"h{names}")
            pool.free_blocks([b])
        else:
            lru = list(pool.free_block_queue.lru)
            if lru:
                b = pool.blocks[rng.choice(lru)]
                pool.touch([b])
                held.append(b)
        owners_ok(pool, held)
    assert bound > 100  # the rule was exercised
    pool.free_blocks(held)
    assert pool.reset_prefix_cache()
    assert not pool.free_block_queue.lru and pool.get_num_free_blocks() == 64 - 1
