// Caching path of one device.
//
// Size classes: every request is rounded up to 512 B. Requests <= 1 MiB ("small") are carved from 2 MiB
// segments; larger ones from 20 MiB segments when < 10 MiB, else from a segment of the request rounded up
// to 2 MiB. A block is split when the rest is >= 512 B (small) or > 1 MiB (large); freed blocks merge with
// free neighbours in their segment. Free blocks sit in segregated bins (4 per power of two) per
// (pool, stream, small|large) with a bitmap of non-empty bins: O(1) to find a fitting bin.
//
// Why our own caching and not a delegation to cudaMallocAsync (cuMemAllocAsync + a pool with a high
// release threshold): (1) every line runs and is tested on the host backend, where no stream-ordered pool
// exists; (2) graph capture: PyTorch's begin/end_allocate_to_pool + release_pool contract maps 1:1 onto our
// private pools, while cudaMallocAsync inside a capture creates graph memory nodes whose lifetime belongs
// to the graph (different reuse rules, and PyTorch's own cudaMallocAsync backend has gaps there);
// (3) one DeviceMemory (held bytes and their cap) shared with the slab arena: device_limit / memory
// fraction, OOM recovery that trims cached segments and unmapped arena granules, and OOM messages that name
// both states; a driver pool beside the arena would compete for memory blindly; (4) exact per-tag reserved
// attribution and pending bytes need the pool's internals. The cost (fragmentation is ours to handle) is
// met the way PyTorch's native allocator meets it: splitting/merging within segments, per-stream lists,
// empty_cache.
//
// INVARIANTS (check() verifies them; every test and the fuzz call it):
//  I1. A segment belongs to exactly one pool and one stream; its blocks tile [base, base + size) in
//      address order through prev/next, with no gap and no overlap.
//  I2. No two address-adjacent blocks are both Free (merged at once on free).
//  I3. A block is in a free list iff its state is Free, and in the list of its segment's
//      (pool, stream, small|large): a freed block is reused only on the stream its segment belongs to.
//  I4. The live map holds exactly the Allocated blocks; Pending/Deferred blocks are in no list and in no
//      map, so they cannot be handed out.
//  I5. Stream-ordered reuse: a block freed on its segment's stream with no recorded uses becomes Free at
//      once (reusable at once on that stream: work queued on the stream runs in order). A block used by
//      other streams (record_stream, or freed from another stream) becomes Pending with one event per
//      using stream and turns Free only when all of those events are done. While any capture is active on
//      the device such frees are Deferred (no events can be recorded on a capturing stream) and get their
//      events when the last capture ends; so are frees of general-pool blocks on a capturing stream.
//  I6. Graph pools: while a stream captures into pool P, its allocations come from P's segments only;
//      P's blocks, once freed, return to P's free lists only, so P's memory is never recycled to other
//      use. release_pool(P) marks P released; P's segments go back to the backend when P has no live
//      (allocated, pending or deferred) block.
//  I7. reserved_ == sum of segment sizes == the caching share of DeviceMemory::held and of stats.caching.reserved;
//      pending_bytes_ == sum of sizes of Pending + Deferred blocks.
//  I8. empty_cache (release_cached) returns only general-pool segments whose single block is Free.
// Not synchronised: the Allocator holds the device mutex around every call.
#include "caching.h"

#include <algorithm>
#include <cstdio>

#include "common.h"

