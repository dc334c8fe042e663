// 8 threads hammer the C ABI (libhybrid_alloc.so) on two devices: malloc/free of a realistic size mix on
// private and shared streams, cross-stream frees and record_stream, tag push/pop, slabs, stats reads,
// trace on with a small ring, occasional empty_cache. Each thread stamps every block it owns and checks the
// stamp before freeing it: two live blocks sharing bytes would be caught. Run under TSan (label stress).
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "hybrid_alloc.h"

namespace {

std::atomic<int> g_fail{0};

void fail(const char* what) {
  fprintf(stderr, "stress: %s (last error: %s)\n", what, hybrid_alloc_last_error());
  g_fail.fetch_add(1);
}

struct Item {
  unsigned char* p;
  size_t n;
  int device;
  void* stream;
  bool slab;
  unsigned char stamp;
};

void stamp(const Item& it) {
  size_t k = it.n < 64 ? it.n : 64;
  memset(it.p, it.stamp, k);
  memset(it.p + it.n - k, it.stamp, k);
}

bool stamped(const Item& it) {
  size_t k = it.n < 64 ? it.n : 64;
  for (size_t i = 0; i < k; ++i)
    if (it.p[i] != it.stamp || it.p[it.n - 1 - i] != it.stamp) return false;
  return true;
}

void worker(int id, int ops) {
  std::mt19937_64 rng(1000 + id);
  std::vector<Item> items;
  void* own = reinterpret_cast<void*>(uintptr_t(0x1000 + id));
  void* shared = reinterpret_cast<void*>(uintptr_t(0x9999));
  const char* tags[] = {"activations", "weights", "stress", "other"};
  for (int op = 0; op < ops; ++op) {
    uint64_t r = rng() % 1000;
    if (r < 480 || items.empty()) {
      uint64_t k = rng() % 100;
      size_t n = k < 90 ? 512 + rng() % (1 << 20) : (k < 98 ? (2u << 20) + rng() % (8u << 20) : 1 + rng() % 4096);
      int device = id % 2;
      void* stream = rng() % 4 ? own : shared;
      bool slab = rng() % 50 == 0;
      hybrid_alloc_push_tag(tags[rng() % 4]);
      void* p = slab ? hybrid_alloc_slab_alloc(device, n, "stress", nullptr)
                     : hybrid_alloc_malloc(static_cast<ssize_t>(n), device, stream);
      hybrid_alloc_pop_tag();
      if (!p) {
        fail("allocation failed");
        continue;
      }
      Item it{static_cast<unsigned char*>(p), n, device, stream, slab, static_cast<unsigned char>(rng())};
      stamp(it);
      items.push_back(it);
    } else if (r < 500) {
      Item& it = items[rng() % items.size()];
      if (!it.slab) hybrid_alloc_record_stream(it.p, reinterpret_cast<void*>(uintptr_t(0x1000 + rng() % 8)));
    } else if (r < 503) {
      hybrid_alloc_empty_cache();
    } else if (r < 510) {
      hybrid_alloc_stats s{};
      s.version = HYBRID_ALLOC_STATS_VERSION;
      s.struct_size = sizeof s;
      if (hybrid_alloc_get_stats(static_cast<int>(rng() % 2), &s) != 0) fail("get_stats");
    } else {
      size_t i = rng() % items.size();
      Item it = items[i];
      items[i] = items.back();
      items.pop_back();
      if (!stamped(it)) fail("a live block was overwritten: overlapping allocations");
      if (it.slab) {
        if (hybrid_alloc_slab_free(it.p) != 0) fail("slab_free");
      } else {
        hybrid_alloc_free(it.p, static_cast<ssize_t>(it.n), it.device, rng() % 8 ? it.stream : shared);
      }
    }
  }
  for (const Item& it : items) {
    if (!stamped(it)) fail("a live block was overwritten: overlapping allocations");
    if (it.slab)
      hybrid_alloc_slab_free(it.p);
    else
      hybrid_alloc_free(it.p, static_cast<ssize_t>(it.n), it.device, it.stream);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int ops = argc > 1 ? atoi(argv[1]) : 12000;
  if (hybrid_alloc_configure("backend", "host") != 0) return 2;
  hybrid_alloc_trace_enable(1, 4096);
  for (int d = 0; d < 2; ++d)
    if (hybrid_alloc_arena_reserve(d, 256u << 20) != 0) return 2;
  // A second thread toggles a hold on one stream now and then: frees that use it wait for "the GPU".
  std::atomic<bool> done{false};
  std::thread toggler([&] {
    int i = 0;
    while (!done.load()) {
      void* s = reinterpret_cast<void*>(uintptr_t(0x1000 + (i++ % 8)));
      hybrid_alloc_host_stream_hold(s);
      std::this_thread::yield();
      hybrid_alloc_host_stream_release(s);
    }
  });
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; ++i) ts.emplace_back(worker, i, ops);
  for (auto& t : ts) t.join();
  done.store(true);
  toggler.join();
  for (int i = 0; i < 8; ++i) hybrid_alloc_host_stream_release(reinterpret_cast<void*>(uintptr_t(0x1000 + i)));
  hybrid_alloc_empty_cache();
  for (int d = 0; d < 2; ++d) {
    hybrid_alloc_stats s{};
    s.version = HYBRID_ALLOC_STATS_VERSION;
    s.struct_size = sizeof s;
    hybrid_alloc_get_stats(d, &s);
    printf("device %d: %llu allocs, %llu frees, current %llu, reserved %llu, invalid frees %llu\n", d,
           (unsigned long long)s.total.alloc_count, (unsigned long long)s.total.free_count,
           (unsigned long long)s.total.current, (unsigned long long)s.total.reserved,
           (unsigned long long)s.num_invalid_frees);
    if (s.total.current != 0 || s.total.alloc_count != s.total.free_count || s.num_invalid_frees != 0)
      fail("final statistics do not balance");
    if (s.pending_free_bytes != 0) fail("blocks still pending after every stream completed");
  }
  std::string path = "/tmp/ha_stress_trace_" + std::to_string(::getpid()) + ".jsonl";
  if (hybrid_alloc_trace_dump(path.c_str()) <= 0) fail("trace dump");
  std::remove(path.c_str());
  printf("stress: %s\n", g_fail.load() ? "FAILED" : "ok");
  return g_fail.load() ? 1 : 0;
}
