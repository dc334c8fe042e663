// hybrid_alloc._core: the pybind11 control module of the allocator.
//
// It links libhybrid_alloc.so (the same file PyTorch and ctypes load; RPATH $ORIGIN, both installed in the
// hybrid_alloc package directory), so there is exactly one allocator state per process: a slab allocated
// here shows in the statistics read through ctypes, and the reverse. The module only calls the public C ABI
// (csrc/include/hybrid_alloc.h); it is outside the allocation hot path. Calls that may block (allocation,
// emptying the cache, dumping the trace) release the GIL.
//
// Errors: a failing C call raises a Python exception carrying hybrid_alloc_last_error():
//   MemoryError (allocation failed: exhausted arena/device), ValueError (bad argument/configuration),
//   RuntimeError (anything else).
#include <dlfcn.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "hybrid_alloc.h"

namespace py = pybind11;

namespace {

std::string last_error() {
  const char* e = hybrid_alloc_last_error();
  return e ? std::string(e) : std::string();
}

std::string or_default(const std::string& msg, const std::string& fallback) {
  return msg.empty() ? fallback : msg;
}

py::dict counter_dict(const hybrid_alloc_counter& c) {
  py::dict d;
  d["current"] = c.current;
  d["peak"] = c.peak;
  d["reserved"] = c.reserved;
  d["alloc_count"] = c.alloc_count;
  d["free_count"] = c.free_count;
  return d;
}

hybrid_alloc_stream_t as_stream(std::uintptr_t s) { return reinterpret_cast<hybrid_alloc_stream_t>(s); }

py::dict stats(int device) {
  hybrid_alloc_stats s{};
  s.version = HYBRID_ALLOC_STATS_VERSION;
  s.struct_size = sizeof(hybrid_alloc_stats);
  if (hybrid_alloc_get_stats(device, &s) < 0) {
    throw py::value_error(or_default(last_error(), "hybrid_alloc_get_stats failed for device " + std::to_string(device)));
  }
  py::dict d;
  d["device"] = device;
  d["total"] = counter_dict(s.total);
  d["arena"] = counter_dict(s.arena);
  d["caching"] = counter_dict(s.caching);
  d["arena_reserved_bytes"] = s.arena_reserved_bytes;
  d["num_ooms"] = s.num_ooms;
  d["num_invalid_frees"] = s.num_invalid_frees;
  d["num_segments"] = s.num_segments;
  d["pending_free_bytes"] = s.pending_free_bytes;
  d["limit_bytes"] = s.limit_bytes;
  return d;
}

py::dict tag_stats(int device) {
  py::dict out;
  int n = hybrid_alloc_get_tag_stats(device, 0, nullptr, 0, nullptr);
  if (n < 0) {
    throw py::value_error(or_default(last_error(), "hybrid_alloc_get_tag_stats failed for device " + std::to_string(device)));
  }
  for (int i = 0; i < n; ++i) {
    char tag[HYBRID_ALLOC_TAG_MAX] = {0};
    hybrid_alloc_counter c{};
    int r = hybrid_alloc_get_tag_stats(device, i, tag, sizeof(tag), &c);
    if (r < 0) {
      throw py::value_error(or_default(last_error(), "hybrid_alloc_get_tag_stats failed at index " + std::to_string(i)));
    }
    if (r <= i) break;  // tags vanished between calls (reset): stop at what exists
    out[py::str(tag)] = counter_dict(c);
  }
  return out;
}

py::list slabs(int device) {
  py::list out;
  int n = hybrid_alloc_get_slab(device, -1, nullptr);
  if (n < 0) throw py::value_error(or_default(last_error(), "hybrid_alloc_get_slab failed for device " + std::to_string(device)));
  for (int i = 0; i < n; ++i) {
    hybrid_alloc_slab_info info{};
    int r = hybrid_alloc_get_slab(device, i, &info);
    if (r < 0) throw py::value_error(or_default(last_error(), "hybrid_alloc_get_slab failed at index " + std::to_string(i)));
    if (r <= i) break;  // slabs freed meanwhile
    py::dict d;
    d["ptr"] = reinterpret_cast<std::uintptr_t>(info.ptr);
    d["size"] = info.size;
    d["carved"] = info.carved;
    d["offset"] = info.offset;
    d["name"] = std::string(info.name, strnlen(info.name, sizeof(info.name)));
    d["tag"] = std::string(info.tag, strnlen(info.tag, sizeof(info.tag)));
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "hybrid-alloc control module: configuration, statistics, tags, slabs and the trace of the allocator "
            "in libhybrid_alloc.so (one state per process, shared with PyTorch and ctypes).";

  m.attr("ABI_VERSION") = HYBRID_ALLOC_ABI_VERSION;
  m.attr("STATS_VERSION") = HYBRID_ALLOC_STATS_VERSION;
  m.attr("TAG_MAX") = HYBRID_ALLOC_TAG_MAX;

  m.def("abi_version", &hybrid_alloc_abi_version, "ABI version of the loaded libhybrid_alloc.so.");
  m.def("backend_name", []() { return std::string(hybrid_alloc_backend_name()); },
        "Backend in use: 'cuda' or 'host' (chosen on first use; HYBRID_ALLOC_BACKEND=auto|cuda|host).");
  m.def("last_error", &last_error, "The calling thread's last error message ('' if none).");
  m.def(
      "library_path",
      []() {
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(&hybrid_alloc_abi_version), &info) == 0 || info.dli_fname == nullptr) {
          throw std::runtime_error("cannot locate libhybrid_alloc.so (dladdr failed)");
        }
        return std::string(info.dli_fname);
      },
      "Path of the libhybrid_alloc.so this module is linked to (the file to give PyTorch).");

