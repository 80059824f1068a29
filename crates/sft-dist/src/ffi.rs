//! The FFI boundary: the shim's C functions (`csrc/c10d_shim.h`) and the only `unsafe` code of
//! the crate. Everything above this module is safe Rust.
//!
//! Invariants the rest of the crate relies on:
//! * [`RawGroup`] owns one live `SdGroup*` (non-null) and frees it exactly once, on drop.
//! * Every shim function returns `NULL` or an `SdError*` it allocated; [`take_error`] copies it
//!   into an [`Error`] and frees it at once, so no error pointer outlives the call.
//! * Tensor pointers come from `tch::Tensor::as_mut_ptr` / `as_ptr` on tensors borrowed for the
//!   duration of the call; the shim copies the `at::Tensor` handle (a reference count) and keeps
//!   nothing after returning, because each collective waits for its work to finish.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::os::raw::c_void;
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::Backend;

#[repr(C)]
struct SdError {
    _private: [u8; 0],
}

#[repr(C)]
struct SdGroup {
    _private: [u8; 0],
}

extern "C" {
    fn sd_error_kind(err: *const SdError) -> i32;
    fn sd_error_message(err: *const SdError) -> *const c_char;
    fn sd_error_free(err: *mut SdError);
    fn sd_nccl_compiled() -> i32;
    fn sd_group_new(
        host: *const c_char,
        port: u16,
        rank: i32,
        world_size: i32,
        backend: i32,
        timeout_ms: i64,
        out: *mut *mut SdGroup,
    ) -> *mut SdError;
    fn sd_group_free(group: *mut SdGroup);
    fn sd_all_reduce_sum(group: *mut SdGroup, tensor: *mut c_void) -> *mut SdError;
    fn sd_broadcast(group: *mut SdGroup, tensor: *mut c_void, root: i32) -> *mut SdError;
    fn sd_reduce_scatter_sum(
        group: *mut SdGroup,
        output: *mut c_void,
        input: *const c_void,
    ) -> *mut SdError;
    fn sd_all_gather(
        group: *mut SdGroup,
        output: *mut c_void,
        input: *const c_void,
    ) -> *mut SdError;
    fn sd_barrier(group: *mut SdGroup) -> *mut SdError;
    fn sd_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut SdError;
}

const SD_CONFIG: i32 = 1;
const SD_RENDEZVOUS: i32 = 2;
const SD_TIMEOUT: i32 = 3;
const SD_PEER_LOST: i32 = 4;
const SD_BACKEND: i32 = 5;
const SD_UNSUPPORTED: i32 = 6;

/// Turn the shim's result into a Rust result, freeing the C error.
fn take_error(err: *mut SdError) -> Result<(), Error> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a non-null SdError* just returned by a shim function and not yet freed;
    // the message is a NUL-terminated string owned by it, copied before `sd_error_free`, which
    // is called exactly once here.
    let (kind, message) = unsafe {
        let kind = sd_error_kind(err);
        let message = CStr::from_ptr(sd_error_message(err))
            .to_string_lossy()
            .into_owned();
        sd_error_free(err);
        (kind, message)
    };
    let kind = match kind {
        SD_CONFIG => ErrorKind::Config,
        SD_RENDEZVOUS => ErrorKind::Rendezvous,
        SD_TIMEOUT => ErrorKind::Timeout,
        SD_PEER_LOST => ErrorKind::PeerLost,
        SD_UNSUPPORTED => ErrorKind::Unsupported,
        SD_BACKEND => ErrorKind::Backend,
        _ => ErrorKind::Backend,
    };
    Err(Error::new(kind, message))
}

/// Whether the shim was built with its NCCL half.
pub(crate) fn nccl_compiled() -> bool {
    // SAFETY: a pure query of a compile-time constant; no arguments, no state.
    unsafe { sd_nccl_compiled() != 0 }
}

/// An owned c10d process group (its TCPStore and backend), freed on drop.
pub(crate) struct RawGroup(NonNull<SdGroup>);

// SAFETY: the SdGroup holds c10d objects (TCPStore, ProcessGroupGloo/NCCL) that may be used and
// destroyed from any thread; what they do not support is concurrent calls, which `RawGroup`
// prevents by not being Sync (every use goes through `&self` of a !Sync owner).
unsafe impl Send for RawGroup {}

fn c_int(value: usize, what: &str) -> Result<i32, Error> {
    i32::try_from(value)
        .map_err(|_| Error::new(ErrorKind::Config, format!("{what} {value} is too large")))
}

