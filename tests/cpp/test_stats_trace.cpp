#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "helpers.h"

TEST(stats_exact_to_the_byte) {
  auto a = fresh();
  REQUIRE(a->arena_reserve(0, 16 * MiB) == 0);
  REQUIRE(tag_push("weights") == 0);
  void* w1 = a->malloc(1000001, 0, nullptr);
  void* w2 = a->malloc(3, 0, nullptr);
  REQUIRE(tag_pop() == 0);
  void* o1 = a->malloc(777, 0, nullptr);
  void* s1 = a->slab_alloc(0, 123457, "layer0", "kv_cache");
  REQUIRE(w1 && w2 && o1 && s1);
  hybrid_alloc_stats st = stats_of(*a);
  CHECK_EQ(st.total.current, 1000001u + 3 + 777 + 123457);
  CHECK_EQ(st.caching.current, 1000001u + 3 + 777);
  CHECK_EQ(st.arena.current, 123457u);
  CHECK_EQ(st.total.alloc_count, 4u);
  CHECK_EQ(st.caching.reserved, 2 * MiB);   // one small segment
  CHECK_EQ(st.arena.reserved, 2 * MiB);     // one mapped granule
  CHECK_EQ(st.total.reserved, 4 * MiB);
  CHECK_EQ(st.arena_reserved_bytes, 16 * MiB);
  hybrid_alloc_counter w = tag_stats(*a, "weights");
  CHECK_EQ(w.current, 1000004u);
  CHECK_EQ(w.alloc_count, 2u);
  CHECK_EQ(w.reserved, 2 * MiB);  // the segment was created for a weights allocation
  hybrid_alloc_counter kv = tag_stats(*a, "kv_cache");
  CHECK_EQ(kv.current, 123457u);
  CHECK_EQ(kv.reserved, 123648u);  // carved: rounded up to 256
  CHECK_EQ(tag_stats(*a, "other").current, 777u);
  a->free(w1, 1000001, 0, nullptr);
  st = stats_of(*a);
  CHECK_EQ(st.total.current, 3u + 777 + 123457);
  CHECK_EQ(st.total.peak, 1000001u + 3 + 777 + 123457);
  CHECK_EQ(st.total.free_count, 1u);
  CHECK_EQ(tag_stats(*a, "weights").peak, 1000004u);
  a->reset_peak_stats(0);
  st = stats_of(*a);
  CHECK_EQ(st.total.peak, st.total.current);
  CHECK_EQ(tag_stats(*a, "weights").peak, 3u);
  // Tag order is first use on this device.
  char name[HYBRID_ALLOC_TAG_MAX];
  CHECK_EQ(a->get_tag_stats(0, 0, name, sizeof name, nullptr), 3);
  CHECK(std::string(name) == "weights");
  a->free(w2, 3, 0, nullptr);
  a->free(o1, 777, 0, nullptr);
  a->slab_free(s1);
  st = stats_of(*a);
  CHECK_EQ(st.total.current, 0u);
  CHECK_EQ(st.total.free_count, 4u);
  CHECK_EQ(tag_stats(*a, "kv_cache").reserved, 0u);
  a->empty_cache();
  CHECK_EQ(stats_of(*a).total.reserved, 0u);
  CHECK_EQ(tag_stats(*a, "weights").reserved, 0u);
}

TEST(stats_versioned_struct) {
  auto a = fresh();
  hybrid_alloc_stats s{};
  s.version = 99;
  s.struct_size = sizeof s;
  CHECK(a->get_stats(0, &s) < 0);
  CHECK_CONTAINS(last_error(), "version");
  s.version = HYBRID_ALLOC_STATS_VERSION;
  s.struct_size = 8;
  CHECK(a->get_stats(0, &s) < 0);
  s.struct_size = sizeof s;
  CHECK_EQ(a->get_stats(0, &s), 0);
  CHECK(a->get_stats(0, nullptr) < 0);
  CHECK(a->get_stats(-1, &s) < 0);
}

