// CUDA backend: the CUDA driver API, loaded at run time.
//
// * Only <cuda.h> is included, for types and constants. Nothing links to libcuda or cudart: the driver is
//   opened with dlopen("libcuda.so.1") and every entry point is resolved through cuGetProcAddress
//   (cuGetProcAddress_v2 on CUDA 12+ drivers, the 4-argument v1 on 11.3+), asking for the ABI of CUDA 12.0
//   with legacy default-stream semantics (stream 0 = the legacy default stream, as PyTorch uses it).
//   The function-pointer types below are written against those 12.0 signatures (cuMemAlloc_v2,
//   cuMemFree_v2, cuMemGetInfo_v2, ...), so a newer cuda.h (13.x here) cannot change them under us.
// * make_cuda_backend() fails cleanly (nullptr + a one-line reason) when libcuda.so.1 is absent, cuInit
//   fails, or no device exists; HYBRID_ALLOC_BACKEND=auto then falls back to the host backend.
// * Contexts: every call makes the device's primary context current on the calling thread (retained
//   lazily, once per device) and restores the previous one, so PyTorch's runtime sees the same context.
// * Graph capture: driver calls that are "unsafe" under cudaStreamCaptureModeGlobal (cuMemAlloc,
//   cuMemCreate, cuMemMap, ...) run with the thread's capture mode exchanged to RELAXED and restored, the
//   same trick as PyTorch's cudaMallocMaybeCapturing. Events are never recorded on a capturing stream:
//   record_event returns nullptr there (a captured event cannot be queried), and the caller must keep the
//   block in the capture's private pool instead.
// * Arena: cuMemAddressReserve for the range; map() backs it with one cuMemCreate handle per granule
//   (as PyTorch's expandable segments do) and one cuMemSetAccess for the whole call; handles are released
//   right after mapping, so unmap() of ANY granule-aligned sub-range frees exactly that physical memory.
// * Events: CU_EVENT_DISABLE_TIMING, pooled per device (destroy_event returns them to the pool).
// * Teardown: the destructor does not call the driver (it may already be unloading at process exit);
//   the driver reclaims everything when the process ends.
//
// Invariants: thread safe (per-device state behind one mutex, taken only on the slow paths: first use of a
// device, event pool); no function throws; failures return false/nullptr and fill `err`.
#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "backend.h"

namespace hybrid_alloc {
namespace {

constexpr int kRequestVersion = 12000;  // the driver ABI the pointer types below are written for

// Driver entry points (CUDA 12.0 ABI).
using PFN_GetProcV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using PFN_GetProcV1 = CUresult (*)(const char*, void**, int, cuuint64_t);
using PFN_Init = CUresult (*)(unsigned int);
using PFN_DriverGetVersion = CUresult (*)(int*);
using PFN_GetErrorString = CUresult (*)(CUresult, const char**);
using PFN_GetErrorName = CUresult (*)(CUresult, const char**);
using PFN_DeviceGetCount = CUresult (*)(int*);
using PFN_DeviceGet = CUresult (*)(CUdevice*, int);
using PFN_DeviceGetAttribute = CUresult (*)(int*, CUdevice_attribute, CUdevice);
using PFN_PrimaryCtxRetain = CUresult (*)(CUcontext*, CUdevice);
using PFN_CtxGetCurrent = CUresult (*)(CUcontext*);
using PFN_CtxSetCurrent = CUresult (*)(CUcontext);
using PFN_MemAlloc = CUresult (*)(CUdeviceptr*, size_t);
using PFN_MemFree = CUresult (*)(CUdeviceptr);
using PFN_MemGetInfo = CUresult (*)(size_t*, size_t*);
using PFN_MemAddressReserve = CUresult (*)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
using PFN_MemAddressFree = CUresult (*)(CUdeviceptr, size_t);
using PFN_MemCreate = CUresult (*)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                                   unsigned long long);
using PFN_MemRelease = CUresult (*)(CUmemGenericAllocationHandle);
using PFN_MemMap = CUresult (*)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
using PFN_MemUnmap = CUresult (*)(CUdeviceptr, size_t);
using PFN_MemSetAccess = CUresult (*)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);
using PFN_MemGetAllocationGranularity = CUresult (*)(size_t*, const CUmemAllocationProp*,
                                                     CUmemAllocationGranularity_flags);
