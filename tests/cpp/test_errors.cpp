#include <vector>

#include "helpers.h"

TEST(errors_unknown_and_double_free) {
  auto a = fresh();
  int local = 0;
  a->free(&local, 4, 0, nullptr);  // never allocated here
  CHECK_CONTAINS(last_error(), "unknown pointer");
  CHECK_EQ(stats_of(*a).num_invalid_frees, 1u);
  void* p = a->malloc(4096, 0, nullptr);
  a->free(p, 4096, 0, nullptr);
  a->free(p, 4096, 0, nullptr);  // double free
  CHECK_EQ(stats_of(*a).num_invalid_frees, 2u);
  CHECK_EQ(stats_of(*a).total.free_count, 1u);
  a->free(nullptr, 0, 0, nullptr);  // no-op
  a->free(p, 4096, 77, nullptr);    // bad device: still an error, not a crash
  CHECK_EQ(a->slab_free(&local), -1);
  CHECK_INVARIANTS(*a);
}

TEST(errors_bad_requests) {
  auto a = fresh();
  CHECK(a->malloc(-5, 0, nullptr) == nullptr);
  CHECK_CONTAINS(last_error(), "negative size");
  clear_error();
  CHECK(a->malloc(0, 0, nullptr) == nullptr);
  CHECK(std::string(last_error()).empty());
  CHECK(a->malloc(16, 8, nullptr) == nullptr);
  CHECK_CONTAINS(last_error(), "bad device 8");
  CHECK(a->malloc(16, -1, nullptr) == nullptr);
  CHECK(a->malloc(ssize_t(1) << 50, 0, nullptr) == nullptr);
  CHECK_CONTAINS(last_error(), "largest supported");
  CHECK(a->slab_alloc(0, 16, "x", "bad tag!") == nullptr);
  CHECK_CONTAINS(last_error(), "bad tag");
  CHECK(a->set_memory_fraction(1.5, 0) < 0);
  CHECK(a->set_memory_fraction(-0.1, 0) < 0);
}

TEST(errors_configure) {
  auto a = fresh();
  CHECK(a->configure("no_such_key", "1") < 0);
  CHECK_CONTAINS(last_error(), "unknown key 'no_such_key'");
  CHECK(a->configure("device_limit_bytes", "-1") < 0);
  CHECK(a->configure("device_limit_bytes", "12abc") < 0);
  CHECK(a->configure("trace", "yes") < 0);
  CHECK(a->configure("trace_capacity", "0") < 0);
  CHECK(a->configure("arena_tags", "kv_cache,bad tag") < 0);
  CHECK(a->configure("backend", "tpu") < 0);
  CHECK_CONTAINS(last_error(), "auto, cuda, host");
  CHECK(a->configure("backend", "cuda") < 0);  // already running on host
  CHECK_EQ(a->configure("backend", "host"), 0);
  CHECK(a->configure(nullptr, "1") < 0);
  std::string err;
  CHECK(make_backend("tpu", &err) == nullptr);
  CHECK_CONTAINS(err, "auto, cuda, host");
  err.clear();
  auto auto_backend = make_backend("auto", &err);
  CHECK(auto_backend != nullptr);  // host when no GPU
}

TEST(errors_device_limit_exhaustion) {
  auto a = fresh();
  REQUIRE(a->configure("device_limit_bytes", std::to_string(4 * MiB).c_str()) == 0);
  std::vector<void*> v;
  for (int i = 0; i < 3; ++i) v.push_back(a->malloc(1 * MiB, 0, nullptr));  // 2 segments: 4 MiB
  CHECK(v[0] && v[1] && v[2]);
  void* x = a->malloc(1 * MiB, 0, nullptr);  // wait, the second segment still has 1 MiB
  CHECK(x != nullptr);
  void* y = a->malloc(1 * MiB, 0, nullptr);
  CHECK(y == nullptr);
  std::string e = last_error();
  CHECK_CONTAINS(e, "out of memory");
  CHECK_CONTAINS(e, "1048576");
  CHECK_CONTAINS(e, "tag 'other'");
  CHECK_CONTAINS(e, "caching path");
  CHECK_CONTAINS(e, "device limit");
  CHECK_CONTAINS(e, "segment");
  CHECK_EQ(stats_of(*a).num_ooms, 1u);
  CHECK_EQ(stats_of(*a).limit_bytes, 4 * MiB);
  a->free(x, 0, 0, nullptr);
  CHECK(a->malloc(1 * MiB, 0, nullptr) == x);
  for (void* p : v) a->free(p, 0, 0, nullptr);
  a->free(x, 0, 0, nullptr);
  CHECK_INVARIANTS(*a);
}

TEST(errors_oom_recovers_cached_memory) {
  auto a = fresh();
  REQUIRE(a->configure("device_limit_bytes", std::to_string(21 * MiB).c_str()) == 0);
  void* s = a->malloc(4096, 0, nullptr);
  a->free(s, 0, 0, nullptr);  // a cached 2 MiB segment
  void* big = a->malloc(3 * MiB, 0, nullptr);  // needs a 20 MiB segment: frees the cache, then fits
  CHECK(big != nullptr);
  CHECK_EQ(stats_of(*a).caching.reserved, 20 * MiB);
  a->free(big, 0, 0, nullptr);
  // Arena granules count against the same limit.
  REQUIRE(a->arena_reserve(0, 64 * MiB) == 0);
  void* slab = a->slab_alloc(0, 2 * MiB, "s", nullptr);  // 20 + 2 > 21: cached segment released first
  CHECK(slab != nullptr);
  CHECK_EQ(stats_of(*a).caching.reserved, 0u);
  void* slab2 = a->slab_alloc(0, 20 * MiB, "t", "weights");
  CHECK(slab2 == nullptr);
  CHECK_CONTAINS(last_error(), "device limit");
  CHECK_CONTAINS(last_error(), "tag 'weights'");
  a->slab_free(slab);
  CHECK_INVARIANTS(*a);
}

TEST(errors_memory_fraction) {
  auto a = fresh();
  REQUIRE(a->set_memory_fraction(1e-9, 0) == 0);  // a few bytes of host RAM: nothing fits
  CHECK(stats_of(*a).limit_bytes > 0);
  CHECK(a->malloc(4096, 0, nullptr) == nullptr);
  CHECK_CONTAINS(last_error(), "device limit");
  REQUIRE(a->set_memory_fraction(0, 0) == 0);  // 0 = no limit
  void* p = a->malloc(4096, 0, nullptr);
  CHECK(p != nullptr);
  a->free(p, 0, 0, nullptr);
}
