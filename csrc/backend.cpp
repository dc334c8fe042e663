// Backend selection (HYBRID_ALLOC_BACKEND=auto|cuda|host) and the fallback used when the CUDA backend is
// not compiled in (no csrc/backend_cuda.cpp or no cuda.h at configure time).
#include <string>

#include "backend.h"

namespace hybrid_alloc {

#ifndef HYBRID_ALLOC_HAVE_CUDA_BACKEND
std::unique_ptr<Backend> make_cuda_backend(std::string* err) {
  *err = "the CUDA backend is not compiled into this build of libhybrid_alloc (no csrc/backend_cuda.cpp or "
         "no cuda.h at configure time)";
  return nullptr;
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& choice, std::string* err) {
  if (choice == "host") return make_host_backend();
  if (choice == "cuda") {
    std::string why;
    auto b = make_cuda_backend(&why);
    if (!b) *err = "HYBRID_ALLOC_BACKEND=cuda: " + why;
    return b;
  }
  if (choice == "auto" || choice.empty()) {
    std::string why;
    auto b = make_cuda_backend(&why);
    if (b) return b;
    return make_host_backend();
  }
  *err = "bad backend '" + choice + "': accepted values are auto, cuda, host";
  return nullptr;
}

}  // namespace hybrid_alloc