using PFN_EventCreate = CUresult (*)(CUevent*, unsigned int);
using PFN_EventRecord = CUresult (*)(CUevent, CUstream);
using PFN_EventQuery = CUresult (*)(CUevent);
using PFN_EventDestroy = CUresult (*)(CUevent);
using PFN_StreamIsCapturing = CUresult (*)(CUstream, CUstreamCaptureStatus*);
using PFN_ThreadExchangeStreamCaptureMode = CUresult (*)(CUstreamCaptureMode*);

struct Driver {
  void* lib = nullptr;
  PFN_GetProcV2 get_proc_v2 = nullptr;
  PFN_GetProcV1 get_proc_v1 = nullptr;
  PFN_Init init = nullptr;
  PFN_DriverGetVersion driver_get_version = nullptr;
  PFN_GetErrorString get_error_string = nullptr;
  PFN_GetErrorName get_error_name = nullptr;
  PFN_DeviceGetCount device_get_count = nullptr;
  PFN_DeviceGet device_get = nullptr;
  PFN_DeviceGetAttribute device_get_attribute = nullptr;
  PFN_PrimaryCtxRetain primary_ctx_retain = nullptr;
  PFN_CtxGetCurrent ctx_get_current = nullptr;
  PFN_CtxSetCurrent ctx_set_current = nullptr;
  PFN_MemAlloc mem_alloc = nullptr;
  PFN_MemFree mem_free = nullptr;
  PFN_MemGetInfo mem_get_info = nullptr;
  PFN_MemAddressReserve mem_address_reserve = nullptr;
  PFN_MemAddressFree mem_address_free = nullptr;
  PFN_MemCreate mem_create = nullptr;
  PFN_MemRelease mem_release = nullptr;
  PFN_MemMap mem_map = nullptr;
  PFN_MemUnmap mem_unmap = nullptr;
  PFN_MemSetAccess mem_set_access = nullptr;
  PFN_MemGetAllocationGranularity mem_get_granularity = nullptr;
  PFN_EventCreate event_create = nullptr;
  PFN_EventRecord event_record = nullptr;
  PFN_EventQuery event_query = nullptr;
  PFN_EventDestroy event_destroy = nullptr;
  PFN_StreamIsCapturing stream_is_capturing = nullptr;
  PFN_ThreadExchangeStreamCaptureMode exchange_capture_mode = nullptr;

  // Resolve one symbol at the 12.0 ABI. Returns false (and names the symbol in err) if missing.
  template <typename F>
  bool get(const char* name, F* out, std::string* err) {
    void* p = nullptr;
    CUresult r;
    if (get_proc_v2 != nullptr) {
      CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
      r = get_proc_v2(name, &p, kRequestVersion, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &status);
      if (r == CUDA_SUCCESS && status != CU_GET_PROC_ADDRESS_SUCCESS) p = nullptr;
    } else {
      r = get_proc_v1(name, &p, kRequestVersion, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    }
    if (r != CUDA_SUCCESS || p == nullptr) {
      if (err) *err = std::string("CUDA driver lacks ") + name + " (driver too old?)";
      return false;
    }
    *out = reinterpret_cast<F>(p);
    return true;
  }

  std::string describe(CUresult r) const {
    const char* nm = nullptr;
    const char* s = nullptr;
    if (get_error_name) get_error_name(r, &nm);
    if (get_error_string) get_error_string(r, &s);
    std::string out = nm ? nm : ("CUresult " + std::to_string(static_cast<int>(r)));
    if (s) out += std::string(" (") + s + ")";
    return out;
  }
};

// Exchanges the calling thread's stream-capture mode to RELAXED for the guard's lifetime.
class RelaxedCapture {
 public:
  explicit RelaxedCapture(const Driver& d) : d_(d) {
    if (d_.exchange_capture_mode) ok_ = d_.exchange_capture_mode(&mode_) == CUDA_SUCCESS;
  }
  ~RelaxedCapture() {
    if (ok_) d_.exchange_capture_mode(&mode_);
  }
  RelaxedCapture(const RelaxedCapture&) = delete;
  RelaxedCapture& operator=(const RelaxedCapture&) = delete;

