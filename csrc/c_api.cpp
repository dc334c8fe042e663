// The exported C ABI over one process-wide Allocator. Every entry point catches everything (nothing
// escapes into PyTorch or ctypes) and reports through the thread-local last error.
//
// The global allocator is created on first use with the backend chosen by hybrid_alloc_configure
// ("backend", ...) or HYBRID_ALLOC_BACKEND (auto|cuda|host; default auto). It is never destroyed: PyTorch
// frees tensors during interpreter shutdown, after static destructors may have run. With
// HYBRID_ALLOC_TRACE=path the trace is on from the start and dumped to path by an atexit handler.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>

#include "allocator.h"
#include "backend_host.h"
#include "common.h"
#include "hybrid_alloc.h"
#include "stats.h"

using namespace hybrid_alloc;

namespace {

std::atomic<Allocator*> g_alloc{nullptr};
std::mutex g_create_mu;
std::string* g_backend_choice = nullptr;  // set by configure("backend") before creation; leaked
char g_trace_path[4096];

void dump_at_exit() {
  Allocator* a = g_alloc.load(std::memory_order_acquire);
  if (!a || !g_trace_path[0]) return;
  try {
    a->trace_dump(g_trace_path);
  } catch (...) {
  }
}

Allocator* create() {
  std::lock_guard<std::mutex> lk(g_create_mu);
  Allocator* a = g_alloc.load(std::memory_order_relaxed);
  if (a) return a;
  std::string choice;
  if (g_backend_choice)
    choice = *g_backend_choice;
  else if (const char* env = getenv("HYBRID_ALLOC_BACKEND"))
    choice = env;
  else
    choice = "auto";
  std::string err;
  std::unique_ptr<Backend> b = make_backend(choice, &err);
  if (!b) {
    set_error("hybrid_alloc: cannot create the backend: %s", err.c_str());
    return nullptr;
  }
  a = new Allocator(std::move(b));
  const char* trace = getenv("HYBRID_ALLOC_TRACE");
  if (trace && *trace) {
    snprintf(g_trace_path, sizeof g_trace_path, "%s", trace);
    a->trace_enable(true, 0);
    atexit(dump_at_exit);
  }
  g_alloc.store(a, std::memory_order_release);
  return a;
}

inline Allocator* get() {
  Allocator* a = g_alloc.load(std::memory_order_acquire);
  return a ? a : create();
}

void internal_error(const char* fn) { set_error("%s: internal error (exception)", fn); }

}  // namespace

#define HA_GUARD(fn, fail, body) \
  try {                          \
    body                         \
  } catch (const std::bad_alloc&) { \
    set_error("%s: host out of memory for allocator metadata", fn); \
    return fail;                 \
  } catch (...) {                \
    internal_error(fn);          \
    return fail;                 \
  }

extern "C" {

void* hybrid_alloc_malloc(ssize_t size, int device, hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_malloc", nullptr, {
    Allocator* a = get();
    return a ? a->malloc(size, device, stream) : nullptr;
  })
}

void hybrid_alloc_free(void* ptr, ssize_t size, int device, hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_free", , {
    if (!ptr) return;
    Allocator* a = get();
    if (a) a->free(ptr, size, device, stream);
  })
}

void hybrid_alloc_init(int device_count) {
  (void)device_count;
  HA_GUARD("hybrid_alloc_init", , { get(); })
}

void hybrid_alloc_empty_cache(void) {
  HA_GUARD("hybrid_alloc_empty_cache", , {
    if (Allocator* a = g_alloc.load(std::memory_order_acquire)) a->empty_cache();
  })
}

void hybrid_alloc_set_memory_fraction(double fraction, int device) {
  HA_GUARD("hybrid_alloc_set_memory_fraction", , {
    if (Allocator* a = get()) a->set_memory_fraction(fraction, device);
  })
}

void hybrid_alloc_record_stream(void* ptr, hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_record_stream", , {
    if (Allocator* a = get()) a->record_stream(ptr, stream);
  })
}

void hybrid_alloc_begin_capture(int device, uint64_t pool_id, hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_begin_capture", , {
    if (Allocator* a = get()) a->begin_capture(device, pool_id, stream);
  })
}

void hybrid_alloc_end_capture(int device, uint64_t pool_id) {
  HA_GUARD("hybrid_alloc_end_capture", , {
    if (Allocator* a = get()) a->end_capture(device, pool_id);
  })
}

void hybrid_alloc_release_pool(int device, uint64_t pool_id) {
  HA_GUARD("hybrid_alloc_release_pool", , {
    if (Allocator* a = get()) a->release_pool(device, pool_id);
  })
}

int hybrid_alloc_arena_reserve(int device, size_t bytes) {
  HA_GUARD("hybrid_alloc_arena_reserve", -1, {
    Allocator* a = get();
    return a ? a->arena_reserve(device, bytes) : -1;
  })
}