impl RawGroup {
    /// Rendezvous and create the backend (blocking, up to `timeout`).
    pub(crate) fn new(
        host: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        backend: Backend,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let host = CString::new(host).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                "master address contains a NUL byte".to_owned(),
            )
        })?;
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let backend = match backend {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        };
        let (rank, world_size) = (c_int(rank, "rank")?, c_int(world_size, "world size")?);
        let mut out: *mut SdGroup = std::ptr::null_mut();
        // SAFETY: `host` is a valid NUL-terminated string for the call; `out` is a valid place
        // for the shim to write the new group's pointer (it writes NULL or a live SdGroup*).
        let err = unsafe {
            sd_group_new(
                host.as_ptr(),
                port,
                rank,
                world_size,
                backend,
                timeout_ms,
                &mut out,
            )
        };
        take_error(err)?;
        NonNull::new(out).map(RawGroup).ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                "the c10d shim returned no process group".to_owned(),
            )
        })
    }

    fn ptr(&self) -> *mut SdGroup {
        self.0.as_ptr()
    }

    /// In-place sum of one dense contiguous tensor.
    pub(crate) fn all_reduce_sum(&self, tensor: &mut tch::Tensor) -> Result<(), Error> {
        // SAFETY: the group is live (owned by self); the tensor pointer is tch's live
        // `at::Tensor*`, exclusively borrowed for the call; the shim waits for the collective
        // before returning and keeps no reference.
        take_error(unsafe { sd_all_reduce_sum(self.ptr(), tensor.as_mut_ptr().cast()) })
    }

    /// In-place broadcast of one dense contiguous tensor from `root`.
    pub(crate) fn broadcast(&self, tensor: &mut tch::Tensor, root: usize) -> Result<(), Error> {
        let root = c_int(root, "root rank")?;
        // SAFETY: as in `all_reduce_sum`.
        take_error(unsafe { sd_broadcast(self.ptr(), tensor.as_mut_ptr().cast(), root) })
    }

    /// `output` = this rank's slice of the sum of all `input`s.
    pub(crate) fn reduce_scatter_sum(
        &self,
        output: &mut tch::Tensor,
        input: &tch::Tensor,
    ) -> Result<(), Error> {
        // SAFETY: as in `all_reduce_sum`; `input` is only read by the shim (it copies the
        // handle), through a pointer valid for the shared borrow.
        take_error(unsafe {
            sd_reduce_scatter_sum(
                self.ptr(),
                output.as_mut_ptr().cast(),
                input.as_ptr().cast(),
            )
        })
    }

    /// `output` = every rank's `input`, concatenated in rank order.
    pub(crate) fn all_gather(
        &self,
        output: &mut tch::Tensor,
        input: &tch::Tensor,
    ) -> Result<(), Error> {
        // SAFETY: as in `reduce_scatter_sum`.
        take_error(unsafe {
            sd_all_gather(
                self.ptr(),
                output.as_mut_ptr().cast(),
                input.as_ptr().cast(),
            )
        })
    }

    /// Block until every rank has reached the barrier.
    pub(crate) fn barrier(&self) -> Result<(), Error> {
        // SAFETY: the group is live (owned by self).
        take_error(unsafe { sd_barrier(self.ptr()) })
    }
}

impl Drop for RawGroup {
    fn drop(&mut self) {
        // SAFETY: the pointer came from sd_group_new, is owned by self and is freed only here.
        unsafe { sd_group_free(self.ptr()) }
    }
}

/// `at::_fused_adamw_` over parallel lists of tensors (see `sd_fused_adamw` in the header).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_adamw(
    params: &mut [tch::Tensor],
    grads: &[tch::Tensor],
    exp_avgs: &mut [tch::Tensor],
    exp_avg_sqs: &mut [tch::Tensor],
    steps: &mut [tch::Tensor],
    lr: f64,
    (beta1, beta2): (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<(), Error> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
        .iter()
        .any(|&l| l != n)
    {
        return Err(Error::new(
            ErrorKind::Config,
            "fused AdamW needs lists of equal length".to_owned(),
        ));
    }
    let ptrs = |ts: &mut [tch::Tensor]| -> Vec<*mut c_void> {
        ts.iter_mut().map(|t| t.as_mut_ptr().cast()).collect()
    };
    let (p, m, v, t) = (ptrs(params), ptrs(exp_avgs), ptrs(exp_avg_sqs), ptrs(steps));
    // The grads are only read; the shim copies each handle, so a const pointer cast is fine.
    let g: Vec<*mut c_void> = grads.iter().map(|t| t.as_ptr().cast_mut().cast()).collect();
    // SAFETY: five arrays of `n` live `at::Tensor*` (tch's handles, borrowed for the call: the
    // mutable ones exclusively), read by the shim only during the call, which copies each
    // handle and keeps none afterwards.
    take_error(unsafe {
        sd_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            t.as_ptr(),
            n,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        )
    })
}