 private:
  const Driver& d_;
  CUstreamCaptureMode mode_ = CU_STREAM_CAPTURE_MODE_RELAXED;
  bool ok_ = false;
};

// Makes `ctx` current on this thread for the guard's lifetime, restoring the previous context.
class CtxGuard {
 public:
  CtxGuard(const Driver& d, CUcontext ctx) : d_(d) {
    if (d_.ctx_get_current(&prev_) != CUDA_SUCCESS) prev_ = nullptr;
    if (prev_ != ctx) {
      ok_ = d_.ctx_set_current(ctx) == CUDA_SUCCESS;
      switched_ = true;
    } else {
      ok_ = true;
    }
  }
  ~CtxGuard() {
    if (switched_ && prev_ != nullptr) d_.ctx_set_current(prev_);
  }
  bool ok() const { return ok_; }
  CtxGuard(const CtxGuard&) = delete;
  CtxGuard& operator=(const CtxGuard&) = delete;

 private:
  const Driver& d_;
  CUcontext prev_ = nullptr;
  bool ok_ = false;
  bool switched_ = false;
};

struct EventRec {
  CUevent ev = nullptr;
  int device = -1;
};

struct DeviceState {
  bool ready = false;
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
  size_t granularity = 0;  // 0 = VMM unsupported or unknown
  bool vmm = false;
  std::string init_error;
  std::vector<EventRec*> free_events;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(Driver d, int count) : d_(d), devices_(static_cast<size_t>(count)) {}
  // Deliberately leaks driver resources: at process exit the driver may already be tearing down.
  ~CudaBackend() override = default;

  const char* name() const override { return "cuda"; }
  int device_count() override { return static_cast<int>(devices_.size()); }

  size_t granularity(int device) override {
    DeviceState* s = state(device, nullptr);
    if (s == nullptr || !s->vmm) return 2u << 20;
    return s->granularity;
  }

  void* alloc_segment(int device, size_t bytes, std::string* err) override {
    DeviceState* s = state(device, err);
    if (s == nullptr) return nullptr;
    CtxGuard g(d_, s->ctx);
    if (!g.ok()) return fail(err, "cannot make the primary context of device " + std::to_string(device) + " current");
    RelaxedCapture rc(d_);
    CUdeviceptr p = 0;
    CUresult r = d_.mem_alloc(&p, bytes);
    if (r != CUDA_SUCCESS) {
      return fail(err, "cuMemAlloc(" + std::to_string(bytes) + " bytes) on device " + std::to_string(device) +
                           " failed: " + d_.describe(r));
    }
    return reinterpret_cast<void*>(p);
  }

  void free_segment(int device, void* ptr, size_t /*bytes*/) override {
    if (ptr == nullptr) return;
    DeviceState* s = state(device, nullptr);
    if (s == nullptr) return;
    CtxGuard g(d_, s->ctx);
    RelaxedCapture rc(d_);
    d_.mem_free(reinterpret_cast<CUdeviceptr>(ptr));
  }

