#include "allocator.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace hybrid_alloc {

namespace {

bool parse_u64(const char* v, uint64_t* out) {
  if (!v || !*v) return false;
  for (const char* c = v; *c; ++c)
    if (*c < '0' || *c > '9') return false;
  errno = 0;
  unsigned long long x = strtoull(v, nullptr, 10);
  if (errno) return false;
  *out = x;
  return true;
}

const char* stream_str(Stream s, char* buf, size_t n) {
  snprintf(buf, n, "0x%llx", (unsigned long long)(uintptr_t)s);
  return buf;
}

}  // namespace

Allocator::Allocator(std::unique_ptr<Backend> backend) : backend_(std::move(backend)) {
  ndev_ = backend_->device_count();
  if (ndev_ < 0) ndev_ = 0;
  devs_.reset(new std::atomic<DeviceState*>[ndev_ > 0 ? ndev_ : 1]);
  for (int i = 0; i < (ndev_ > 0 ? ndev_ : 1); ++i) devs_[i].store(nullptr);
  arena_tags_[kTagKvCache >> 6].store(1ull << (kTagKvCache & 63));
}

Allocator::~Allocator() {
  for (int i = 0; i < ndev_; ++i) delete devs_[i].load();
}

DeviceState* Allocator::dev(int device, const char* what) {
  if (device < 0 || device >= ndev_) {
    set_error("%s: bad device %d (the %s backend has %d device(s))", what, device, backend_->name(), ndev_);
    return nullptr;
  }
  DeviceState* d = devs_[device].load(std::memory_order_acquire);
  if (d) return d;
  std::lock_guard<std::mutex> lk(create_mu_);
  d = devs_[device].load(std::memory_order_relaxed);
  if (!d) {
    d = new DeviceState(backend_.get(), device);
    d->owner = this;
    d->caching.set_segment_hook(&Allocator::segment_event, d);
    update_limit(d);  // not yet shared: no lock needed
    devs_[device].store(d, std::memory_order_release);
  }
  return d;
}

void Allocator::update_limit(DeviceState* d) {
  uint64_t lim = device_limit_.load();
  if (d->fraction > 0) {
    size_t free_b = 0, total_b = 0;
    if (backend_->mem_info(d->memory.device, &free_b, &total_b)) {
      uint64_t f = static_cast<uint64_t>(d->fraction * static_cast<double>(total_b));
      if (lim == 0 || f < lim) lim = f;
    }
  }
  d->memory.limit = lim;
}

std::string Allocator::state(DeviceState* d) {
  std::string s = d->caching.describe() + "; " + d->arena.describe();
  if (d->memory.limit)
    s += "; device limit " + fmt_bytes(d->memory.limit) + ", held " + fmt_bytes(d->memory.held);
  return s;
}

void Allocator::oom(DeviceState* d, const char* path, size_t size, int tag, Stream s, const std::string& why) {
  ++d->stats.num_ooms;
  record(d, TraceOp::Oom, nullptr, size, s, tag, 0);
  char sb[32];
  set_error("hybrid_alloc: out of memory on %s device %d: request of %s (tag '%s', stream %s, %s) failed: %s. "
            "State: %s",
            backend_->name(), d->memory.device, fmt_bytes(size).c_str(), tag_name(tag),
            stream_str(s, sb, sizeof sb), path, why.c_str(), state(d).c_str());
}

// ------------------------------------------------------------------------------------- PyTorch calls

void* Allocator::malloc(ssize_t size, int device, Stream s) {
  if (size <= 0) {
    if (size < 0) set_error("hybrid_alloc_malloc: negative size %zd", size);
    return nullptr;
  }
  DeviceState* d = dev(device, "hybrid_alloc_malloc");
  if (!d) return nullptr;
  int tag = tag_current_id();
  if (is_arena_tag(tag)) return arena_malloc(d, static_cast<size_t>(size), tag, s);
  std::lock_guard<DeviceLock> lk(d->mu);
  if (d->caching.any_capture() && tag == kTagOther && d->caching.capturing(s)) tag = kTagCudagraph;
  std::string err;
  Block* b = nullptr;
  if (static_cast<size_t>(size) > kMaxRequest) {
    err = "larger than the largest supported request (" + fmt_bytes(kMaxRequest) + ")";
  } else {
    b = d->caching.malloc(static_cast<size_t>(size), s, tag, &err);
    if (!b) {  // free what is cached (segments, unused arena granules) and try once more
      d->caching.release_cached();
      d->arena.trim();
      err.clear();
      b = d->caching.malloc(static_cast<size_t>(size), s, tag, &err);
    }
  }
  if (!b) {
    oom(d, "caching path", static_cast<size_t>(size), tag, s, err);
    return nullptr;
  }
  d->stats.on_alloc(Path::Caching, tag, static_cast<uint64_t>(size));
  record(d, TraceOp::Alloc, b->ptr, static_cast<uint64_t>(size), s, tag, b->seg->pool->id);
  return b->ptr;
}

