// A tiny self-contained test harness: TEST(name) { CHECK(...); } registers a case; main runs the cases
// whose name starts with one of its arguments (all cases without arguments). No network, no framework.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace ha_test {

struct Case {
  const char* name;
  void (*fn)();
};
inline std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}
struct Register {
  Register(const char* n, void (*f)()) { registry().push_back({n, f}); }
};
inline int& failures() {
  static int f = 0;
  return f;
}
inline const char*& current() {
  static const char* c = "";
  return c;
}

inline int run_all(int argc, char** argv) {
  int ran = 0;
  for (const Case& c : registry()) {
    bool selected = argc <= 1;
    for (int i = 1; i < argc; ++i) selected |= strncmp(c.name, argv[i], strlen(argv[i])) == 0;
    if (!selected) continue;
    current() = c.name;
    int before = failures();
    c.fn();
    ++ran;
    printf("%s %s\n", failures() == before ? "[ ok ]" : "[FAIL]", c.name);
    fflush(stdout);
  }
  if (ran == 0) {
    printf("no test matched\n");
    return 2;
  }
  printf("%d case(s), %d failed check(s)\n", ran, failures());
  return failures() ? 1 : 0;
}

}  // namespace ha_test

#define HA_CAT2(a, b) a##b
#define HA_CAT(a, b) HA_CAT2(a, b)
#define TEST(name)                                                           \
  static void HA_CAT(test_, name)();                                         \
  static ha_test::Register HA_CAT(reg_, name)(#name, &HA_CAT(test_, name)); \
  static void HA_CAT(test_, name)()

#define CHECK(cond)                                                                               \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      ++ha_test::failures();                                                                      \
      fprintf(stderr, "%s:%d: [%s] CHECK(%s) failed\n", __FILE__, __LINE__, ha_test::current(), #cond); \
    }                                                                                             \
  } while (0)

#define REQUIRE(cond)                                                                               \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      ++ha_test::failures();                                                                        \
      fprintf(stderr, "%s:%d: [%s] REQUIRE(%s) failed\n", __FILE__, __LINE__, ha_test::current(), #cond); \
      return;                                                                                       \
    }                                                                                               \
  } while (0)

#define CHECK_EQ(a, b)                                                                               \
  do {                                                                                               \
    auto va_ = (a);                                                                                  \
    auto vb_ = (b);                                                                                  \
    if (!(va_ == vb_)) {                                                                             \
      ++ha_test::failures();                                                                         \
      fprintf(stderr, "%s:%d: [%s] CHECK_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, __LINE__,     \
              ha_test::current(), #a, #b, (long long)va_, (long long)vb_);                           \
    }                                                                                                \
  } while (0)

#define CHECK_CONTAINS(str, sub)                                                                      \
  do {                                                                                                \
    std::string s_ = (str);                                                                           \
    if (s_.find(sub) == std::string::npos) {                                                          \
      ++ha_test::failures();                                                                          \
      fprintf(stderr, "%s:%d: [%s] '%s' does not contain '%s'\n", __FILE__, __LINE__, ha_test::current(), \
              s_.c_str(), sub);                                                                       \
    }                                                                                                 \
  } while (0)

#define TEST_MAIN \
  int main(int argc, char** argv) { return ha_test::run_all(argc, argv); }