  void* reserve(int device, size_t bytes, std::string* err) override {
    DeviceState* s = state(device, err);
    if (s == nullptr) return nullptr;
    if (!s->vmm) return fail(err, "device " + std::to_string(device) + " does not support CUDA virtual memory management");
    if (bytes == 0 || bytes % s->granularity != 0) {
      return fail(err, "reserve of " + std::to_string(bytes) + " bytes is not a multiple of the granule (" +
                           std::to_string(s->granularity) + ")");
    }
    CtxGuard g(d_, s->ctx);
    RelaxedCapture rc(d_);
    CUdeviceptr p = 0;
    CUresult r = d_.mem_address_reserve(&p, bytes, s->granularity, 0, 0);
    if (r != CUDA_SUCCESS) {
      return fail(err, "cuMemAddressReserve(" + std::to_string(bytes) + " bytes) on device " +
                           std::to_string(device) + " failed: " + d_.describe(r));
    }
    return reinterpret_cast<void*>(p);
  }

  bool map(int device, void* base, size_t offset, size_t bytes, std::string* err) override {
    DeviceState* s = state(device, err);
    if (s == nullptr) return false;
    if (!s->vmm) return failb(err, "device " + std::to_string(device) + " does not support CUDA virtual memory management");
    const size_t gran = s->granularity;
    if (bytes == 0 || offset % gran != 0 || bytes % gran != 0) {
      return failb(err, "map(offset=" + std::to_string(offset) + ", bytes=" + std::to_string(bytes) +
                            ") is not granule aligned (" + std::to_string(gran) + ")");
    }
    CtxGuard g(d_, s->ctx);
    RelaxedCapture rc(d_);
    CUmemAllocationProp prop = alloc_prop(s->dev);
    const CUdeviceptr start = reinterpret_cast<CUdeviceptr>(base) + offset;
    size_t done = 0;
    CUresult r = CUDA_SUCCESS;
    const char* what = "";
    for (; done < bytes; done += gran) {
      CUmemGenericAllocationHandle h = 0;
      r = d_.mem_create(&h, gran, &prop, 0);
      if (r != CUDA_SUCCESS) {
        what = "cuMemCreate";
        break;
      }
      r = d_.mem_map(start + done, gran, 0, h, 0);
      d_.mem_release(h);  // the mapping holds the memory; unmap frees it
      if (r != CUDA_SUCCESS) {
        what = "cuMemMap";
        break;
      }
    }
    if (r == CUDA_SUCCESS) {
      CUmemAccessDesc desc;
      std::memset(&desc, 0, sizeof(desc));
      desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      desc.location.id = s->dev;
      desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      r = d_.mem_set_access(start, bytes, &desc, 1);
      if (r == CUDA_SUCCESS) return true;
      what = "cuMemSetAccess";
    }
    for (size_t off = 0; off < done; off += gran) d_.mem_unmap(start + off, gran);  // roll back
    return failb(err, std::string(what) + " while mapping " + std::to_string(bytes) + " bytes at arena offset " +
                          std::to_string(offset) + " on device " + std::to_string(device) + " failed: " +
                          d_.describe(r));
  }

  void unmap(int device, void* base, size_t offset, size_t bytes) override {
    DeviceState* s = state(device, nullptr);
    if (s == nullptr || !s->vmm) return;
    CtxGuard g(d_, s->ctx);
    RelaxedCapture rc(d_);
    const size_t gran = s->granularity;
    const CUdeviceptr start = reinterpret_cast<CUdeviceptr>(base) + offset;
    // Each granule is its own mapping (see map): unmap granule by granule.
    for (size_t off = 0; off + gran <= bytes; off += gran) d_.mem_unmap(start + off, gran);
  }

  void release(int device, void* base, size_t bytes) override {
    DeviceState* s = state(device, nullptr);
    if (s == nullptr || base == nullptr) return;
    CtxGuard g(d_, s->ctx);
    RelaxedCapture rc(d_);
    d_.mem_address_free(reinterpret_cast<CUdeviceptr>(base), bytes);
  }