void* hybrid_alloc_slab_alloc(int device, size_t size, const char* name, const char* tag) {
  HA_GUARD("hybrid_alloc_slab_alloc", nullptr, {
    Allocator* a = get();
    return a ? a->slab_alloc(device, size, name, tag) : nullptr;
  })
}

int hybrid_alloc_slab_free(void* ptr) {
  HA_GUARD("hybrid_alloc_slab_free", -1, {
    Allocator* a = get();
    return a ? a->slab_free(ptr) : -1;
  })
}

int hybrid_alloc_get_slab(int device, int index, hybrid_alloc_slab_info* out) {
  HA_GUARD("hybrid_alloc_get_slab", -1, {
    Allocator* a = get();
    return a ? a->get_slab(device, index, out) : -1;
  })
}

int hybrid_alloc_set_tag(const char* tag) { HA_GUARD("hybrid_alloc_set_tag", -1, { return tag_set(tag); }) }
int hybrid_alloc_push_tag(const char* tag) { HA_GUARD("hybrid_alloc_push_tag", -1, { return tag_push(tag); }) }
int hybrid_alloc_pop_tag(void) { HA_GUARD("hybrid_alloc_pop_tag", -1, { return tag_pop(); }) }
const char* hybrid_alloc_current_tag(void) { return tag_name(tag_current_id()); }

int hybrid_alloc_get_stats(int device, hybrid_alloc_stats* out) {
  HA_GUARD("hybrid_alloc_get_stats", -1, {
    Allocator* a = get();
    return a ? a->get_stats(device, out) : -1;
  })
}

int hybrid_alloc_get_tag_stats(int device, int index, char* tag_out, size_t tag_out_size,
                               hybrid_alloc_counter* out) {
  HA_GUARD("hybrid_alloc_get_tag_stats", -1, {
    Allocator* a = get();
    return a ? a->get_tag_stats(device, index, tag_out, tag_out_size, out) : -1;
  })
}

void hybrid_alloc_reset_peak_stats(int device) {
  HA_GUARD("hybrid_alloc_reset_peak_stats", , {
    if (Allocator* a = get()) a->reset_peak_stats(device);
  })
}

int64_t hybrid_alloc_trace_dump(const char* path) {
  HA_GUARD("hybrid_alloc_trace_dump", -1, {
    Allocator* a = get();
    return a ? a->trace_dump(path) : -1;
  })
}

void hybrid_alloc_trace_enable(int enabled, size_t capacity_events) {
  HA_GUARD("hybrid_alloc_trace_enable", , {
    if (Allocator* a = get()) a->trace_enable(enabled != 0, capacity_events);
  })
}

void hybrid_alloc_trace_clear(void) {
  HA_GUARD("hybrid_alloc_trace_clear", , {
    if (Allocator* a = get()) a->trace_clear();
  })
}

uint64_t hybrid_alloc_trace_dropped(void) {
  HA_GUARD("hybrid_alloc_trace_dropped", 0, {
    Allocator* a = get();
    return a ? a->trace_dropped() : 0;
  })
}

int hybrid_alloc_configure(const char* key, const char* value) {
  HA_GUARD("hybrid_alloc_configure", -1, {
    if (key && value && std::string(key) == "backend" && !g_alloc.load(std::memory_order_acquire)) {
      std::string v = value;
      if (v != "auto" && v != "cuda" && v != "host") {
        set_error("hybrid_alloc_configure: bad backend '%s': accepted values are auto, cuda, host", value);
        return -1;
      }
      std::lock_guard<std::mutex> lk(g_create_mu);
      if (!g_alloc.load(std::memory_order_relaxed)) {
        if (!g_backend_choice) g_backend_choice = new std::string;
        *g_backend_choice = v;
        return 0;
      }
    }
    Allocator* a = get();
    return a ? a->configure(key, value) : -1;
  })
}

const char* hybrid_alloc_last_error(void) { return last_error(); }

int hybrid_alloc_abi_version(void) { return HYBRID_ALLOC_ABI_VERSION; }

const char* hybrid_alloc_backend_name(void) {
  HA_GUARD("hybrid_alloc_backend_name", "none", {
    Allocator* a = get();
    return a ? a->backend()->name() : "none";
  })
}

int hybrid_alloc_host_stream_hold(hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_host_stream_hold", -1, {
    host_stream_hold(stream);
    return 0;
  })
}

int hybrid_alloc_host_stream_progress(hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_host_stream_progress", -1, {
    host_stream_progress(stream);
    return 0;
  })
}

int hybrid_alloc_host_stream_release(hybrid_alloc_stream_t stream) {
  HA_GUARD("hybrid_alloc_host_stream_release", -1, {
    host_stream_release(stream);
    return 0;
  })
}

}  // extern "C"
