#include "stats.h"

#include <atomic>
#include <cstring>
#include <mutex>

#include "common.h"

namespace hybrid_alloc {

namespace {

// Names are written once (under g_tag_mu) before the count that publishes them; readers load the count
// with acquire and never see a slot change afterwards. Interned names are leaked on purpose.
std::atomic<const char*> g_names[kMaxTags] = {"other", "weights", "kv_cache", "activations", "cudagraph"};
std::atomic<int> g_count{5};
std::mutex g_tag_mu;

thread_local int t_stack[kTagStackMax];  // t_stack[0] is the bottom ("other" = 0 by zero-init)
thread_local int t_depth;                // number of entries above the bottom

bool valid_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == ':' || c == '-';
}

}  // namespace

int tag_intern(const char* name, std::string* err) {
  if (!name) {
    *err = "tag is NULL";
    return -1;
  }
  size_t n = strnlen(name, HYBRID_ALLOC_TAG_MAX);
  if (n == 0 || n >= HYBRID_ALLOC_TAG_MAX) {
    *err = std::string("bad tag '") + std::string(name, n) + "': need 1.." +
           std::to_string(HYBRID_ALLOC_TAG_MAX - 1) + " bytes";
    return -1;
  }
  for (size_t i = 0; i < n; ++i)
    if (!valid_char(name[i])) {
      *err = std::string("bad tag '") + name + "': allowed characters are [A-Za-z0-9_.:-]";
      return -1;
    }
  int count = g_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i)
    if (strcmp(g_names[i].load(std::memory_order_relaxed), name) == 0) return i;
  std::lock_guard<std::mutex> lk(g_tag_mu);
  count = g_count.load(std::memory_order_relaxed);
  for (int i = 0; i < count; ++i)
    if (strcmp(g_names[i].load(std::memory_order_relaxed), name) == 0) return i;
  if (count >= kMaxTags) {
    *err = std::string("cannot add tag '") + name + "': the registry holds its maximum of " +
           std::to_string(kMaxTags) + " tags";
    return -1;
  }
  char* copy = new char[n + 1];
  memcpy(copy, name, n + 1);
  g_names[count].store(copy, std::memory_order_relaxed);
  g_count.store(count + 1, std::memory_order_release);
  return count;
}

const char* tag_name(int id) {
  if (id < 0 || id >= g_count.load(std::memory_order_acquire)) return "?";
  return g_names[id].load(std::memory_order_relaxed);
}

int tag_count() { return g_count.load(std::memory_order_acquire); }

int tag_current_id() { return t_stack[t_depth]; }

int tag_set(const char* name) {
  std::string err;
  int id = tag_intern(name, &err);
  if (id < 0) {
    set_error("hybrid_alloc_set_tag: %s", err.c_str());
    return -1;
  }
  t_stack[t_depth] = id;
  return 0;
}

int tag_push(const char* name) {
  std::string err;
  int id = tag_intern(name, &err);
  if (id < 0) {
    set_error("hybrid_alloc_push_tag: %s", err.c_str());
    return -1;
  }
  if (t_depth + 1 >= kTagStackMax) {
    set_error("hybrid_alloc_push_tag('%s'): tag stack full (%d deep); unbalanced push/pop?", name,
              kTagStackMax - 1);
    return -1;
  }
  t_stack[++t_depth] = id;
  return 0;
}

int tag_pop() {
  if (t_depth == 0) {
    set_error("hybrid_alloc_pop_tag: the tag stack is at its bottom ('%s'); unbalanced push/pop?",
              tag_name(t_stack[0]));
    return -1;
  }
  --t_depth;
  return 0;
}

void DeviceStats::mark_seen(int id) {
  if (static_cast<size_t>(id) >= tags.size()) {
    tags.resize(id + 1);
    seen_flag.resize(id + 1, 0);
  }
  if (!seen_flag[id]) {
    seen_flag[id] = 1;
    seen.push_back(id);
  }
}

void DeviceStats::reset_peaks() {
  total.peak = total.current;
  arena.peak = arena.current;
  caching.peak = caching.current;
  for (auto& c : tags) c.peak = c.current;
}

}  // namespace hybrid_alloc