namespace hybrid_alloc {

namespace {

inline int bin_of(size_t size) {
  uint64_t u = size >> 9;
  if (u < 4) return static_cast<int>(u);
  int msb = 63 - __builtin_clzll(u);
  int b = 4 + (msb - 2) * 4 + static_cast<int>((u >> (msb - 2)) & 3);
  return b < kBins ? b : kBins - 1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- FreeList

void FreeList::insert(Block* b) {
  int bin = bin_of(b->size);
  b->bin = static_cast<uint8_t>(bin);
  b->fprev = nullptr;
  b->fnext = heads[bin];
  if (heads[bin]) heads[bin]->fprev = b;
  heads[bin] = b;
  bits[bin >> 6] |= 1ull << (bin & 63);
  ++count;
}

void FreeList::remove(Block* b) {
  int bin = b->bin;
  if (b->fprev)
    b->fprev->fnext = b->fnext;
  else
    heads[bin] = b->fnext;
  if (b->fnext) b->fnext->fprev = b->fprev;
  if (!heads[bin]) bits[bin >> 6] &= ~(1ull << (bin & 63));
  b->fprev = b->fnext = nullptr;
  --count;
}

// O(1) in the common case (TLSF-style "good fit"): the head of the request's own bin if it fits, else
// the head of the next non-empty bin (every block there fits); only when no larger bin has a block is the
// own bin scanned (a block there may still fit).
Block* FreeList::take(size_t size) {
  int bin = bin_of(size);
  Block* h = heads[bin];
  if (h && h->size >= size) {
    remove(h);
    return h;
  }
  int from = bin + 1;
  if (from < kBins) {
    int w = from >> 6;
    uint64_t m = bits[w] & (~0ull << (from & 63));
    for (;;) {
      if (m) {
        Block* b = heads[w * 64 + __builtin_ctzll(m)];
        remove(b);
        return b;
      }
      if (++w == kBinWords) break;
      m = bits[w];
    }
  }
  for (Block* b = h; b; b = b->fnext)
    if (b->size >= size) {
      remove(b);
      return b;
    }
  return nullptr;
}

FreeList* PoolState::list(Stream s, bool small) {
  FreeList* l = last[small];
  if (l && l->stream == s) return l;
  for (auto& p : lists)
    if (p->stream == s && p->small == small) return last[small] = p.get();
  lists.emplace_back(new FreeList);
  l = lists.back().get();
  l->stream = s;
  l->small = small;
  return last[small] = l;
}

// ------------------------------------------------------------------------------------------------ PtrMap

void PtrMap::rehash(size_t cap) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_ = 0;
  for (const Slot& s : old)
    if (s.key) insert(reinterpret_cast<const void*>(s.key), s.val);
}

void PtrMap::insert(const void* key, Block* b) {
  if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
  uintptr_t k = reinterpret_cast<uintptr_t>(key);
  size_t i = index(k);
  while (slots_[i].key) i = (i + 1) & mask_;
  slots_[i].key = k;
  slots_[i].val = b;
  ++size_;
}

Block* PtrMap::find(const void* key) const {
  uintptr_t k = reinterpret_cast<uintptr_t>(key);
  if (!k) return nullptr;
  for (size_t i = index(k);; i = (i + 1) & mask_) {
    if (slots_[i].key == k) return slots_[i].val;
    if (!slots_[i].key) return nullptr;
  }
}

Block* PtrMap::erase(const void* key) {
  uintptr_t k = reinterpret_cast<uintptr_t>(key);
  if (!k) return nullptr;
  size_t i = index(k);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].key == k) break;
    if (!slots_[i].key) return nullptr;
  }
  Block* v = slots_[i].val;
  // Backward-shift deletion keeps every probe chain unbroken without tombstones.
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask_;
    if (!slots_[j].key) break;
    size_t home = index(slots_[j].key);
    bool between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
    if (between) continue;
    slots_[i] = slots_[j];
    i = j;
  }
  slots_[i] = Slot{};
  --size_;
  return v;
}

// ----------------------------------------------------------------------------------------------- Caching

Caching::Caching(DeviceMemory* mem, DeviceStats* stats) : mem_(mem), stats_(stats) {}

Caching::~Caching() {
  hook_ = nullptr;  // teardown is not traced
  for (auto& pe : pending_) mem_->backend->destroy_event(pe.ev);
  auto drop = [&](PoolState* pool) {
    while (pool->segs) free_segment(pool->segs);
  };
  drop(&general_);
  for (PoolState* p : private_) {
    drop(p);
    delete p;
  }
  for (auto& chunk : chunks_)
    for (size_t i = 0; i < 256; ++i) delete chunk[i].uses;
}

Block* Caching::get_block() {
  if (!spare_) {
    chunks_.emplace_back(new Block[256]);
    Block* c = chunks_.back().get();
    for (int i = 0; i < 256; ++i) {
      c[i].fnext = spare_;
      spare_ = &c[i];
    }
  }
  Block* b = spare_;
  spare_ = b->fnext;
  b->fnext = b->fprev = b->prev = b->next = nullptr;
  b->pending = 0;
  return b;
}

void Caching::put_block(Block* b) {
  if (b->uses) b->uses->clear();  // keep the vector for reuse
  b->state = BlockState::Spare;
  b->seg = nullptr;
  b->fnext = spare_;
  spare_ = b;
}