  Event record_event(int device, Stream stream) override {
    DeviceState* s = state(device, nullptr);
    if (s == nullptr) return nullptr;
    CUstream cs = reinterpret_cast<CUstream>(stream);
    CtxGuard g(d_, s->ctx);
    if (d_.stream_is_capturing != nullptr) {
      CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
      if (d_.stream_is_capturing(cs, &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE) return nullptr;
    }
    EventRec* e = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!s->free_events.empty()) {
        e = s->free_events.back();
        s->free_events.pop_back();
      }
    }
    if (e == nullptr) {
      e = new (std::nothrow) EventRec();
      if (e == nullptr) return nullptr;
      e->device = device;
      if (d_.event_create(&e->ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) {
        delete e;
        return nullptr;
      }
    }
    if (d_.event_record(e->ev, cs) != CUDA_SUCCESS) {
      give_back(e);
      return nullptr;
    }
    return static_cast<Event>(e);
  }

  bool event_done(Event event) override {
    if (event == nullptr) return true;
    EventRec* e = static_cast<EventRec*>(event);
    CUresult r = d_.event_query(e->ev);
    if (r == CUDA_ERROR_NOT_READY) return false;
    // CUDA_SUCCESS, or an error (a dead context never completes anything): report done so the block is
    // not held forever; the next driver call on that device reports the error.
    return true;
  }

  void destroy_event(Event event) override {
    if (event == nullptr) return;
    give_back(static_cast<EventRec*>(event));
  }

  bool mem_info(int device, size_t* free_bytes, size_t* total_bytes) override {
    DeviceState* s = state(device, nullptr);
    if (s == nullptr) return false;
    CtxGuard g(d_, s->ctx);
    if (!g.ok()) return false;
    size_t f = 0, t = 0;
    if (d_.mem_get_info(&f, &t) != CUDA_SUCCESS) return false;
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return true;
  }

 private:
  static void* fail(std::string* err, const std::string& msg) {
    if (err) *err = msg;
    return nullptr;
  }
  static bool failb(std::string* err, const std::string& msg) {
    if (err) *err = msg;
    return false;
  }

  static CUmemAllocationProp alloc_prop(CUdevice dev) {
    CUmemAllocationProp prop;
    std::memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    return prop;
  }

  void give_back(EventRec* e) {
    DeviceState* s = (e->device >= 0 && static_cast<size_t>(e->device) < devices_.size())
                         ? &devices_[static_cast<size_t>(e->device)]
                         : nullptr;
    if (s == nullptr) return;
    std::lock_guard<std::mutex> lk(mu_);
    s->free_events.push_back(e);
  }

