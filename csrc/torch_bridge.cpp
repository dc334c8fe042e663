// The PyTorch hook bridge: sets the optional hooks of a torch CUDAPluggableAllocator to libhybrid_alloc.so.
//
// Why it exists: torch.cuda.memory.CUDAPluggableAllocator (Python, PyTorch 2.13) takes only the alloc and
// free symbols. The other hooks (set_init_fn, set_reset_fn, set_memory_fraction_fn, set_record_stream_fn,
// set_begin_allocate_to_pool, set_end_allocate_to_pool_fn, set_release_pool) are C++ member functions of
// torch::cuda::CUDAPluggableAllocator::CUDAPluggableAllocator that take std::function arguments: they can
// only be called from C++ compiled against the same torch. hybrid_alloc.allocator compiles this file at run
// time with torch.utils.cpp_extension.load (cached in TORCH_EXTENSIONS_DIR) on machines with CUDA torch,
// then calls set_hooks(pluggable._allocator, library_path).
//
// Hooks made live (each forwards to the C ABI of csrc/include/hybrid_alloc.h):
//   init            -> hybrid_alloc_init(device_count)
//   reset           -> hybrid_alloc_empty_cache()            (torch.cuda.empty_cache)
//   memory_fraction -> hybrid_alloc_set_memory_fraction(f, device)
//   record_stream   -> hybrid_alloc_record_stream(ptr, stream) (Tensor.record_stream)
//   begin_allocate_to_pool -> hybrid_alloc_begin_capture(device, pool, current stream of device)
//   end_allocate_to_pool   -> hybrid_alloc_end_capture(device, pool)
//   release_pool           -> hybrid_alloc_release_pool(device, pool)
// Not set: base_alloc (getBaseAllocation then returns the pointer itself, which is exact for our blocks).
//
// Pool ids: PyTorch's MempoolId_t is a pair {graph-generated id, user-created id}, exactly one non-zero;
// it is folded into one uint64 (user ids get bit 63). The PyTorch filter (which streams/threads allocate
// into the pool) is replaced by the stream current on `device` when the pool begins: CUDAGraph calls
// beginAllocateToPool with the capture stream current, just before cudaStreamBeginCapture.
// Only c10/torch CUDA allocator headers and pybind11 (not torch/extension.h, which pulls in all of ATen):
// cpp_extension still compiles it with torch's pybind11 ABI flags, so the pybind11 type registry (and the
// torch._C._cuda_CUDAAllocator holder type) is shared with torch.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using AllocatorBase = c10::cuda::CUDACachingAllocator::CUDAAllocator;
using Pluggable = torch::cuda::CUDAPluggableAllocator::CUDAPluggableAllocator;

using InitFn = void (*)(int);
using ResetFn = void (*)();
using FractionFn = void (*)(double, int);
using RecordStreamFn = void (*)(void*, void*);
using BeginFn = void (*)(int, std::uint64_t, void*);
using EndFn = void (*)(int, std::uint64_t);

std::uint64_t pool_key(const c10::cuda::MempoolId_t& id) {
  if (id.first != 0) return static_cast<std::uint64_t>(id.first) & ~(std::uint64_t{1} << 63);
  return static_cast<std::uint64_t>(id.second) | (std::uint64_t{1} << 63);
}

template <typename F>
F resolve(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  TORCH_CHECK(p != nullptr, "hybrid_alloc torch bridge: symbol ", name, " missing from libhybrid_alloc.so");
  return reinterpret_cast<F>(p);
}

// Returns the names of the hooks it set.
std::vector<std::string> set_hooks(py::object allocator, const std::string& library_path) {
  std::shared_ptr<AllocatorBase> base = allocator.cast<std::shared_ptr<AllocatorBase>>();
  auto plug = std::dynamic_pointer_cast<Pluggable>(base);
  TORCH_CHECK(plug != nullptr, "hybrid_alloc torch bridge: the allocator is not a CUDAPluggableAllocator");
  void* lib = dlopen(library_path.c_str(), RTLD_NOW | RTLD_LOCAL);  // already loaded by torch: same handle
  TORCH_CHECK(lib != nullptr, "hybrid_alloc torch bridge: cannot open ", library_path, ": ", dlerror());

  auto init = resolve<InitFn>(lib, "hybrid_alloc_init");
  auto reset = resolve<ResetFn>(lib, "hybrid_alloc_empty_cache");
  auto fraction = resolve<FractionFn>(lib, "hybrid_alloc_set_memory_fraction");
  auto record = resolve<RecordStreamFn>(lib, "hybrid_alloc_record_stream");
  auto begin = resolve<BeginFn>(lib, "hybrid_alloc_begin_capture");
  auto end = resolve<EndFn>(lib, "hybrid_alloc_end_capture");
  auto release = resolve<EndFn>(lib, "hybrid_alloc_release_pool");

  plug->set_init_fn([init](int device_count) { init(device_count); });
  plug->set_reset_fn([reset]() { reset(); });
  plug->set_memory_fraction_fn([fraction](double f, int device) { fraction(f, device); });
  plug->set_record_stream_fn([record](void* ptr, cudaStream_t stream) { record(ptr, static_cast<void*>(stream)); });
  plug->set_begin_allocate_to_pool(
      [begin](int device, c10::cuda::MempoolId_t id, std::function<bool(cudaStream_t)> /*filter*/) {
        cudaStream_t s = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
        begin(device, pool_key(id), static_cast<void*>(s));
      });
  plug->set_end_allocate_to_pool_fn([end](int device, c10::cuda::MempoolId_t id) { end(device, pool_key(id)); });
  plug->set_release_pool([release](int device, c10::cuda::MempoolId_t id) { release(device, pool_key(id)); });
  return {"init", "reset", "memory_fraction", "record_stream", "begin_allocate_to_pool", "end_allocate_to_pool",
          "release_pool"};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hybrid_alloc: sets the optional hooks of a torch CUDAPluggableAllocator to libhybrid_alloc.so";
  m.def("set_hooks", &set_hooks, py::arg("allocator"), py::arg("library_path"),
        "allocator: CUDAPluggableAllocator._allocator (torch._C._cuda_CUDAAllocator). Returns the hooks set.");
  m.def("pool_key", [](std::uint64_t first, std::uint64_t second) {
    return pool_key(c10::cuda::MempoolId_t{first, second});
  });
}