Block* Caching::new_segment(PoolState* pool, FreeList* fl, size_t rounded, int tag, std::string* err) {
  size_t seg_size = fl->small ? kSmallSegment
                              : (rounded < kLargeDirect ? kLargeSegment : round_up(rounded, kGranule));
  if (!mem_->fits(seg_size)) {
    *err = "a new " + fmt_bytes(seg_size) + " segment would exceed the device limit of " +
           fmt_bytes(mem_->limit) + " (held " + fmt_bytes(mem_->held) + ")";
    return nullptr;
  }
  std::string why;
  void* p = mem_->backend->alloc_segment(mem_->device, seg_size, &why);
  if (!p) {
    *err = "backend could not allocate a " + fmt_bytes(seg_size) + " segment: " + why;
    return nullptr;
  }
  Segment* sg = new Segment;
  sg->base = static_cast<char*>(p);
  sg->size = seg_size;
  sg->pool = pool;
  sg->fl = fl;
  sg->stream = fl->stream;
  sg->tag = tag;
  sg->snext = pool->segs;
  if (pool->segs) pool->segs->sprev = sg;
  pool->segs = sg;
  ++pool->nsegments;
  ++nsegments_;
  reserved_ += seg_size;
  mem_->held += seg_size;
  stats_->on_reserve(Path::Caching, static_cast<int64_t>(seg_size), tag, static_cast<int64_t>(seg_size));
  if (hook_) hook_(hook_ctx_, true, *sg);
  Block* b = get_block();
  b->ptr = sg->base;
  b->size = seg_size;
  b->seg = sg;
  sg->first = b;
  return b;
}

void Caching::free_segment(Segment* sg) {
  if (hook_) hook_(hook_ctx_, false, *sg);
  PoolState* pool = sg->pool;
  for (Block* b = sg->first; b;) {
    Block* n = b->next;
    if (b->state == BlockState::Free) sg->fl->remove(b);
    if (b->state == BlockState::Allocated) live_.erase(b->ptr);
    put_block(b);
    b = n;
  }
  if (sg->sprev)
    sg->sprev->snext = sg->snext;
  else
    pool->segs = sg->snext;
  if (sg->snext) sg->snext->sprev = sg->sprev;
  --pool->nsegments;
  --nsegments_;
  reserved_ -= sg->size;
  mem_->held -= sg->size;
  stats_->on_reserve(Path::Caching, -static_cast<int64_t>(sg->size), sg->tag, -static_cast<int64_t>(sg->size));
  mem_->backend->free_segment(mem_->device, sg->base, sg->size);
  delete sg;
}

bool Caching::capturing(Stream s) const {
  for (const Capture& c : captures_)
    if (c.stream == s) return true;
  return false;
}

Block* Caching::malloc(size_t size, Stream s, int tag, std::string* err) {
  if (!pending_.empty() || (!deferred_.empty() && captures_.empty())) process_events();
  PoolState* pool = &general_;
  if (!captures_.empty())
    for (auto it = captures_.rbegin(); it != captures_.rend(); ++it)
      if (it->stream == s) {
        pool = it->pool;
        break;
      }
  size_t rounded = round_up(size, kMinBlock);
  bool small = rounded <= kSmallSize;
  FreeList* fl = pool->list(s, small);
  Block* b = fl->take(rounded);
  if (!b) {
    b = new_segment(pool, fl, rounded, tag, err);
    if (!b) return nullptr;
  }
  size_t rest = b->size - rounded;
  if (small ? rest >= kMinBlock : rest > kSmallSize) {
    Block* r = get_block();
    r->ptr = b->ptr + rounded;
    r->size = rest;
    r->seg = b->seg;
    r->prev = b;
    r->next = b->next;
    if (b->next) b->next->prev = r;
    b->next = r;
    b->size = rounded;
    r->state = BlockState::Free;
    fl->insert(r);
  }
  b->state = BlockState::Allocated;
  b->requested = size;
  b->tag = tag;
  live_.insert(b->ptr, b);
  ++pool->live;
  return b;
}

void Caching::record_stream(Block* b, Stream s) {
  if (s == b->seg->stream) return;
  if (!b->uses) b->uses = new std::vector<Stream>();
  for (Stream u : *b->uses)
    if (u == s) return;
  b->uses->push_back(s);
}

void Caching::insert_free(Block* b) {
  FreeList* fl = b->seg->fl;
  if (b->prev && b->prev->state == BlockState::Free) {
    Block* p = b->prev;
    fl->remove(p);
    p->size += b->size;
    p->next = b->next;
    if (b->next) b->next->prev = p;
    put_block(b);
    b = p;
  }
  if (b->next && b->next->state == BlockState::Free) {
    Block* n = b->next;
    fl->remove(n);
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    put_block(n);
  }
  b->state = BlockState::Free;
  fl->insert(b);
}

