#include "arena.h"

#include <algorithm>
#include <cstdio>

#include "common.h"

namespace hybrid_alloc {

Arena::~Arena() { release_all(); }

void Arena::release_all() {
  if (!base_) return;
  for (auto& kv : live_)
    if (kv.second.pending) mem_->backend->destroy_event(kv.second.pending);
  for (size_t g = 0; g < is_mapped_.size(); ++g)
    if (is_mapped_[g]) {
      mem_->backend->unmap(mem_->device, base_, g * gran_, gran_);
      mem_->held -= gran_;
      stats_->on_reserve(Path::Arena, -static_cast<int64_t>(gran_), -1, 0);
    }
  mem_->backend->release(mem_->device, base_, capacity_);
  base_ = nullptr;
  capacity_ = mapped_ = pending_count_ = 0;
  free_.clear();
  live_.clear();
  users_.clear();
  is_mapped_.clear();
}

bool Arena::reserve(size_t bytes, std::string* err) {
  if (!live_.empty()) {
    *err = "cannot re-reserve the arena of device " + std::to_string(mem_->device) + ": " +
           std::to_string(live_.size()) + " slab(s) are live (" + describe() + ")";
    return false;
  }
  release_all();
  requested_ = bytes;
  if (bytes == 0) return true;  // on demand
  return ensure_reserved(err);
}

bool Arena::ensure_reserved(std::string* err) {
  if (base_) return true;
  gran_ = mem_->backend->granularity(mem_->device);
  size_t bytes = requested_;
  if (bytes == 0) {  // on demand: the device's total memory, mapped granule by granule
    size_t free_b = 0, total_b = 0;
    bytes = mem_->backend->mem_info(mem_->device, &free_b, &total_b) ? total_b : (size_t(64) << 30);
  }
  bytes = round_up(bytes, gran_);
  std::string why;
  void* p = mem_->backend->reserve(mem_->device, bytes, &why);
  if (!p) {
    *err = "arena reservation of " + fmt_bytes(bytes) + " failed: " + why;
    return false;
  }
  base_ = static_cast<char*>(p);
  capacity_ = bytes;
  free_.clear();
  free_.emplace(0, capacity_);
  users_.assign(capacity_ / gran_, 0);
  is_mapped_.assign(capacity_ / gran_, 0);
  return true;
}

bool Arena::map_range(size_t off, size_t len, std::string* err) {
  size_t g0 = off / gran_, g1 = (off + len - 1) / gran_;
  std::vector<size_t> newly;
  for (size_t g = g0; g <= g1; ++g) {
    if (!is_mapped_[g]) {
      std::string why;
      bool ok = mem_->fits(gran_);
      if (!ok)
        why = "device limit " + fmt_bytes(mem_->limit) + " reached (held " + fmt_bytes(mem_->held) + ")";
      else
        ok = mem_->backend->map(mem_->device, base_, g * gran_, gran_, &why);
      if (!ok) {
        for (size_t u : newly) {
          mem_->backend->unmap(mem_->device, base_, u * gran_, gran_);
          is_mapped_[u] = 0;
          --mapped_;
          mem_->held -= gran_;
          stats_->on_reserve(Path::Arena, -static_cast<int64_t>(gran_), -1, 0);
        }
        *err = "mapping granule " + std::to_string(g) + " failed: " + why;
        return false;
      }
      is_mapped_[g] = 1;
      ++mapped_;
      mem_->held += gran_;
      stats_->on_reserve(Path::Arena, static_cast<int64_t>(gran_), -1, 0);
      newly.push_back(g);
    }
  }
  for (size_t g = g0; g <= g1; ++g) ++users_[g];
  return true;
}

void Arena::unuse_range(size_t off, size_t len) {
  size_t g0 = off / gran_, g1 = (off + len - 1) / gran_;
  for (size_t g = g0; g <= g1; ++g) --users_[g];
}

void* Arena::alloc(size_t size, size_t alignment, bool best_fit, int tag, const char* name, std::string* err) {
  if (size == 0) {
    *err = "slab size must be > 0";
    return nullptr;
  }
  if (!ensure_reserved(err)) return nullptr;
  process_pending();
  if (size > capacity_) {
    *err = "arena exhausted: " + describe();
    return nullptr;
  }
  size_t carved = round_up(size, alignment);
  auto chosen = free_.end();
  size_t chosen_start = 0;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    size_t start = round_up(it->first, alignment);
    if (start + carved > it->first + it->second || start < it->first) continue;
    if (!best_fit) {
      chosen = it;
      chosen_start = start;
      break;
    }
    if (chosen == free_.end() || it->second < chosen->second) {
      chosen = it;
      chosen_start = start;
    }
  }
  if (chosen == free_.end()) {
    *err = "arena exhausted: " + describe();
    return nullptr;
  }
  if (!map_range(chosen_start, carved, err)) return nullptr;
  size_t ext_off = chosen->first, ext_len = chosen->second;
  free_.erase(chosen);
  if (chosen_start > ext_off) free_.emplace(ext_off, chosen_start - ext_off);
  size_t end = chosen_start + carved, ext_end = ext_off + ext_len;
  if (ext_end > end) free_.emplace(end, ext_end - end);
  Slab& s = live_[chosen_start];
  s.size = size;
  s.carved = carved;
  s.tag = tag;
  s.name = name ? name : "";
  s.pending = nullptr;
  stats_->on_reserve(Path::Arena, 0, tag, static_cast<int64_t>(carved));
  return base_ + chosen_start;
}