void* Allocator::arena_malloc(DeviceState* d, size_t size, int tag, Stream s) {
  std::lock_guard<DeviceLock> lk(d->mu);
  std::string err;
  size_t align = alignment_.load(std::memory_order_relaxed);
  bool best = best_fit_.load(std::memory_order_relaxed);
  void* p = d->arena.alloc(size, align, best, tag, tag_name(tag), &err);
  if (!p) {
    d->caching.release_cached();
    err.clear();
    p = d->arena.alloc(size, align, best, tag, tag_name(tag), &err);
  }
  if (!p) {
    oom(d, "slab arena (arena tag)", size, tag, s, err);
    return nullptr;
  }
  d->stats.on_alloc(Path::Arena, tag, size);
  record(d, TraceOp::SlabAlloc, p, size, s, tag, 0);
  return p;
}

bool Allocator::free_on(DeviceState* d, void* p, Stream s) {
  std::lock_guard<DeviceLock> lk(d->mu);
  if (Block* b = d->caching.take_live(p)) {
    size_t req = b->requested;
    int tag = b->tag;
    uint64_t pool = b->seg->pool->id;
    record(d, TraceOp::Free, p, req, s, tag, pool);  // before a segment_unmap the free may cause
    d->caching.free(b, s);
    d->stats.on_free(Path::Caching, tag, req);
    return true;
  }
  if (d->arena.contains(p) && d->arena.find(p)) {
    // A slab freed through the pluggable path: stream ordered (the range returns once the stream's work
    // up to now is done). Without an event (record failure) the free is immediate.
    Event ev = backend_->record_event(d->memory.device, s);
    Slab out;
    d->arena.free_after(p, ev, &out);
    d->stats.on_free(Path::Arena, out.tag, out.size);
    record(d, TraceOp::SlabFree, p, out.size, s, out.tag, 0);
    return true;
  }
  return false;
}

void Allocator::free(void* p, ssize_t size, int device, Stream s) {
  if (!p) return;
  DeviceState* d = existing(device);
  if (d && free_on(d, p, s)) return;
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* o = existing(i);
    if (o && o != d && free_on(o, p, s)) return;
  }
  if (device >= 0 && device < ndev_) {
    DeviceState* c = dev(device, "hybrid_alloc_free");
    std::lock_guard<DeviceLock> lk(c->mu);
    ++c->stats.num_invalid_frees;
  }
  char sb[32];
  set_error("hybrid_alloc_free: unknown pointer %p (size %zd, device %d, stream %s): not allocated by "
            "hybrid_alloc_malloc or already freed; ignored",
            p, size, device, stream_str(s, sb, sizeof sb));
}

void Allocator::record_stream(void* p, Stream s) {
  if (!p) return;
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    if (Block* b = d->caching.lookup(p)) {
      d->caching.record_stream(b, s);
      return;
    }
    if (d->arena.find(p)) return;  // slabs: freed explicitly, ordered by the caller
  }
  set_error("hybrid_alloc_record_stream: unknown pointer %p", p);
}

void Allocator::empty_cache() {
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    d->caching.release_cached();
    d->arena.trim();
  }
}

int Allocator::set_memory_fraction(double fraction, int device) {
  if (!(fraction >= 0.0 && fraction <= 1.0)) {
    set_error("hybrid_alloc_set_memory_fraction: fraction %g is outside [0, 1]", fraction);
    return -1;
  }
  DeviceState* d = dev(device, "hybrid_alloc_set_memory_fraction");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  d->fraction = fraction;
  update_limit(d);
  return 0;
}

