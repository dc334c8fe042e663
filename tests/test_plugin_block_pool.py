"""The plugin's ordered free structure, against a reference model (no vLLM needed)."""

import random

import pytest

from hybrid_alloc.vllm_plugin.block_pool import FreeRuns, OrderedFreeBlockQueue


class Reference:
    """Obvious O(n) model: a set of free ids."""

    def __init__(self, num_blocks, k, free):
        self.n, self.k, self.free = num_blocks, k, set(free)

    def take_lowest(self, n):
        """Spare ids (above the last whole run) first, then the ids of runs not wholly free, then the rest,
        ascending within each, one at a time (taking an id from a whole run breaks it)."""
        spare = self.n // self.k * self.k
        out = []
        for _ in range(n):
            whole = set(self.runs())
            i = min(self.free, key=lambda i: (i < spare, i // self.k in whole, i))
            self.free.discard(i)
            out.append(i)
        return out

    def runs(self):
        return [s for s in range(self.n // self.k) if all(i in self.free for i in range(s * self.k, (s + 1) * self.k))]

    def take_run(self):
        s = max(self.runs())
        self.free -= set(range(s * self.k, (s + 1) * self.k))
        return s


def test_lowest_first_and_highest_run():
    f = FreeRuns(10, 3, range(1, 10))  # block 0 held (vLLM's null block); runs 0..2, run 3 incomplete
    assert f.num_free_runs == 2  # runs 1 and 2; run 0 holds block 0
    assert f.take_run() == 2
    assert f.take_lowest(2) == [9, 1]  # the tail id beyond the last whole run first (no run can use it)
    assert f.num_free_runs == 1
    assert f.take_run() == 1
    assert f.num_free_runs == 0
    with pytest.raises(ValueError):
        f.take_run()
    assert f.free_ids() == [2]
    f.release([3, 4, 5])
    assert f.take_run() == 1
    f.release([9])
    assert f.take_lowest(2) == [9, 2]


def test_attention_fills_broken_runs_before_breaking_available_ones():
    """Ids in runs a slot cannot have anyway go first, wherever they are: a run whose ids are free or
    evictable (cached-free, reported by ``evictable``) stays whole while another run has a hole."""
    f = FreeRuns(16, 4, range(1, 16))
    f.take_lowest(15)
    f.release([4, 5, 6, 7, 13])  # run 1 wholly free; run 3 has a hole
    assert f.num_avail_runs == 1
    assert f.take_lowest(1) == [13]  # not 4: that would leave no run for a slot
    f.release([8, 9])
    f.evictable([10, 11], +1)  # run 2: two free ids and two cached ones, available for a slot
    assert f.num_avail_runs == 2 and f.num_free_runs == 1
    f.release([14])
    assert f.take_lowest(2) == [14, 4]  # the hole first; then the lowest id of an available run
    assert f.num_avail_runs == 1
    f.evictable([10], -1)  # a cached id touched again: run 2 is no longer available
    assert f.num_avail_runs == 0 and f.take_lowest(1) == [5]
    f.release([10])  # the touched one freed again, the other evicted (availability unchanged): run 2 free
    f.release([11], evicted=True)
    assert f.num_avail_runs == f.num_free_runs == 1 and f.take_lowest(1) == [6]


def test_double_free_and_taking_a_taken_block_fail():
    f = FreeRuns(8, 2, range(8))
    f.take_lowest(1)
    f.release([0])
    with pytest.raises(AssertionError):
        f.release([0])
    f.take(5)
    with pytest.raises(AssertionError):
        f.take(5)


@pytest.mark.parametrize("seed", range(20))
def test_fuzz_against_reference_and_single_owner(seed):
    rng = random.Random(seed)
    n, k = rng.randint(8, 200), rng.randint(1, 9)
    f, ref = FreeRuns(n, k, range(1, n)), Reference(n, k, range(1, n))
    owner = {0: "null"}  # block id -> the one request holding it
    held = {}  # request -> list of ids
    for step in range(2000):
        op = rng.random()
        if op < 0.45:  # a request takes attention blocks
            want = rng.randint(1, 6)
            if want > f.num_free:
                with pytest.raises(ValueError):
                    f.take_lowest(want)
                continue
            got = f.take_lowest(want)
            assert got == ref.take_lowest(want)
            req = f"a{step}"
        elif op < 0.7:  # a request takes a state slot
            assert f.num_free_runs == len(ref.runs())
            if not f.num_free_runs:
                continue
            s = f.take_run()
            assert s == ref.take_run()
            got, req = list(range(s * k, (s + 1) * k)), f"s{step}"
        else:  # a request finishes
            if not held:
                continue
            req = rng.choice(sorted(held))
            ids = held.pop(req)
            for i in ids:
                assert owner.pop(i) == req
            f.release(ids)
            ref.free |= set(ids)
            continue
        for i in got:
            assert i not in owner, f"block {i} would serve {owner.get(i)} and {req}"
            owner[i] = req
        held[req] = got
        assert f.num_free == len(ref.free) == n - len(owner)
        assert f.free_ids() == sorted(ref.free)


class Block:
    def __init__(self, i):
        self.block_id = i


def test_queue_adapter_keeps_block_objects():
    blocks = [Block(i) for i in range(12)]
    q = OrderedFreeBlockQueue(blocks, 4, blocks[1:])
    assert q.num_free_blocks == 11 and q.num_free_runs == 2
    s, run = q.pop_run()
    assert s == 2 and run == blocks[8:12]
    assert q.popleft() is blocks[1]
    q.remove(blocks[5])
    assert [b.block_id for b in q.get_all_free_blocks()] == [2, 3, 4, 6, 7]
    q.prepend_n([blocks[5], blocks[1]])
    q.append_n(run)
    assert q.num_free_blocks == 11 and q.num_free_runs == 2