  m.def(
      "configure",
      [](const std::string& key, const std::string& value) {
        if (hybrid_alloc_configure(key.c_str(), value.c_str()) < 0) {
          throw py::value_error(or_default(last_error(), "invalid configuration " + key + "=" + value));
        }
      },
      py::arg("key"), py::arg("value"), "Set one key=value option (e.g. alignment=256); ValueError if rejected.");

  // Statistics.
  m.def("stats", &stats, py::arg("device") = 0, "Counters of one device as a dict (total, arena, caching, ...).");
  m.def("tag_stats", &tag_stats, py::arg("device") = 0, "Per-tag counters of one device: {tag: counter dict}.");
  m.def("reset_peak_stats", &hybrid_alloc_reset_peak_stats, py::arg("device") = 0);

  // Tags.
  m.def(
      "set_tag",
      [](const std::string& tag) {
        if (hybrid_alloc_set_tag(tag.c_str()) < 0) throw py::value_error(or_default(last_error(), "invalid tag"));
      },
      py::arg("tag"), "Replace the top of this thread's tag stack.");
  m.def(
      "push_tag",
      [](const std::string& tag) {
        if (hybrid_alloc_push_tag(tag.c_str()) < 0) throw py::value_error(or_default(last_error(), "invalid tag"));
      },
      py::arg("tag"));
  m.def("pop_tag", []() {
    if (hybrid_alloc_pop_tag() < 0) throw py::value_error(or_default(last_error(), "tag stack is empty"));
  });
  m.def("current_tag", []() { return std::string(hybrid_alloc_current_tag()); });

  // Slab arena.
  m.def(
      "arena_reserve",
      [](int device, size_t bytes) {
        int r;
        {
          py::gil_scoped_release nogil;
          r = hybrid_alloc_arena_reserve(device, bytes);
        }
        if (r < 0) throw py::value_error(or_default(last_error(), "arena reserve failed"));
      },
      py::arg("device"), py::arg("bytes"), "Reserve the device arena (0 = grow on demand).");
  m.def(
      "slab_alloc",
      [](int device, size_t size, const std::string& name, const std::string& tag) -> std::uintptr_t {
        void* p;
        std::string err;
        {
          py::gil_scoped_release nogil;
          p = hybrid_alloc_slab_alloc(device, size, name.c_str(), tag.empty() ? nullptr : tag.c_str());
          if (p == nullptr) err = last_error();  // thread-local: read before the GIL may move us
        }
        if (p == nullptr) {
          PyErr_SetString(PyExc_MemoryError,
                          or_default(err, "slab_alloc of " + std::to_string(size) + " bytes failed").c_str());
          throw py::error_already_set();
        }
        return reinterpret_cast<std::uintptr_t>(p);
      },
      py::arg("device"), py::arg("size"), py::arg("name") = "", py::arg("tag") = "",
      "Allocate a named, tagged slab; returns its address. MemoryError naming size and tag when exhausted.");
  m.def(
      "slab_free",
      [](std::uintptr_t ptr) {
        if (hybrid_alloc_slab_free(reinterpret_cast<void*>(ptr)) < 0) {
          throw py::value_error(or_default(last_error(), "not a live slab"));
        }
      },
      py::arg("ptr"));

