//! `sft-dist`: multi-process data parallelism for tch on libtorch's own distributed engine.
//!
//! # What this is
//!
//! libtorch ships c10d, the C++ engine under `torch.distributed`: a rendezvous key-value store
//! ([`c10d::TCPStore`]) and process groups that run collectives, `ProcessGroupGloo` (CPU, TCP;
//! in `libtorch_cpu.so`) and `ProcessGroupNCCL` (CUDA; in `libtorch_cuda.so`). tch has no
//! bindings for it, so this crate reaches it through a small C++ shim (`csrc/c10d_shim.cpp`)
//! and exposes a safe [`ProcessGroup`]: rank 0 hosts the store, every rank connects, then the
//! backend's group is created, and collectives ([`ProcessGroup::all_reduce_sum`],
//! [`broadcast`](ProcessGroup::broadcast), [`reduce_scatter_sum`](ProcessGroup::reduce_scatter_sum),
//! [`all_gather`](ProcessGroup::all_gather), [`barrier`](ProcessGroup::barrier)) run in place and
//! block until done. No collective is implemented here: c10d does the work, exactly as for
//! PyTorch, so the numbers and the failure behaviour are PyTorch's.
//!
//! [`Launch::from_env`] reads torchrun's or Slurm's variables; [`Launch::group_config`] turns
//! them into a [`GroupConfig`].
//!
//! # Failures are bounded
//!
//! One timeout ([`GroupConfig::timeout`]) bounds the store connection, the rendezvous and every
//! collective (Gloo's own collective timeout and the `Work::wait` of each call):
//!
//! * a peer that dies (even by SIGKILL) closes its sockets, and the others' collectives fail at
//!   once with [`ErrorKind::PeerLost`] (Gloo's "Connection closed by peer");
//! * a peer that is alive but does not take part makes them fail with [`ErrorKind::Timeout`]
//!   after the timeout (c10d's "Operation timed out!");
//! * a rank that never shows up fails [`ProcessGroup::new`] with [`ErrorKind::Rendezvous`]:
//!   rank 0 after about the timeout plus one second (c10d's "Timed out after … waiting for
//!   clients. 1/2 clients joined."; it polls once a second), the other ranks after the timeout
//!   when rank 0's store never listens (a plain TCP probe runs before c10d's own connect,
//!   whose backoff could overshoot its deadline by a whole retry interval).
//!
//! After a collective fails the group is unusable (c10d's state is unknown), so every later
//! call returns the first error again; drop it and exit. The kinds come from the C++ message
//! text (listed in `csrc/c10d_shim.cpp`), which is kept verbatim in [`Error::message`].
//!
//! # Why a shim, and the unsafe boundary
//!
//! c10d is C++ (classes, `intrusive_ptr`, exceptions), so Rust cannot call it directly. The
//! shim exposes a handful of `extern "C"` functions (`csrc/c10d_shim.h`): each catches every C++
//! exception and returns an error object (kind + message, freed through the shim), so no
//! exception ever unwinds into Rust. Tensors cross as tch's `at::Tensor*` (what
//! `tch::Tensor::as_mut_ptr` returns; torch-sys's `C_tensor` is `torch::Tensor`), and the shim
//! only copies the handle. All `unsafe` of this crate is in its private `ffi` module, one
//! `// SAFETY:` comment per block; the workspace denies `unsafe_code` everywhere else.
//!
//! # Building
//!
//! `build.rs` finds libtorch as torch-sys does (`LIBTORCH`, `LIBTORCH_USE_PYTORCH`, …) and
//! compiles the shim with `cc` (`-std=c++17`), with the same `_GLIBCXX_USE_CXX11_ABI` value that
//! torch-sys uses (from Python's torch, else `LIBTORCH_CXX11_ABI`, default 1): a mismatch would
//! make the shim's `std::string`s incompatible with libtorch's, and link errors or crashes
//! follow. Only the c10d headers needed are included (not `torch/torch.h`). The PyPI wheel omits
//! the Gloo headers that `ProcessGroupGloo.hpp` includes; the few needed are vendored, unchanged,
//! in `csrc/third_party/gloo` (BSD, from the Gloo revision that libtorch 2.11 was built with).
//!
//! The NCCL half lives in its own file (`csrc/c10d_nccl.cpp`, compiled with `USE_C10D_NCCL`)
//! because `ProcessGroupNCCL.hpp` pulls in ATen, the CUDA runtime headers and `nccl.h`. It is
//! compiled and linked (against `libtorch_cuda`, kept with `-Wl,--no-as-needed`) only when
//! `libtorch_cuda.so`, `nccl.h` (the wheel's `nvidia/nccl/include`, `NCCL_INCLUDE_DIR` or
//! `NCCL_HOME`) and a CUDA toolkit's headers (`SFT_DIST_CUDA_INCLUDE`, `CUDA_HOME`,
//! `/usr/local/cuda`, or the wheel's `nvidia/cu13/include`) are all found. The wheel's CUDA
//! runtime headers alone are incomplete (no `crt/host_config.h`, no CCCL `nv/target`); the
//! PyPI packages `nvidia-cuda-crt` and `nvidia-cuda-cccl` of the same CUDA version (13.0 for
//! this libtorch) complete that folder. Otherwise the build prints a cargo warning and
//! [`Backend::Nccl`] returns [`ErrorKind::Unsupported`] at run time; see
//! [`Backend::is_compiled`]. On a machine without a GPU a compiled-in NCCL backend also
//! reports [`ErrorKind::Unsupported`] (c10d's "no GPUs found").
//!
//! [`c10d::TCPStore`]: https://pytorch.org/docs/stable/distributed.html#torch.distributed.TCPStore
#![deny(missing_docs)]

