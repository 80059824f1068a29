//! [`ProcessGroup`]: a formed c10d group and its collectives.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, ErrorKind, Result};
use crate::ffi::RawGroup;
use crate::Backend;

/// How to form a process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Address (IP or hostname) of rank 0, which hosts the TCPStore. With a loopback address
    /// (`127.x.x.x`, `localhost`, `::1`) Gloo binds to it too (every rank on this machine);
    /// otherwise Gloo uses the interfaces in `GLOO_SOCKET_IFNAME`, else the address this
    /// machine's hostname resolves to, as torch.distributed does.
    pub master_addr: String,
    /// Port of rank 0's TCPStore.
    pub master_port: u16,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Which backend runs the collectives.
    pub backend: Backend,
    /// Bound on connecting to the store, on the rendezvous (rank 0 waits this long for every
    /// rank to connect) and on each collective.
    pub timeout: Duration,
}

/// A formed process group: this rank's handle on c10d's TCPStore and Gloo or NCCL backend.
///
/// Every rank must call the same collectives in the same order with matching tensors. Each
/// call blocks until the collective is done on this rank, or fails within the group's timeout.
/// Collectives work in place on CPU tensors for Gloo and on CUDA tensors (one device per
/// process) for NCCL. The group is `Send` but not `Sync`: c10d collectives must be issued in
/// one order, from one thread at a time.
///
/// After a collective fails the group is unusable (c10d's state is unknown, a peer may be
/// gone): every later call returns that first error again.
pub struct ProcessGroup {
    raw: RawGroup,
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
    failed: RefCell<Option<Error>>,
    /// For NCCL: the CUDA device of the latest tensor collective, used by
    /// [`ProcessGroup::all_reduce_sum_f64`].
    last_device: Cell<Option<Device>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .field("timeout", &self.timeout)
            .field("failed", &self.failed.borrow().is_some())
            .finish()
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

impl ProcessGroup {
    /// Form the group: rank 0 hosts a TCPStore at `master_addr:master_port`, every rank connects
    /// to it, and the backend's process group is created (Gloo connects a full mesh of TCP
    /// pairs through the store). Blocks until all `world_size` ranks have joined, or fails with
    /// [`ErrorKind::Rendezvous`] within about `timeout` (c10d's message says what timed out).
    pub fn new(config: &GroupConfig) -> Result<Self> {
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(config_error(format!(
                "rank {} is not in a world of size {}",
                config.rank, config.world_size
            )));
        }
        if config.timeout.is_zero() {
            return Err(config_error("the timeout must be positive".to_owned()));
        }
        if config.master_addr.trim().is_empty() {
            return Err(config_error("the master address is empty".to_owned()));
        }
        if config.master_port == 0 {
            return Err(config_error("the master port must not be 0".to_owned()));
        }
        let start = Instant::now();
        if config.rank != 0 {
            wait_for_store(
                config.master_addr.trim(),
                config.master_port,
                config.timeout,
            )?;
        }
        tracing::info!(
            rank = config.rank,
            world_size = config.world_size,
            backend = %config.backend,
            master = %format!("{}:{}", config.master_addr, config.master_port),
            timeout_s = config.timeout.as_secs_f64(),
            "forming c10d process group"
        );
        let raw = RawGroup::new(
            config.master_addr.trim(),
            config.master_port,
            config.rank,
            config.world_size,
            config.backend,
            config.timeout,
        )
        .inspect_err(|e| tracing::warn!(rank = config.rank, "c10d rendezvous failed: {e}"))?;
        tracing::info!(
            rank = config.rank,
            elapsed_s = start.elapsed().as_secs_f64(),
            "c10d process group formed"
        );
        Ok(Self {
            raw,
            rank: config.rank,
            world_size: config.world_size,
            backend: config.backend,
            timeout: config.timeout,
            failed: RefCell::new(None),
            last_device: Cell::new(None),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes in the group.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend running the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The timeout bounding each collective.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Run one or more shim calls; the first failure makes the group unusable.
    fn run(&self, op: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Some(first) = self.failed.borrow().as_ref() {
            return Err(Error::new(
                first.kind(),
                format!(
                    "process group unusable after an earlier failure: {}",
                    first.message()
                ),
            ));
        }
        let result = tch::no_grad(body);
        if let Err(e) = &result {
            tracing::warn!(rank = self.rank, "c10d {op} failed: {e}");
            *self.failed.borrow_mut() = Some(e.clone());
        }
        result
    }

    /// Check that the tensors are defined, on one device that this backend accepts.
    fn check_devices<'a>(
        &self,
        op: &str,
        tensors: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<()> {
        let mut device = None;
        for t in tensors {
            if !t.defined() {
                return Err(config_error(format!("{op}: undefined tensor")));
            }
            let d = t.device();
            if !self.backend.accepts(d) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{op}: a tensor on {d:?} cannot go through the {} backend",
                        self.backend
                    ),
                ));
            }
            match device {
                None => device = Some(d),
                Some(first) if first != d => {
                    return Err(config_error(format!(
                        "{op}: tensors on different devices ({first:?} and {d:?})"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(d @ Device::Cuda(_)) = device {
            self.last_device.set(Some(d));
        }
        Ok(())
    }

    /// Sum each tensor over all ranks, in place (every rank ends with the same sums).
    ///
    /// The list is one bucket: tensors of one dtype are flattened into one contiguous buffer,
    /// reduced with a single c10d `allreduce`, and copied back (c10d's list form means "one
    /// tensor per device", not a bucket of different shapes). A single contiguous tensor is
    /// reduced in place without a copy. Tensors of several dtypes take one collective per
    /// dtype, in the order each dtype first appears. Empty tensors are skipped. Runs without
    /// autograd, so parameters' gradients (or parameters) can be passed directly.
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.check_devices("all_reduce_sum", tensors.iter())?;
        self.run("all_reduce_sum", || {
            for indices in buckets(tensors) {
                self.bucketed(tensors, &indices, true, |flat| {
                    self.raw.all_reduce_sum(flat)
                })?;
            }
            Ok(())
        })
    }

    /// Overwrite each tensor with rank `root`'s values, in place (one bucket per dtype, as in
    /// [`ProcessGroup::all_reduce_sum`]).
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(config_error(format!(
                "broadcast: root {root} is not in a world of size {}",
                self.world_size
            )));
        }
        self.check_devices("broadcast", tensors.iter())?;
        let is_root = root == self.rank;
        self.run("broadcast", || {
            for indices in buckets(tensors) {
                self.bucketed(tensors, &indices, is_root, |flat| {
                    self.raw.broadcast(flat, root)
                })?;
            }
            Ok(())
        })
    }

    /// Sum `input` over all ranks and keep this rank's slice: `input` (flat, `world_size × n`
    /// elements) is split into `world_size` consecutive slices of `n` elements, and `output`
    /// (`n` elements, any shape) receives the sum over ranks of slice `rank`. `input` is left
    /// unchanged. c10d's `_reduce_scatter_base`.
    pub fn reduce_scatter_sum(&self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        self.check_devices("reduce_scatter_sum", [&*output, input])?;
        check_sizes("reduce_scatter_sum", output, input, self.world_size)?;
        self.run("reduce_scatter_sum", || {
            let input = flat_contiguous(input)?;
            with_flat_output(output, |flat| self.raw.reduce_scatter_sum(flat, &input))
        })
    }

    /// Gather every rank's `input` (`n` elements) into `output` (`world_size × n` elements,
    /// flat, rank `r`'s input at elements `r·n .. (r+1)·n`). c10d's `_allgather_base`.
    pub fn all_gather(&self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        self.check_devices("all_gather", [&*output, input])?;
        check_sizes("all_gather", input, output, self.world_size)?;
        self.run("all_gather", || {
            let input = flat_contiguous(input)?;
            with_flat_output(output, |flat| self.raw.all_gather(flat, &input))
        })
    }

    /// Block until every rank has called `barrier`.
    pub fn barrier(&self) -> Result<()> {
        self.run("barrier", || self.raw.barrier())
    }

    /// Sum `values` over all ranks in place, exactly in f64 (for loss sums, token counts). Runs
    /// on the CPU for Gloo; for NCCL on the CUDA device of the latest tensor collective, else
    /// on `cuda:(rank % device_count)`.
    pub fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let device = match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => self.last_device.get().unwrap_or_else(|| {
                let count = tch::Cuda::device_count().max(1) as usize;
                Device::Cuda(self.rank % count)
            }),
        };
        self.run("all_reduce_sum_f64", || {
            let mut t = Tensor::from_slice(values).f_to_device(device)?;
            self.raw.all_reduce_sum(&mut t)?;
            t.f_to_device(Device::Cpu)?
                .f_copy_data(values, values.len())?;
            Ok(())
        })
    }