void Caching::finalize(Block* b, bool was_pending) {
  if (was_pending) pending_bytes_ -= b->size;
  if (b->uses) b->uses->clear();
  PoolState* pool = b->seg->pool;
  insert_free(b);
  --pool->live;
  if (pool->released) maybe_destroy_pool(pool);
}

void Caching::try_record(Block* b) {
  std::vector<Stream>& u = *b->uses;
  size_t keep = 0;
  for (Stream st : u) {
    Event ev = mem_->backend->record_event(mem_->device, st);
    if (ev) {
      pending_.push_back({ev, b});
      ++b->pending;
    } else {
      u[keep++] = st;  // retried by process_events
    }
  }
  u.resize(keep);
  if (keep) {
    b->state = BlockState::Deferred;
    deferred_.push_back(b);
  } else {
    b->state = BlockState::Pending;
  }
}

void Caching::free(Block* b, Stream s) {
  if (s != b->seg->stream) record_stream(b, s);
  bool has_uses = b->uses && !b->uses->empty();
  if (!has_uses && !captures_.empty() && b->seg->pool == &general_ && capturing(b->seg->stream)) {
    // Freed on a stream that is capturing a graph: the graph may still read it; wait for the capture.
    if (!b->uses) b->uses = new std::vector<Stream>();
    b->uses->push_back(b->seg->stream);
    has_uses = true;
  }
  if (!has_uses) {
    finalize(b, false);
    return;
  }
  pending_bytes_ += b->size;
  if (!captures_.empty()) {
    b->state = BlockState::Deferred;
    deferred_.push_back(b);
    return;
  }
  try_record(b);
}

// Destroys every completed event and finalizes the blocks whose last pending event it was.
void Caching::reap_done_events() {
  for (size_t i = 0; i < pending_.size();) {
    PendingEvent pe = pending_[i];
    if (mem_->backend->event_done(pe.ev)) {
      mem_->backend->destroy_event(pe.ev);
      pending_[i] = pending_.back();
      pending_.pop_back();
      Block* b = pe.block;
      if (--b->pending == 0 && b->state == BlockState::Pending) finalize(b, true);
    } else {
      ++i;
    }
  }
}

void Caching::process_events() {
  reap_done_events();
  if (captures_.empty() && !deferred_.empty()) {
    std::vector<Block*> todo;
    todo.swap(deferred_);
    for (Block* b : todo) try_record(b);
    // A block whose events were all recorded earlier and are done is finalized by the next pass.
    reap_done_events();
  }
}

PoolState* Caching::find_private(uint64_t id) const {
  for (PoolState* p : private_)
    if (p->id == id) return p;
  return nullptr;
}

bool Caching::begin_capture(uint64_t pool_id, Stream s, std::string* err) {
  if (pool_id == 0) {
    *err = "pool id 0 is the general pool; graph pools need an id > 0";
    return false;
  }
  PoolState* pool = find_private(pool_id);
  if (!pool) {
    pool = new PoolState;
    pool->id = pool_id;
    private_.push_back(pool);
  }
  pool->released = false;
  captures_.push_back({s, pool});
  return true;
}

void Caching::end_capture(uint64_t pool_id) {
  captures_.erase(std::remove_if(captures_.begin(), captures_.end(),
                                 [&](const Capture& c) { return c.pool->id == pool_id; }),
                  captures_.end());
  if (captures_.empty() && !deferred_.empty()) process_events();
}

bool Caching::release_pool(uint64_t pool_id, std::string* err) {
  PoolState* pool = find_private(pool_id);
  if (!pool) return true;  // PyTorch releases pools that never allocated
  for (const Capture& c : captures_)
    if (c.pool == pool) {
      *err = "graph pool " + std::to_string(pool_id) + " is still capturing; end the capture first";
      return false;
    }
  pool->released = true;
  maybe_destroy_pool(pool);
  return true;
}

void Caching::maybe_destroy_pool(PoolState* pool) {
  if (pool->live == 0) destroy_pool(pool);
}

void Caching::destroy_pool(PoolState* pool) {
  while (pool->segs) free_segment(pool->segs);
  private_.erase(std::remove(private_.begin(), private_.end(), pool), private_.end());
  delete pool;
}

