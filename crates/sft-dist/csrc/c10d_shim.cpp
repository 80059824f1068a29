// sft-dist's shim over libtorch's c10d: a C API (c10d_shim.h) that Rust calls through FFI.
//
// Only the c10d headers that are needed are included (not torch/torch.h) to keep the compile
// short. ProcessGroupGloo.hpp includes a few Gloo headers that the PyPI wheel does not ship; the
// ones needed are vendored under third_party/gloo (see the note there).
//
// Every extern "C" function runs its body through `guarded`, which catches every C++ exception
// and turns it into an SdError; nothing unwinds into Rust.

#include "c10d_shim.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ops/_fused_adamw.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#ifdef USE_C10D_NCCL
// Defined in c10d_nccl.cpp, which is compiled only when NCCL and CUDA headers were found.
c10::intrusive_ptr<c10d::Backend> sd_make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int rank,
    int world_size,
    std::chrono::milliseconds timeout);
#endif

struct SdError {
  int32_t kind;
  std::string message;
};

struct SdGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int32_t backend_kind;
};

namespace {

// Where an exception was raised: while forming the group, or in a collective on a formed group.
enum class Phase { Init, Collective };

// A failure detected by the shim itself, with its kind already known.
struct ShimError : std::runtime_error {
  int32_t kind;
  ShimError(int32_t k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return s;
}

bool contains_any(const std::string& haystack, std::initializer_list<const char*> needles) {
  for (const char* n : needles) {
    if (haystack.find(n) != std::string::npos) {
      return true;
    }
  }
  return false;
}

bool is_timeout_message(const std::string& m) {
  return contains_any(m, {"timed out", "timeout", "deadline exceeded"});
}

bool is_peer_lost_message(const std::string& m) {
  return contains_any(
      m,
      {"connection closed by peer",
       "connection reset",
       "broken pipe",
       "connection refused",
       "end of file",
       "socket closed"});
}

// Kind of a failure, from the C++ message (lower-cased). c10d's and Gloo's messages are the only
// signal: Gloo raises its own exception types from inside libtorch and c10d wraps some of them,
// so the text is what reliably survives. The strings were checked by crates/sft-dist/tests.
int32_t classify(Phase phase, const std::string& lowered) {
  // ProcessGroupNCCL on a machine without a GPU.
  if (contains_any(lowered, {"no gpus found", "only supported with gpus"})) {
    return SD_UNSUPPORTED;
  }
  if (phase == Phase::Init) {
    return SD_RENDEZVOUS;
  }
  if (is_timeout_message(lowered)) {
    return SD_TIMEOUT;
  }
  if (is_peer_lost_message(lowered)) {
    return SD_PEER_LOST;
  }
  return SD_BACKEND;
}

// Returned when allocating an error fails; built at load time, never freed.
SdError g_oom_error{SD_BACKEND, "out of memory while reporting a c10d error"};

SdError* oom_error() {
  return &g_oom_error;
}

SdError* make_error(int32_t kind, std::string message) {
  try {
    return new SdError{kind, std::move(message)};
  } catch (...) {
    return oom_error();
  }
}

template <typename F>
SdError* guarded(Phase phase, F&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const ShimError& e) {
    return make_error(e.kind, e.what());
  } catch (const c10::Error& e) {
    std::string msg = e.what_without_backtrace();
    const int32_t kind = classify(phase, lower(msg)); // before msg is moved from
    return make_error(kind, std::move(msg));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    const int32_t kind = classify(phase, lower(msg)); // before msg is moved from
    return make_error(kind, std::move(msg));
  } catch (...) {
    return make_error(SD_BACKEND, "unknown C++ exception in c10d");
  }
}

SdGroup& checked(SdGroup* group) {
  if (group == nullptr || !group->backend) {
    throw ShimError(SD_CONFIG, "null or closed process group");
  }
  return *group;
}

at::Tensor& checked(sd_tensor* t, const char* what) {
  if (t == nullptr) {
    throw ShimError(SD_CONFIG, std::string("null tensor pointer for ") + what);
  }
  return *t;
}

void wait(const SdGroup& g, const c10::intrusive_ptr<c10d::Work>& work) {
  // Throws the collective's own error, or c10d's "timed out" when it does not finish in time.
  work->wait(g.timeout);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

} // namespace

extern "C" {

int32_t sd_error_kind(const SdError* err) {
  return err == nullptr ? 0 : err->kind;
}

const char* sd_error_message(const SdError* err) {
  return err == nullptr ? "" : err->message.c_str();
}

void sd_error_free(SdError* err) {
  if (err != nullptr && err != oom_error()) {
    delete err;
  }
}

int32_t sd_nccl_compiled(void) {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

SdError* sd_group_new(
    const char* host,
    uint16_t port,
    int32_t rank,
    int32_t world_size,
    int32_t backend,
    int64_t timeout_ms,
    SdGroup** out) {
  SdError* arg_error = guarded(Phase::Init, [&] {
    if (out == nullptr || host == nullptr) {
      throw ShimError(SD_CONFIG, "null argument to sd_group_new");
    }
    *out = nullptr;
    if (world_size < 1 || rank < 0 || rank >= world_size) {
      throw ShimError(
          SD_CONFIG,
          "rank " + std::to_string(rank) + " is not in a world of size " +
              std::to_string(world_size));
    }
    if (timeout_ms <= 0) {
      throw ShimError(SD_CONFIG, "the timeout must be positive");
    }
    if (backend == SD_NCCL) {
#ifndef USE_C10D_NCCL
      throw ShimError(
          SD_UNSUPPORTED,
          "the NCCL backend was not compiled into sft-dist (its build script found no "
          "libtorch_cuda.so, nccl.h or CUDA toolkit headers; see the cargo warning of the "
          "sft-dist build)");
#endif
    } else if (backend != SD_GLOO) {
      throw ShimError(SD_CONFIG, "unknown backend " + std::to_string(backend));
    }
  });
  if (arg_error != nullptr) {
    return arg_error;
  }
  return guarded(Phase::Init, [&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    const std::string hostname(host);

    c10d::TCPStoreOptions store_opts;
    store_opts.port = port;
    store_opts.isServer = rank == 0;
    store_opts.numWorkers = static_cast<std::size_t>(world_size);
    // Rank 0 waits (up to the timeout) until every rank has connected to its store.
    store_opts.waitWorkers = true;
    store_opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(hostname, store_opts);

    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == SD_GLOO) {
      c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> opts;
      if (is_loopback(hostname)) {
        // Every rank on this machine: bind Gloo's TCP device to the loopback address too.
        opts = c10d::ProcessGroupGloo::Options::create(timeout);
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
      } else {
        // Several machines: the interfaces named by GLOO_SOCKET_IFNAME, else the address this
        // machine's hostname resolves to (falling back to loopback), as torch.distributed does.
        opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      }
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
    } else {
#ifdef USE_C10D_NCCL
      pg = sd_make_nccl_backend(store, rank, world_size, timeout);
#endif
    }
    *out = new SdGroup{std::move(store), std::move(pg), timeout, backend};
  });
}

void sd_group_free(SdGroup* group) {
  if (group == nullptr) {
    return;
  }
  try {
    if (group->backend) {
      group->backend->shutdown();
    }
  } catch (...) {
    // Shutting down a group whose peers are gone may throw; the resources are released below.
  }
  try {
    delete group;
  } catch (...) {
  }
}

SdError* sd_all_reduce_sum(SdGroup* group, sd_tensor* tensor) {
  return guarded(Phase::Collective, [&] {
    SdGroup& g = checked(group);
    std::vector<at::Tensor> tensors{checked(tensor, "all_reduce_sum")};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
    opts.timeout = g.timeout;
    wait(g, g.backend->allreduce(tensors, opts));
  });
}

SdError* sd_broadcast(SdGroup* group, sd_tensor* tensor, int32_t root) {
  return guarded(Phase::Collective, [&] {
    SdGroup& g = checked(group);
    std::vector<at::Tensor> tensors{checked(tensor, "broadcast")};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = g.timeout;
    wait(g, g.backend->broadcast(tensors, opts));
  });
}

SdError* sd_reduce_scatter_sum(SdGroup* group, sd_tensor* output, const sd_tensor* input) {
  return guarded(Phase::Collective, [&] {
    SdGroup& g = checked(group);
    at::Tensor out = checked(output, "reduce_scatter_sum output");
    at::Tensor in = checked(const_cast<sd_tensor*>(input), "reduce_scatter_sum input");
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
    opts.timeout = g.timeout;
    wait(g, g.backend->_reduce_scatter_base(out, in, opts));
  });
}

SdError* sd_all_gather(SdGroup* group, sd_tensor* output, const sd_tensor* input) {
  return guarded(Phase::Collective, [&] {
    SdGroup& g = checked(group);
    at::Tensor out = checked(output, "all_gather output");
    at::Tensor in = checked(const_cast<sd_tensor*>(input), "all_gather input");
    c10d::AllgatherOptions opts;
    opts.timeout = g.timeout;
    wait(g, g.backend->_allgather_base(out, in, opts));
  });
}

SdError* sd_barrier(SdGroup* group) {
  return guarded(Phase::Collective, [&] {
    SdGroup& g = checked(group);
    c10d::BarrierOptions opts;
    opts.timeout = g.timeout;
    wait(g, g.backend->barrier(opts));
  });
}

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
    double eps) {
  return guarded(Phase::Init, [&] {
    std::vector<at::Tensor> p, g, m, v, t;
    for (size_t i = 0; i < n; ++i) {
      p.push_back(checked(params[i], "param"));
      g.push_back(checked(grads[i], "grad"));
      m.push_back(checked(exp_avgs[i], "exp_avg"));
      v.push_back(checked(exp_avg_sqs[i], "exp_avg_sq"));
      t.push_back(checked(steps[i], "step"));
    }
    at::_fused_adamw_(
        p, g, m, v, /*max_exp_avg_sqs=*/{}, t, lr, beta1, beta2, weight_decay, eps,
        /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt,
        /*found_inf=*/std::nullopt);
  });
}

} // extern "C"