int Allocator::begin_capture(int device, uint64_t pool_id, Stream s) {
  DeviceState* d = dev(device, "hybrid_alloc_begin_capture");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  std::string err;
  if (!d->caching.begin_capture(pool_id, s, &err)) {
    set_error("hybrid_alloc_begin_capture: %s", err.c_str());
    return -1;
  }
  return 0;
}

int Allocator::end_capture(int device, uint64_t pool_id) {
  DeviceState* d = dev(device, "hybrid_alloc_end_capture");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  d->caching.end_capture(pool_id);
  return 0;
}

int Allocator::release_pool(int device, uint64_t pool_id) {
  DeviceState* d = dev(device, "hybrid_alloc_release_pool");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  std::string err;
  if (!d->caching.release_pool(pool_id, &err)) {
    set_error("hybrid_alloc_release_pool: %s", err.c_str());
    return -1;
  }
  return 0;
}

// ------------------------------------------------------------------------------------------- Arena

int Allocator::arena_reserve(int device, size_t bytes) {
  DeviceState* d = dev(device, "hybrid_alloc_arena_reserve");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  std::string err;
  if (!d->arena.reserve(bytes, &err)) {
    set_error("hybrid_alloc_arena_reserve(device %d, %s): %s", device, fmt_bytes(bytes).c_str(), err.c_str());
    return -1;
  }
  return 0;
}

void* Allocator::slab_alloc(int device, size_t size, const char* name, const char* tag) {
  DeviceState* d = dev(device, "hybrid_alloc_slab_alloc");
  if (!d) return nullptr;
  int tag_id = tag_current_id();
  if (tag) {
    std::string err;
    tag_id = tag_intern(tag, &err);
    if (tag_id < 0) {
      set_error("hybrid_alloc_slab_alloc: %s", err.c_str());
      return nullptr;
    }
  }
  std::lock_guard<DeviceLock> lk(d->mu);
  std::string err;
  size_t align = alignment_.load(std::memory_order_relaxed);
  bool best = best_fit_.load(std::memory_order_relaxed);
  void* p = d->arena.alloc(size, align, best, tag_id, name, &err);
  if (!p && size > 0) {
    d->caching.release_cached();
    err.clear();
    p = d->arena.alloc(size, align, best, tag_id, name, &err);
  }
  if (!p) {
    if (size == 0) {
      set_error("hybrid_alloc_slab_alloc('%s'): %s", name ? name : "", err.c_str());
      return nullptr;
    }
    std::string path = std::string("slab arena, slab '") + (name ? name : "") + "'";
    oom(d, path.c_str(), size, tag_id, nullptr, err);
    return nullptr;
  }
  d->stats.on_alloc(Path::Arena, tag_id, size);
  record(d, TraceOp::SlabAlloc, p, size, nullptr, tag_id, 0);
  return p;
}

int Allocator::slab_free(void* p) {
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    Slab out;
    if (d->arena.free(p, &out)) {
      d->stats.on_free(Path::Arena, out.tag, out.size);
      record(d, TraceOp::SlabFree, p, out.size, nullptr, out.tag, 0);
      return 0;
    }
    if (d->arena.contains(p)) break;
  }
  set_error("hybrid_alloc_slab_free: %p is not a live slab", p);
  return -1;
}

int Allocator::get_slab(int device, int index, hybrid_alloc_slab_info* out) {
  DeviceState* d = dev(device, "hybrid_alloc_get_slab");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  int n = 0, count = 0;
  for (auto& kv : d->arena.live())
    if (!kv.second.pending) ++count;
  if (index < 0 || index >= count || !out) return count;
  for (auto& kv : d->arena.live()) {
    if (kv.second.pending) continue;
    if (n++ != index) continue;
    const Slab& s = kv.second;
    out->ptr = d->arena.base() + kv.first;
    out->size = s.size;
    out->carved = s.carved;
    out->offset = kv.first;
    snprintf(out->name, sizeof out->name, "%s", s.name.c_str());
    snprintf(out->tag, sizeof out->tag, "%s", tag_name(s.tag));
    break;
  }
  return count;
}

// -------------------------------------------------------------------------------------------- Stats

