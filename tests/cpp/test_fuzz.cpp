// Seeded random alloc/free/record_stream/slab traffic checked against a reference model: a std::map of
// live ranges (no overlap, correct alignment, stats equal to the model's sums), plus the allocator's own
// invariant checks.
#include <map>
#include <random>
#include <vector>

#include "helpers.h"

namespace {

struct Live {
  size_t size;
  bool slab;
  int tag;
  Stream stream;
  int device;
};

void fuzz_run(uint32_t seed, int ops) {
  auto a = fresh();
  REQUIRE(a->configure("device_limit_bytes", std::to_string(256 * MiB).c_str()) == 0);
  REQUIRE(a->arena_reserve(0, 64 * MiB) == 0);
  std::mt19937_64 rng(seed);
  std::map<uintptr_t, Live> live;
  std::vector<uintptr_t> keys;
  const char* tags[] = {"other", "weights", "activations", "fuzz_tag"};
  Stream streams[] = {S(0), S(1), S(2)};
  std::map<int, uint64_t> expect_tag;
  auto overlaps = [&](uintptr_t p, size_t n) {
    auto it = live.upper_bound(p);
    if (it != live.end() && it->first < p + n) return true;
    if (it != live.begin()) {
      --it;
      if (it->first + it->second.size > p) return true;
    }
    return false;
  };
  auto pick_size = [&]() -> size_t {
    uint64_t r = rng() % 100;
    if (r < 80) return 1 + rng() % (1 << 16);
    if (r < 95) return 1 + rng() % (2 * MiB);
    return 1 + rng() % (24 * MiB);
  };
  for (int op = 0; op < ops; ++op) {
    uint64_t r = rng() % 100;
    if (r < 3) {
      Stream s = streams[rng() % 3];
      if (rng() % 2)
        host_stream_hold(s);
      else
        host_stream_release(s);
    } else if (r < 5) {
      a->empty_cache();
    } else if (r < 50 || live.empty()) {
      size_t n = pick_size();
      int t = static_cast<int>(rng() % 4);
      std::string err;
      int tag_id = tag_intern(tags[t], &err);
      bool slab = rng() % 10 == 0;
      int dev = slab ? 0 : static_cast<int>(rng() % 2);
      Stream s = streams[rng() % 3];
      void* p;
      if (slab) {
        p = a->slab_alloc(0, n, "fuzz", tags[t]);
      } else {
        REQUIRE(tag_push(tags[t]) == 0);
        p = a->malloc(static_cast<ssize_t>(n), dev, s);
        REQUIRE(tag_pop() == 0);
      }
      if (!p) continue;  // exhaustion is allowed (limit / fragmentation), never a crash
      uintptr_t u = reinterpret_cast<uintptr_t>(p);
      CHECK(u % (slab ? 256 : 512) == 0);
      CHECK(!overlaps(u, n));
      live[u] = Live{n, slab, tag_id, s, dev};
      keys.push_back(u);
      expect_tag[tag_id] += n;
    } else if (r < 55) {
      uintptr_t u = keys[rng() % keys.size()];
      auto it = live.find(u);
      if (it != live.end() && !it->second.slab) a->record_stream(reinterpret_cast<void*>(u), streams[rng() % 3]);
    } else {
      size_t i = rng() % keys.size();
      uintptr_t u = keys[i];
      keys[i] = keys.back();
      keys.pop_back();
      Live l = live[u];
      live.erase(u);
      expect_tag[l.tag] -= l.size;
      if (l.slab)
        CHECK_EQ(a->slab_free(reinterpret_cast<void*>(u)), 0);
      else
        a->free(reinterpret_cast<void*>(u), static_cast<ssize_t>(l.size), l.device,
                rng() % 4 ? l.stream : streams[rng() % 3]);
    }
    if (op % 500 == 0 || op == ops - 1) {
      CHECK_INVARIANTS(*a);
      uint64_t sum = 0;
      for (auto& kv : live) sum += kv.second.size;
      uint64_t got = stats_of(*a, 0).total.current + stats_of(*a, 1).total.current;
      CHECK_EQ(got, sum);
      for (auto& kv : expect_tag) {
        uint64_t t = tag_stats(*a, tag_name(kv.first), 0).current + tag_stats(*a, tag_name(kv.first), 1).current;
        CHECK_EQ(t, kv.second);
      }
      CHECK_EQ(stats_of(*a, 0).num_invalid_frees, 0u);
    }
  }
  for (Stream s : streams) host_stream_release(s);
  for (auto& kv : live) {
    if (kv.second.slab)
      a->slab_free(reinterpret_cast<void*>(kv.first));
    else
      a->free(reinterpret_cast<void*>(kv.first), 0, kv.second.device, kv.second.stream);
  }
  a->empty_cache();
  CHECK_INVARIANTS(*a);
  for (int d = 0; d < 2; ++d) {
    hybrid_alloc_stats st = stats_of(*a, d);
    CHECK_EQ(st.total.current, 0u);
    CHECK_EQ(st.total.reserved, 0u);
    CHECK_EQ(st.pending_free_bytes, 0u);
    CHECK_EQ(st.total.alloc_count, st.total.free_count);
  }
}

}  // namespace

TEST(fuzz_seed_1) { fuzz_run(1, 12000); }
TEST(fuzz_seed_2) { fuzz_run(0xC0FFEE, 12000); }
TEST(fuzz_seed_3) { fuzz_run(424242, 12000); }