void Arena::insert_free(size_t off, size_t len) {
  auto next = free_.lower_bound(off);
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && off + len == next->first) {
    len += next->second;
    free_.erase(next);
  }
  free_.emplace(off, len);
}

void Arena::finish_free(std::map<size_t, Slab>::iterator it) {
  size_t off = it->first;
  const Slab& s = it->second;
  unuse_range(off, s.carved);
  stats_->on_reserve(Path::Arena, 0, s.tag, -static_cast<int64_t>(s.carved));
  insert_free(off, s.carved);
  live_.erase(it);
}

bool Arena::free(void* p, Slab* out) {
  if (!contains(p)) return false;
  auto it = live_.find(static_cast<size_t>(static_cast<char*>(p) - base_));
  if (it == live_.end() || it->second.pending) return false;
  if (out) *out = it->second;
  finish_free(it);
  return true;
}

bool Arena::free_after(void* p, Event ev, Slab* out) {
  if (!contains(p)) return false;
  auto it = live_.find(static_cast<size_t>(static_cast<char*>(p) - base_));
  if (it == live_.end() || it->second.pending) return false;
  if (out) *out = it->second;
  if (!ev) {
    finish_free(it);
    return true;
  }
  it->second.pending = ev;
  ++pending_count_;
  return true;
}

void Arena::process_pending() {
  if (pending_count_ == 0) return;
  for (auto it = live_.begin(); it != live_.end();) {
    auto cur = it++;
    Event ev = cur->second.pending;
    if (ev && mem_->backend->event_done(ev)) {
      mem_->backend->destroy_event(ev);
      --pending_count_;
      finish_free(cur);
    }
  }
}

const Slab* Arena::find(const void* p) const {
  if (!contains(p)) return nullptr;
  auto it = live_.find(static_cast<size_t>(static_cast<const char*>(p) - base_));
  if (it == live_.end() || it->second.pending) return nullptr;
  return &it->second;
}

size_t Arena::trim() {
  if (!base_) return 0;
  process_pending();
  size_t freed = 0;
  for (size_t g = 0; g < is_mapped_.size(); ++g)
    if (is_mapped_[g] && users_[g] == 0) {
      mem_->backend->unmap(mem_->device, base_, g * gran_, gran_);
      is_mapped_[g] = 0;
      --mapped_;
      mem_->held -= gran_;
      stats_->on_reserve(Path::Arena, -static_cast<int64_t>(gran_), -1, 0);
      freed += gran_;
    }
  return freed;
}

std::string Arena::describe() const {
  if (!base_)
    return std::string("arena not reserved (") + (requested_ ? fmt_bytes(requested_) : "on demand") + ")";
  size_t used = 0, largest = 0, free_total = 0;
  for (auto& kv : live_) used += kv.second.carved;
  for (auto& kv : free_) {
    free_total += kv.second;
    largest = std::max(largest, kv.second);
  }
  char buf[512];
  snprintf(buf, sizeof buf,
           "arena capacity %s, %zu live slab(s) using %s (%zu awaiting stream events), free %s in %zu "
           "extent(s), largest free extent %s, mapped %s",
           fmt_bytes(capacity_).c_str(), live_.size(), fmt_bytes(used).c_str(), pending_count_,
           fmt_bytes(free_total).c_str(), free_.size(), fmt_bytes(largest).c_str(),
           fmt_bytes(mapped_ * gran_).c_str());
  return buf;
}

}  // namespace hybrid_alloc