int Allocator::get_stats(int device, hybrid_alloc_stats* out) {
  if (!out) {
    set_error("hybrid_alloc_get_stats: out is NULL");
    return -1;
  }
  if (out->version != HYBRID_ALLOC_STATS_VERSION || out->struct_size < sizeof(hybrid_alloc_stats)) {
    set_error("hybrid_alloc_get_stats: caller's struct has version %u / size %u; this library fills version "
              "%d / size %zu",
              out->version, out->struct_size, HYBRID_ALLOC_STATS_VERSION, sizeof(hybrid_alloc_stats));
    return -1;
  }
  DeviceState* d = dev(device, "hybrid_alloc_get_stats");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  out->struct_size = sizeof(hybrid_alloc_stats);
  out->total = d->stats.total.to_c();
  out->arena = d->stats.arena.to_c();
  out->caching = d->stats.caching.to_c();
  out->arena_reserved_bytes = d->arena.capacity();
  out->num_ooms = d->stats.num_ooms;
  out->num_invalid_frees = d->stats.num_invalid_frees;
  out->num_segments = d->caching.segments();
  out->pending_free_bytes = d->caching.pending_bytes();
  out->limit_bytes = d->memory.limit;
  return 0;
}

int Allocator::get_tag_stats(int device, int index, char* tag_out, size_t tag_out_size, hybrid_alloc_counter* out) {
  DeviceState* d = dev(device, "hybrid_alloc_get_tag_stats");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  int n = static_cast<int>(d->stats.seen.size());
  if (index < 0 || index >= n) return n;
  int id = d->stats.seen[index];
  if (tag_out && tag_out_size) snprintf(tag_out, tag_out_size, "%s", tag_name(id));
  if (out) *out = d->stats.tags[id].to_c();
  return n;
}

int Allocator::reset_peak_stats(int device) {
  DeviceState* d = dev(device, "hybrid_alloc_reset_peak_stats");
  if (!d) return -1;
  std::lock_guard<DeviceLock> lk(d->mu);
  d->stats.reset_peaks();
  return 0;
}

// -------------------------------------------------------------------------------------------- Trace

int64_t Allocator::trace_dump(const char* path) {
  if (!path || !*path) {
    set_error("hybrid_alloc_trace_dump: empty path");
    return -1;
  }
  std::vector<TraceEvent> events;
  uint64_t dropped = 0;
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    d->trace.snapshot(&events);
    dropped += d->trace.dropped();
  }
  std::string err;
  int64_t n = write_trace_jsonl(path, events, dropped, trace_capacity_.load(), backend_->name(), &err);
  if (n < 0) set_error("hybrid_alloc_trace_dump: %s", err.c_str());
  return n;
}

void Allocator::trace_enable(bool enabled, size_t capacity) {
  if (capacity) trace_capacity_.store(capacity);  // rings resize (and clear) at their next event
  trace_on_.store(enabled);
}

void Allocator::trace_clear() {
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    d->trace.clear();
  }
}

uint64_t Allocator::trace_dropped() {
  uint64_t n = 0;
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    n += d->trace.dropped();
  }
  return n;
}

// ------------------------------------------------------------------------------------ Configuration

// One handler per key: it parses the value and applies it, or returns why the value is bad ("" = applied).
const Allocator::ConfigKey Allocator::kConfigKeys[] = {
    {"alignment", &Allocator::config_alignment},
    {"arena_fit", &Allocator::config_arena_fit},
    {"arena_tags", &Allocator::config_arena_tags},
    {"backend", &Allocator::config_backend},
    {"device_limit_bytes", &Allocator::config_device_limit},
    {"trace", &Allocator::config_trace},
    {"trace_capacity", &Allocator::config_trace_capacity},
};

int Allocator::configure(const char* key, const char* value) {
  if (!key || !value) {
    set_error("hybrid_alloc_configure: key and value must not be NULL");
    return -1;
  }
  for (const ConfigKey& c : kConfigKeys) {
    if (std::strcmp(c.key, key) != 0) continue;
    std::string why = (this->*c.apply)(value);
    if (why.empty()) return 0;
    set_error_str("hybrid_alloc_configure: " + why);
    return -1;
  }
  std::string keys;
  for (const ConfigKey& c : kConfigKeys) keys += (keys.empty() ? "" : ", ") + std::string(c.key);
  set_error("hybrid_alloc_configure: unknown key '%s'; keys: %s", key, keys.c_str());
  return -1;
}

