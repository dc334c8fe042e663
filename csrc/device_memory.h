// Physical bytes one device holds from its backend (caching segments + mapped arena granules) and the cap
// on them. Lives under the device mutex with the arena and the caching path that share it.
#pragma once

#include <cstddef>

#include "backend.h"

namespace hybrid_alloc {

struct DeviceMemory {
  Backend* backend = nullptr;
  int device = 0;
  size_t held = 0;   // bytes currently held from the backend
  size_t limit = 0;  // 0 = none; min(device_limit_bytes, memory fraction x total)
  bool fits(size_t bytes) const { return limit == 0 || (held <= limit && bytes <= limit - held); }
};

}  // namespace hybrid_alloc
