// C API of the sft-dist shim over libtorch's c10d (TCPStore, ProcessGroupGloo, ProcessGroupNCCL).
//
// Rules every function follows:
// * No C++ exception crosses this boundary: each function catches everything and returns an
//   `SdError*` (NULL on success) that the caller owns and frees with `sd_error_free`.
// * Tensors are passed as `at::Tensor*` (tch's `C_tensor*`); the shim copies the handle (a
//   reference count), never takes ownership of the pointer and never frees it.
// * `SdGroup*` is owned by the caller and freed with `sd_group_free`.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
namespace at {
class Tensor;
}
typedef at::Tensor sd_tensor;
extern "C" {
#else
typedef void sd_tensor;
#endif

// Error kinds; the numbers are mirrored by `ErrorKind` in src/ffi.rs.
enum {
  SD_CONFIG = 1,
  SD_RENDEZVOUS = 2,
  SD_TIMEOUT = 3,
  SD_PEER_LOST = 4,
  SD_BACKEND = 5,
  SD_UNSUPPORTED = 6,
};

// Backends; mirrored by `Backend` in src/ffi.rs.
enum {
  SD_GLOO = 0,
  SD_NCCL = 1,
};

typedef struct SdError SdError;
typedef struct SdGroup SdGroup;

int32_t sd_error_kind(const SdError* err);
// NUL-terminated, valid until `sd_error_free`.
const char* sd_error_message(const SdError* err);
void sd_error_free(SdError* err);

// 1 when the NCCL part was compiled in.
int32_t sd_nccl_compiled(void);

// Rendezvous through a TCPStore at host:port (rank 0 hosts it) and create the backend's process
// group. `timeout_ms` bounds the store connection, the rendezvous and every collective.
SdError* sd_group_new(
    const char* host,
    uint16_t port,
    int32_t rank,
    int32_t world_size,
    int32_t backend,
    int64_t timeout_ms,
    SdGroup** out);
void sd_group_free(SdGroup* group);

// In-place sum over all ranks of one dense contiguous tensor.
SdError* sd_all_reduce_sum(SdGroup* group, sd_tensor* tensor);
// In-place broadcast of one dense contiguous tensor from `root`.
SdError* sd_broadcast(SdGroup* group, sd_tensor* tensor, int32_t root);
// output (n elements) = this rank's slice of the sum of every rank's input (world_size * n).
SdError* sd_reduce_scatter_sum(SdGroup* group, sd_tensor* output, const sd_tensor* input);
// output (world_size * n elements) = every rank's input (n elements), in rank order.
SdError* sd_all_gather(SdGroup* group, sd_tensor* output, const sd_tensor* input);
SdError* sd_barrier(SdGroup* group);

// libtorch's fused multi-tensor AdamW (`at::_fused_adamw_`, what torch.optim.AdamW(fused=True)
// runs) over `n` parameters, in place: params, exp_avgs and exp_avg_sqs are updated; each
// `steps[i]` (an f32 scalar tensor on the parameter's device) holds the 1-based number of the
// step being taken (the bias correction uses it; torch.optim increments it first). All
// tensors f32 and on one device (CUDA or CPU); no AMSGrad, no maximize, no grad scaling.
SdError* sd_fused_adamw(
    sd_tensor* const* params,
    sd_tensor* const* grads,
    sd_tensor* const* exp_avgs,
    sd_tensor* const* exp_avg_sqs,
    sd_tensor* const* steps,
    size_t n,
    double lr,
    double beta1,
    double beta2,
    double weight_decay,
    double eps);

#ifdef __cplusplus
}
#endif