namespace {
std::string bad(const char* key, const std::string& value, const std::string& why) {
  return std::string("bad ") + key + " '" + value + "': " + why;
}

// A key that takes one of two values: stores whether it is `on`.
std::string choose(const char* key, const std::string& v, const char* off, const char* on, std::atomic<bool>* out) {
  if (v != off && v != on) return bad(key, v, std::string("accepted values are ") + off + ", " + on);
  out->store(v == on);
  return "";
}
}  // namespace

std::string Allocator::config_alignment(const std::string& v) {
  uint64_t n = 0;
  if (!parse_u64(v.c_str(), &n) || !is_pow2(n) || n < 16 || n > kGranule)
    return bad("alignment", v, "need a power of two in [16, " + std::to_string(kGranule) + "]");
  alignment_.store(n);
  return "";
}

std::string Allocator::config_arena_fit(const std::string& v) {
  return choose("arena_fit", v, "first", "best", &best_fit_);
}

std::string Allocator::config_arena_tags(const std::string& v) {
  uint64_t bits[kMaxTags / 64] = {};
  size_t start = 0;
  while (start <= v.size() && !v.empty()) {
    size_t comma = v.find(',', start);
    std::string t = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::string err;
    int id = tag_intern(t.c_str(), &err);
    if (id < 0) return bad("arena_tags", v, err);
    bits[id >> 6] |= 1ull << (id & 63);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  for (int i = 0; i < kMaxTags / 64; ++i) arena_tags_[i].store(bits[i]);
  return "";
}

std::string Allocator::config_backend(const std::string& v) {
  if (v != "auto" && v != "cuda" && v != "host") return bad("backend", v, "accepted values are auto, cuda, host");
  if (v == "auto" || v == backend_->name()) return "";
  return "backend '" + v + "' requested but the allocator already runs on the " + backend_->name() +
         " backend (set it before the first allocation, or HYBRID_ALLOC_BACKEND)";
}

std::string Allocator::config_device_limit(const std::string& v) {
  uint64_t n = 0;
  if (!parse_u64(v.c_str(), &n)) return bad("device_limit_bytes", v, "need an integer >= 0 (0 = no limit)");
  device_limit_.store(n);
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    update_limit(d);
  }
  return "";
}

std::string Allocator::config_trace(const std::string& v) {
  return choose("trace", v, "0", "1", &trace_on_);
}

std::string Allocator::config_trace_capacity(const std::string& v) {
  uint64_t n = 0;
  if (!parse_u64(v.c_str(), &n) || n == 0 || n > (uint64_t(1) << 28))
    return bad("trace_capacity", v, "need an integer in [1, 268435456]");
  trace_capacity_.store(n);
  return "";
}

std::string Allocator::check() {
  for (int i = 0; i < ndev_; ++i) {
    DeviceState* d = existing(i);
    if (!d) continue;
    std::lock_guard<DeviceLock> lk(d->mu);
    std::string e = d->caching.check();
    if (!e.empty()) return "device " + std::to_string(i) + ": " + e;
    if (d->stats.caching.reserved != d->caching.reserved()) return "caching reserved stat mismatch";
    if (d->stats.arena.reserved != d->arena.mapped_bytes()) return "arena reserved stat mismatch";
    if (d->memory.held != d->caching.reserved() + d->arena.mapped_bytes()) return "held bytes mismatch";
    // arena tiling
    size_t pos = 0;
    auto li = d->arena.live().begin();
    auto fi = d->arena.free_extents().begin();
    bool prev_free = false;
    while (li != d->arena.live().end() || fi != d->arena.free_extents().end()) {
      if (li != d->arena.live().end() && li->first == pos) {
        pos += li->second.carved;
        ++li;
        prev_free = false;
      } else if (fi != d->arena.free_extents().end() && fi->first == pos) {
        if (prev_free) return "arena: adjacent free extents not coalesced";
        pos += fi->second;
        ++fi;
        prev_free = true;
      } else {
        return "arena: slabs and free extents do not tile the reservation";
      }
    }
    if (pos != d->arena.capacity()) return "arena: tiling does not reach the capacity";
  }
  return "";
}

}  // namespace hybrid_alloc
