// The NCCL half of the shim, in its own translation unit: ProcessGroupNCCL.hpp pulls in ATen,
// the CUDA runtime headers and nccl.h. build.rs compiles this file (with USE_C10D_NCCL defined
// for both files) only when libtorch_cuda.so, nccl.h and the CUDA toolkit headers are found.

#include <chrono>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

c10::intrusive_ptr<c10d::Backend> sd_make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int rank,
    int world_size,
    std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
}