  // The caching path (the calls PyTorch makes), for tests and tools.
  m.def(
      "malloc",
      [](std::int64_t size, int device, std::uintptr_t stream) -> std::uintptr_t {
        void* p;
        std::string err;
        {
          py::gil_scoped_release nogil;
          p = hybrid_alloc_malloc(static_cast<ssize_t>(size), device, as_stream(stream));
          if (p == nullptr) err = last_error();
        }
        if (p == nullptr && size != 0) {
          PyErr_SetString(PyExc_MemoryError,
                          or_default(err, "malloc of " + std::to_string(size) + " bytes failed").c_str());
          throw py::error_already_set();
        }
        return reinterpret_cast<std::uintptr_t>(p);
      },
      py::arg("size"), py::arg("device") = 0, py::arg("stream") = 0);
  m.def(
      "free",
      [](std::uintptr_t ptr, std::int64_t size, int device, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        hybrid_alloc_free(reinterpret_cast<void*>(ptr), static_cast<ssize_t>(size), device, as_stream(stream));
      },
      py::arg("ptr"), py::arg("size"), py::arg("device") = 0, py::arg("stream") = 0);
  m.def(
      "record_stream",
      [](std::uintptr_t ptr, std::uintptr_t stream) { hybrid_alloc_record_stream(reinterpret_cast<void*>(ptr), as_stream(stream)); },
      py::arg("ptr"), py::arg("stream"));
  m.def(
      "empty_cache",
      []() {
        py::gil_scoped_release nogil;
        hybrid_alloc_empty_cache();
      },
      "Release cached, unused segments to the backend.");
  m.def("set_memory_fraction", &hybrid_alloc_set_memory_fraction, py::arg("fraction"), py::arg("device") = 0);
  m.def("init", &hybrid_alloc_init, py::arg("device_count"));
  m.def("begin_capture",
        [](int device, std::uint64_t pool, std::uintptr_t stream) { hybrid_alloc_begin_capture(device, pool, as_stream(stream)); },
        py::arg("device"), py::arg("pool_id"), py::arg("stream"));
  m.def("end_capture", &hybrid_alloc_end_capture, py::arg("device"), py::arg("pool_id"));
  m.def("release_pool", &hybrid_alloc_release_pool, py::arg("device"), py::arg("pool_id"));

  // Trace.
  m.def(
      "trace_dump",
      [](const std::string& path) {
        std::int64_t n;
        std::string err;
        {
          py::gil_scoped_release nogil;
          n = hybrid_alloc_trace_dump(path.c_str());
          if (n < 0) err = last_error();
        }
        if (n < 0) throw std::runtime_error(or_default(err, "trace dump to " + path + " failed"));
        return n;
      },
      py::arg("path"), "Write the buffered events as JSON lines; returns the number written.");
  m.def("trace_enable", &hybrid_alloc_trace_enable, py::arg("enabled") = true, py::arg("capacity_events") = 0);
  m.def("trace_clear", &hybrid_alloc_trace_clear);
  m.def("trace_dropped", &hybrid_alloc_trace_dropped, "Events overwritten since the last clear.");

  m.def("slabs", &slabs, py::arg("device") = 0,
        "Live slabs of a device in address order: [{ptr, size, carved, offset, name, tag}].");

  // Host backend test hooks (simulated stream progress; no effect on CUDA streams).
  m.def("host_stream_hold", [](std::uintptr_t s) { return hybrid_alloc_host_stream_hold(as_stream(s)); }, py::arg("stream"));
  m.def("host_stream_progress", [](std::uintptr_t s) { return hybrid_alloc_host_stream_progress(as_stream(s)); },
        py::arg("stream"));
  m.def("host_stream_release", [](std::uintptr_t s) { return hybrid_alloc_host_stream_release(as_stream(s)); },
        py::arg("stream"));
}