TEST(tags_stack) {
  CHECK(std::string(tag_name(tag_current_id())) == "other");
  CHECK_EQ(tag_pop(), -1);  // bottom
  CHECK_CONTAINS(last_error(), "bottom");
  CHECK_EQ(tag_push("weights"), 0);
  CHECK_EQ(tag_push("my.custom-tag:1"), 0);
  CHECK(std::string(tag_name(tag_current_id())) == "my.custom-tag:1");
  CHECK_EQ(tag_set("activations"), 0);
  CHECK(std::string(tag_name(tag_current_id())) == "activations");
  CHECK_EQ(tag_pop(), 0);
  CHECK(std::string(tag_name(tag_current_id())) == "weights");
  CHECK_EQ(tag_pop(), 0);
  CHECK(std::string(tag_name(tag_current_id())) == "other");
  CHECK_EQ(tag_push(""), -1);
  CHECK_EQ(tag_push("has space"), -1);
  CHECK_EQ(tag_push("x23456789012345678901234567890123"), -1);  // 33 bytes
  CHECK_EQ(tag_push(nullptr), -1);
  int pushed = 0;
  while (tag_push("deep") == 0) ++pushed;
  CHECK_EQ(pushed, kTagStackMax - 1);
  CHECK_CONTAINS(last_error(), "full");
  while (tag_pop() == 0) {
  }
  CHECK(std::string(tag_name(tag_current_id())) == "other");
  // The stack is per thread.
  CHECK_EQ(tag_set("weights"), 0);
  std::string seen;
  std::thread t([&] { seen = tag_name(tag_current_id()); });
  t.join();
  CHECK(seen == "other");
  CHECK_EQ(tag_set("other"), 0);
}

namespace {

std::string field(const std::string& line, const std::string& key) {
  std::string k = "\"" + key + "\":";
  size_t i = line.find(k);
  if (i == std::string::npos) return "<missing>";
  i += k.size();
  if (line[i] == '"') {
    size_t j = line.find('"', i + 1);
    return line.substr(i + 1, j - i - 1);
  }
  size_t j = line.find_first_of(",}", i);
  return line.substr(i, j - i);
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> out;
  std::string l;
  while (std::getline(f, l)) out.push_back(l);
  return out;
}

std::string hex(const void* p) { return fmt_ptr(p); }

}  // namespace

TEST(trace_dump_and_parse) {
  auto a = fresh();
  a->trace_enable(true, 1024);
  REQUIRE(a->arena_reserve(0, 8 * MiB) == 0);
  REQUIRE(tag_push("activations") == 0);
  void* p = a->malloc(1234, 0, S(0x42));
  REQUIRE(tag_pop() == 0);
  void* s = a->slab_alloc(0, 4096, "layer3", "kv_cache");
  a->free(p, 1234, 0, S(0x42));
  a->slab_free(s);
  void* q = a->malloc(100, 1, nullptr);
  a->free(q, 100, 1, nullptr);
  std::string path = "/tmp/ha_trace_" + std::to_string(getpid()) + ".jsonl";
  CHECK_EQ(a->trace_dump(path.c_str()), 8);
  std::vector<std::string> lines = read_lines(path);
  REQUIRE(lines.size() == 9);
  CHECK(field(lines[0], "type") == "header");
  CHECK(field(lines[0], "events") == "8");
  CHECK(field(lines[0], "dropped") == "0");
  CHECK(field(lines[0], "backend") == "host");
  CHECK(field(lines[0], "segments") == "1");
  const char* ops[] = {"segment_map", "alloc", "slab_alloc", "free", "slab_free", "segment_map", "alloc", "free"};
  uint64_t last_t = 0;
  for (int i = 0; i < 8; ++i) {
    CHECK(field(lines[i + 1], "op") == ops[i]);
    uint64_t t = std::stoull(field(lines[i + 1], "t_ns"));
    CHECK(t >= last_t);
    last_t = t;
  }
  CHECK(field(lines[1], "size") == std::to_string(2 * MiB));  // the small segment p was carved from
  CHECK(field(lines[1], "ptr") == hex(p));
  CHECK(field(lines[1], "tag") == "activations");
  CHECK(field(lines[1], "stream") == "0x42");
  CHECK(field(lines[2], "ptr") == hex(p));
  CHECK(field(lines[2], "size") == "1234");
  CHECK(field(lines[2], "tag") == "activations");
  CHECK(field(lines[2], "stream") == "0x42");
  CHECK(field(lines[2], "device") == "0");
  CHECK(field(lines[3], "tag") == "kv_cache");
  CHECK(field(lines[3], "size") == "4096");
  CHECK(field(lines[4], "ptr") == hex(p));
  CHECK(field(lines[6], "device") == "1");
  CHECK(field(lines[8], "device") == "1");
  CHECK(field(lines[8], "tag") == "other");
  CHECK(field(lines[8], "pool") == "0");
  std::remove(path.c_str());
  CHECK(a->trace_dump("/nonexistent-dir/x.jsonl") < 0);
  CHECK_CONTAINS(last_error(), "cannot open");
}