mod error;
mod ffi;
mod group;
mod launch;
mod spawn;

pub use error::{Error, ErrorKind, Result};
pub use group::{GroupConfig, ProcessGroup};
pub use launch::Launch;
pub use spawn::{run_local_ranks, GRACE};

/// libtorch's fused multi-tensor AdamW, `at::_fused_adamw_` (what `torch.optim.AdamW(fused=True)`
/// runs; tch does not bind it), reached through the same shim: updates `params`, `exp_avgs`
/// and `exp_avg_sqs` in place with one weight decay for the whole list; each of `steps` (f32
/// scalar tensors on the parameters' device) holds the 1-based number of the step being taken,
/// for the bias correction (the kernel does not increment it). All tensors f32, on one device
/// (CUDA, or the CPU kernel libtorch also has).
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &mut [tch::Tensor],
    grads: &[tch::Tensor],
    exp_avgs: &mut [tch::Tensor],
    exp_avg_sqs: &mut [tch::Tensor],
    steps: &mut [tch::Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    tch::no_grad(|| {
        ffi::fused_adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr,
            betas,
            weight_decay,
            eps,
        )
    })
}

/// Which c10d backend runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `ProcessGroupGloo`: CPU tensors over TCP.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors over NVLink / InfiniBand / TCP.
    Nccl,
}

impl Backend {
    /// NCCL for CUDA devices, Gloo for everything else (CPU).
    pub fn for_device(device: tch::Device) -> Self {
        match device {
            tch::Device::Cuda(_) => Self::Nccl,
            _ => Self::Gloo,
        }
    }

    /// Whether this build of the shim contains the backend (Gloo always; NCCL when its build
    /// found `libtorch_cuda.so`, `nccl.h` and the CUDA headers).
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Gloo => true,
            Self::Nccl => ffi::nccl_compiled(),
        }
    }

    /// Whether tensors on `device` can take part in this backend's collectives.
    pub(crate) fn accepts(self, device: tch::Device) -> bool {
        match self {
            Self::Gloo => device == tch::Device::Cpu,
            Self::Nccl => matches!(device, tch::Device::Cuda(_)),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        })
    }
}
