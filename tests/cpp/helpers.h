// Shared helpers for the white-box tests: a fresh allocator over the host backend per case.
#pragma once

#include <memory>
#include <string>

#include "allocator.h"
#include "backend_host.h"
#include "check.h"
#include "common.h"

using namespace hybrid_alloc;

inline std::unique_ptr<Allocator> fresh() { return std::unique_ptr<Allocator>(new Allocator(make_host_backend())); }

inline hybrid_alloc_stats stats_of(Allocator& a, int device = 0) {
  hybrid_alloc_stats s{};
  s.version = HYBRID_ALLOC_STATS_VERSION;
  s.struct_size = sizeof s;
  a.get_stats(device, &s);
  return s;
}

inline hybrid_alloc_counter tag_stats(Allocator& a, const char* tag, int device = 0) {
  hybrid_alloc_counter c{};
  int n = a.get_tag_stats(device, 0, nullptr, 0, nullptr);
  for (int i = 0; i < n; ++i) {
    char name[HYBRID_ALLOC_TAG_MAX];
    hybrid_alloc_counter x{};
    a.get_tag_stats(device, i, name, sizeof name, &x);
    if (std::string(name) == tag) return x;
  }
  return c;
}

inline Stream S(uintptr_t id) { return reinterpret_cast<Stream>(id); }

#define CHECK_INVARIANTS(a)                                                          \
  do {                                                                               \
    std::string e_ = (a).check();                                                    \
    if (!e_.empty()) {                                                               \
      ++ha_test::failures();                                                         \
      fprintf(stderr, "%s:%d: [%s] invariant: %s\n", __FILE__, __LINE__, ha_test::current(), e_.c_str()); \
    }                                                                                \
  } while (0)

constexpr size_t MiB = size_t(1) << 20;