TEST(trace_ring_drops_oldest) {
  auto a = fresh();
  a->trace_enable(true, 4);
  std::vector<void*> v;
  for (int i = 0; i < 10; ++i) v.push_back(a->malloc(512 * (i + 1), 0, nullptr));
  CHECK_EQ(a->trace_dropped(), 7u);  // segment_map + 10 allocs
  std::string path = "/tmp/ha_trace_ring_" + std::to_string(getpid()) + ".jsonl";
  CHECK_EQ(a->trace_dump(path.c_str()), 4);
  std::vector<std::string> lines = read_lines(path);
  REQUIRE(lines.size() == 5);
  CHECK(field(lines[0], "dropped") == "7");
  CHECK(field(lines[1], "size") == std::to_string(512 * 7));  // the 4 newest survive
  CHECK(field(lines[4], "size") == std::to_string(512 * 10));
  a->trace_clear();
  CHECK_EQ(a->trace_dump(path.c_str()), 0);
  a->trace_enable(false, 0);
  for (void* p : v) a->free(p, 0, 0, nullptr);
  CHECK_EQ(a->trace_dump(path.c_str()), 0);  // disabled: nothing recorded
  std::remove(path.c_str());
}

TEST(trace_oom_event) {
  auto a = fresh();
  a->trace_enable(true, 16);
  REQUIRE(a->configure("device_limit_bytes", "2097152") == 0);
  void* p = a->malloc(3 * MiB, 0, nullptr);
  CHECK(p == nullptr);
  std::string path = "/tmp/ha_trace_oom_" + std::to_string(getpid()) + ".jsonl";
  CHECK_EQ(a->trace_dump(path.c_str()), 1);
  std::vector<std::string> lines = read_lines(path);
  REQUIRE(lines.size() == 2);
  CHECK(field(lines[1], "op") == "oom");
  CHECK(field(lines[1], "size") == std::to_string(3 * MiB));
  std::remove(path.c_str());
}

// Segment events: which segment each request maps, in order, with its size; free keeps the segment cached;
// empty_cache unmaps exactly the segments whose blocks are all free.
TEST(trace_segment_events) {
  auto a = fresh();
  a->trace_enable(true, 64);
  void* s1 = a->malloc(1000, 0, nullptr);         // maps a 2 MiB small segment
  void* s2 = a->malloc(4000, 0, nullptr);         // same segment
  void* l1 = a->malloc(3 * MiB, 0, nullptr);      // maps a 20 MiB large segment
  void* d1 = a->malloc(25 * MiB + 1, 0, nullptr); // direct (no 17 MiB rest fits): 26 MiB, 2 MiB units
  REQUIRE(s1 && s2 && l1 && d1);
  a->free(s1, 1000, 0, nullptr);
  a->free(l1, 3 * MiB, 0, nullptr);
  a->free(d1, 25 * MiB + 1, 0, nullptr);
  a->empty_cache();  // unmaps the 20 and 26 MiB segments; the small one still holds s2
  std::string path = "/tmp/ha_trace_seg_" + std::to_string(getpid()) + ".jsonl";
  CHECK_EQ(a->trace_dump(path.c_str()), 12);
  std::vector<std::string> lines = read_lines(path);
  REQUIRE(lines.size() == 13);
  struct Want {
    const char* op;
    uint64_t size;
  } want[] = {{"segment_map", 2 * MiB}, {"alloc", 1000},           {"alloc", 4000},
              {"segment_map", 20 * MiB}, {"alloc", 3 * MiB},        {"segment_map", 26 * MiB},
              {"alloc", 25 * MiB + 1},   {"free", 1000},            {"free", 3 * MiB},
              {"free", 25 * MiB + 1}};
  for (int i = 0; i < 10; ++i) {
    CHECK(field(lines[i + 1], "op") == want[i].op);
    CHECK(field(lines[i + 1], "size") == std::to_string(want[i].size));
  }
  CHECK(field(lines[1], "ptr") == hex(s1));  // the first block starts at the segment base
  CHECK(field(lines[4], "ptr") == hex(l1));
  CHECK(field(lines[6], "ptr") == hex(d1));
  // The last two events unmap the 20 MiB and the 26 MiB segments (in segment-list order).
  std::map<std::string, std::string> unmapped;  // ptr -> size
  for (size_t i = 11; i < lines.size(); ++i) {
    CHECK(field(lines[i], "op") == "segment_unmap");
    unmapped[field(lines[i], "ptr")] = field(lines[i], "size");
  }
  CHECK(unmapped == (std::map<std::string, std::string>{{hex(l1), std::to_string(20 * MiB)},
                                                         {hex(d1), std::to_string(26 * MiB)}}));
  CHECK_EQ(stats_of(*a).caching.reserved, 2 * MiB);
  a->free(s2, 4000, 0, nullptr);
  std::remove(path.c_str());
}