    /// Run `op` on the tensors at `indices` (one dtype) as one flat contiguous buffer.
    /// `fill` says whether the buffer must start with the tensors' values.
    fn bucketed(
        &self,
        tensors: &mut [Tensor],
        indices: &[usize],
        fill: bool,
        op: impl FnOnce(&mut Tensor) -> Result<()>,
    ) -> Result<()> {
        if let [i] = indices {
            if tensors[*i].is_contiguous() {
                return op(&mut tensors[*i]);
            }
        }
        let first = &tensors[indices[0]];
        let (kind, device) = (first.kind(), first.device());
        let total: i64 = indices.iter().map(|&i| tensors[i].numel() as i64).sum();
        let mut flat = if fill {
            let views = indices
                .iter()
                .map(|&i| tensors[i].f_reshape([-1]))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_cat(&views, 0)?
        } else {
            Tensor::f_empty([total], (kind, device))?
        };
        op(&mut flat)?;
        let mut offset = 0i64;
        for &i in indices {
            let n = tensors[i].numel() as i64;
            let src = flat
                .f_narrow(0, offset, n)?
                .f_view(tensors[i].size().as_slice())?;
            tensors[i].f_copy_(&src)?;
            offset += n;
        }
        Ok(())
    }
}

/// Wait until something listens at `host:port` (rank 0's TCPStore), up to `timeout`.
///
/// c10d's own client connect retries with an exponential backoff whose last sleep can run far
/// past its deadline (a 3 s timeout took up to 8 s); this probe keeps "rank 0 never showed up"
/// within the configured timeout. The probe connection is closed at once: TCPStore counts
/// ranks by their handshake, not by connections, so it does not count as a rank.
fn wait_for_store(host: &str, port: u16, timeout: Duration) -> Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let deadline = Instant::now() + timeout;
    let mut last_error: String;
    loop {
        last_error = match (host, port).to_socket_addrs() {
            Err(e) => format!("cannot resolve {host}: {e}"),
            Ok(addrs) => {
                let mut error = format!("{host} resolves to no address");
                for addr in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let attempt = left
                        .min(Duration::from_secs(1))
                        .max(Duration::from_millis(1));
                    match TcpStream::connect_timeout(&addr, attempt) {
                        Ok(_) => return Ok(()),
                        Err(e) => error = format!("{addr}: {e}"),
                    }
                }
                error
            }
        };
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
    Err(Error::new(
        ErrorKind::Rendezvous,
        format!(
            "no rendezvous store listening at {host}:{port} after {:.1} s (is rank 0 running?); \
             last attempt: {last_error}",
            timeout.as_secs_f64()
        ),
    ))
}