  // The device's state, retaining its primary context on first use. nullptr + err if unusable.
  DeviceState* state(int device, std::string* err) {
    if (device < 0 || static_cast<size_t>(device) >= devices_.size()) {
      if (err) *err = "device " + std::to_string(device) + " out of range (" + std::to_string(devices_.size()) +
                      " CUDA devices)";
      return nullptr;
    }
    DeviceState& s = devices_[static_cast<size_t>(device)];
    std::lock_guard<std::mutex> lk(mu_);
    if (s.ready) return &s;
    if (!s.init_error.empty()) {
      if (err) *err = s.init_error;
      return nullptr;
    }
    CUresult r = d_.device_get(&s.dev, device);
    if (r == CUDA_SUCCESS) r = d_.primary_ctx_retain(&s.ctx, s.dev);
    if (r != CUDA_SUCCESS) {
      s.init_error = "cannot retain the primary context of CUDA device " + std::to_string(device) + ": " + d_.describe(r);
      if (err) *err = s.init_error;
      return nullptr;
    }
    int vmm = 0;
    if (d_.device_get_attribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, s.dev) == CUDA_SUCCESS &&
        vmm != 0) {
      CUmemAllocationProp prop = alloc_prop(s.dev);
      size_t g = 0;
      if (d_.mem_get_granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) == CUDA_SUCCESS && g > 0) {
        s.granularity = g;
        s.vmm = true;
      }
    }
    s.ready = true;
    return &s;
  }

  Driver d_;
  std::mutex mu_;
  std::vector<DeviceState> devices_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(std::string* err) {
  Driver d;
  d.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (d.lib == nullptr) {
    const char* e = dlerror();
    if (err) *err = std::string("CUDA driver not available: dlopen(libcuda.so.1) failed: ") + (e ? e : "unknown");
    return nullptr;
  }
  d.get_proc_v2 = reinterpret_cast<PFN_GetProcV2>(dlsym(d.lib, "cuGetProcAddress_v2"));
  if (d.get_proc_v2 == nullptr) d.get_proc_v1 = reinterpret_cast<PFN_GetProcV1>(dlsym(d.lib, "cuGetProcAddress"));
  if (d.get_proc_v2 == nullptr && d.get_proc_v1 == nullptr) {
    if (err) *err = "CUDA driver too old: libcuda.so.1 has no cuGetProcAddress (needs a CUDA 11.3+ driver)";
    dlclose(d.lib);
    return nullptr;
  }
  std::string e;
  bool ok = d.get("cuGetErrorString", &d.get_error_string, &e) && d.get("cuGetErrorName", &d.get_error_name, &e) &&
            d.get("cuInit", &d.init, &e) && d.get("cuDriverGetVersion", &d.driver_get_version, &e) &&
            d.get("cuDeviceGetCount", &d.device_get_count, &e) && d.get("cuDeviceGet", &d.device_get, &e) &&
            d.get("cuDeviceGetAttribute", &d.device_get_attribute, &e) &&
            d.get("cuDevicePrimaryCtxRetain", &d.primary_ctx_retain, &e) &&
            d.get("cuCtxGetCurrent", &d.ctx_get_current, &e) && d.get("cuCtxSetCurrent", &d.ctx_set_current, &e) &&
            d.get("cuMemAlloc", &d.mem_alloc, &e) && d.get("cuMemFree", &d.mem_free, &e) &&
            d.get("cuMemGetInfo", &d.mem_get_info, &e) &&
            d.get("cuMemAddressReserve", &d.mem_address_reserve, &e) &&
            d.get("cuMemAddressFree", &d.mem_address_free, &e) && d.get("cuMemCreate", &d.mem_create, &e) &&
            d.get("cuMemRelease", &d.mem_release, &e) && d.get("cuMemMap", &d.mem_map, &e) &&
            d.get("cuMemUnmap", &d.mem_unmap, &e) && d.get("cuMemSetAccess", &d.mem_set_access, &e) &&
            d.get("cuMemGetAllocationGranularity", &d.mem_get_granularity, &e) &&
            d.get("cuEventCreate", &d.event_create, &e) && d.get("cuEventRecord", &d.event_record, &e) &&
            d.get("cuEventQuery", &d.event_query, &e) && d.get("cuEventDestroy", &d.event_destroy, &e);
  if (!ok) {
    if (err) *err = e;
    dlclose(d.lib);
    return nullptr;
  }
  // Optional (capture awareness); absent only on very old drivers.
  d.get("cuStreamIsCapturing", &d.stream_is_capturing, nullptr);
  d.get("cuThreadExchangeStreamCaptureMode", &d.exchange_capture_mode, nullptr);

  CUresult r = d.init(0);
  if (r != CUDA_SUCCESS) {
    if (err) *err = "cuInit failed: " + d.describe(r);
    return nullptr;  // keep the library loaded: the driver may hold state after a failed cuInit
  }
  int count = 0;
  r = d.device_get_count(&count);
  if (r != CUDA_SUCCESS || count <= 0) {
    if (err) *err = r != CUDA_SUCCESS ? "cuDeviceGetCount failed: " + d.describe(r) : std::string("no CUDA device found");
    return nullptr;
  }
  std::unique_ptr<Backend> b(new (std::nothrow) CudaBackend(d, count));
  if (!b && err) *err = "out of host memory creating the CUDA backend";
  return b;
}

}  // namespace hybrid_alloc