size_t Caching::release_cached() {
  process_events();
  size_t freed = 0;
  for (Segment* sg = general_.segs; sg;) {
    Segment* n = sg->snext;
    Block* b = sg->first;
    if (b->state == BlockState::Free && b->size == sg->size) {
      freed += sg->size;
      free_segment(sg);
    }
    sg = n;
  }
  return freed;
}

std::string Caching::describe() const {
  size_t allocated = 0, cached = 0;
  auto walk = [&](const PoolState* p) {
    for (Segment* sg = p->segs; sg; sg = sg->snext)
      for (Block* b = sg->first; b; b = b->next) {
        if (b->state == BlockState::Allocated) allocated += b->size;
        if (b->state == BlockState::Free) cached += b->size;
      }
  };
  walk(&general_);
  for (const PoolState* p : private_) walk(p);
  char buf[384];
  snprintf(buf, sizeof buf,
           "caching path holds %s in %zu segment(s): %s allocated, %s cached free, %s awaiting stream "
           "events, %zu graph pool(s)",
           fmt_bytes(reserved_).c_str(), nsegments_, fmt_bytes(allocated).c_str(), fmt_bytes(cached).c_str(),
           fmt_bytes(pending_bytes_).c_str(), private_.size());
  return buf;
}

std::string Caching::check_pool(const PoolState* pool, size_t* allocated) const {
  size_t nseg = 0, live = 0, free_blocks = 0, list_count = 0;
  for (const auto& l : pool->lists) list_count += l->count;
  for (Segment* sg = pool->segs; sg; sg = sg->snext) {
    ++nseg;
    if (sg->pool != pool) return "segment in the wrong pool";
    char* expect = sg->base;
    const Block* prev = nullptr;
    for (Block* b = sg->first; b; b = b->next) {
      if (b->seg != sg) return "block with the wrong segment";
      if (b->ptr != expect) return "blocks do not tile their segment (I1)";
      if (b->prev != prev) return "broken prev link";
      if (b->size == 0 || b->size % kMinBlock) return "block size not a multiple of 512";
      if (b->state == BlockState::Free) {
        ++free_blocks;
        if (prev && prev->state == BlockState::Free) return "two adjacent free blocks (I2)";
        bool found = false;
        for (Block* x = sg->fl->heads[b->bin]; x; x = x->fnext) found |= (x == b);
        if (!found) return "free block missing from its free list (I3)";
      } else if (b->state == BlockState::Allocated) {
        ++live;
        ++*allocated;
        if (live_.find(b->ptr) != b) return "allocated block missing from the live map (I4)";
      } else if (b->state == BlockState::Pending || b->state == BlockState::Deferred) {
        ++live;
        if (live_.find(b->ptr)) return "pending block in the live map (I4)";
      } else {
        return "spare block inside a segment";
      }
      expect = b->ptr + b->size;
      prev = b;
    }
    if (expect != sg->base + sg->size) return "blocks do not cover their segment (I1)";
  }
  if (nseg != pool->nsegments) return "segment count mismatch";
  if (live != pool->live) return "pool live count mismatch";
  if (free_blocks != list_count) return "free-list count differs from free blocks (I3)";
  return "";
}

std::string Caching::check() const {
  size_t allocated = 0, reserved = 0, nseg = 0;
  std::string e = check_pool(&general_, &allocated);
  if (!e.empty()) return "general pool: " + e;
  for (const PoolState* p : private_) {
    e = check_pool(p, &allocated);
    if (!e.empty()) return "graph pool " + std::to_string(p->id) + ": " + e;
  }
  auto sum = [&](const PoolState* p) {
    for (Segment* sg = p->segs; sg; sg = sg->snext) {
      reserved += sg->size;
      ++nseg;
    }
  };
  sum(&general_);
  for (const PoolState* p : private_) sum(p);
  if (allocated != live_.size()) return "live map size differs from allocated blocks (I4)";
  if (reserved != reserved_ || nseg != nsegments_) return "reserved bytes mismatch (I7)";
  size_t pend = 0;
  auto sum_pending = [&](const PoolState* p) {
    for (Segment* sg = p->segs; sg; sg = sg->snext)
      for (Block* b = sg->first; b; b = b->next)
        if (b->state == BlockState::Pending || b->state == BlockState::Deferred) pend += b->size;
  };
  sum_pending(&general_);
  for (const PoolState* p : private_) sum_pending(p);
  if (pend != pending_bytes_) return "pending bytes mismatch (I7)";
  return "";
}

}  // namespace hybrid_alloc