/// Indices of the non-empty tensors, grouped by dtype in order of first appearance.
fn buckets(tensors: &[Tensor]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Kind, Vec<usize>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        if t.numel() == 0 {
            continue;
        }
        let kind = t.kind();
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, v)) => v.push(i),
            None => groups.push((kind, vec![i])),
        }
    }
    groups.into_iter().map(|(_, v)| v).collect()
}

/// `big` must hold `world_size` times the elements of `small`, in the same dtype.
fn check_sizes(op: &str, small: &Tensor, big: &Tensor, world_size: usize) -> Result<()> {
    if small.kind() != big.kind() {
        return Err(config_error(format!(
            "{op}: dtypes differ ({:?} and {:?})",
            small.kind(),
            big.kind()
        )));
    }
    if big.numel() != small.numel() * world_size {
        return Err(config_error(format!(
            "{op}: {} elements is not world size {world_size} × {} elements",
            big.numel(),
            small.numel()
        )));
    }
    Ok(())
}

/// A flat contiguous tensor with `t`'s elements (a view when `t` is already contiguous).
fn flat_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_reshape([-1])?.f_contiguous()?)
}

/// Run `op` on a flat contiguous tensor that writes into `output`: a view of it when it is
/// contiguous, else a temporary copied back afterwards.
fn with_flat_output(output: &mut Tensor, op: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
    if output.is_contiguous() {
        let mut view = output.f_view([-1])?;
        return op(&mut view);
    }
    let mut flat = output.f_reshape([-1])?.f_contiguous()?;
    op(&mut flat)?;
    let src = flat.f_view(output.size().as_slice())?;
    output.f_copy_(&src)?;
    Ok(())
}
