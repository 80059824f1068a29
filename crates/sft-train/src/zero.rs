//! ZeRO stage 1: the f32 master weights and the Adam moments sharded across data-parallel ranks.
//!
//! The parameters (in the optimizer's name order) are laid end to end into one flat vector of
//! `total` elements, padded to `world × per_rank`; rank `r` owns `[r · per_rank, (r + 1) ·
//! per_rank)`. A step then goes:
//!
//! 1. every rank sums its micro-batches' gradients locally (full size, f32), as without ZeRO;
//! 2. **reduce-scatter**: rank `r` receives the sum over ranks of its own slice only (in chunks
//!    of [`CHUNK`] elements per rank, so the collective's buffers stay small);
//! 3. the global gradient norm is the all-reduced sum of the slices' squared norms; clipping
//!    scales the slice;
//! 4. AdamW updates the slice's master weights and moments, piece by piece (a piece is the part
//!    of one parameter inside the slice, with that parameter's weight-decay flag): the same
//!    element-wise update as without ZeRO;
//! 5. **all-gather** the updated slices (in chunks) into every rank's model weights.
//!
//! So every rank ends the step with the weights plain data parallelism gives (the test compares
//! them), holding `1 / world` of the master weights and moments.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Elements per rank and collective call (64 MiB of f32).
pub const CHUNK: usize = 16 << 20;

/// Where each parameter sits in the flat vector.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Start of each parameter.
    pub offsets: Vec<usize>,
    /// Elements of each parameter.
    pub numels: Vec<usize>,
    /// Σ numels.
    pub total: usize,
}

impl Layout {
    pub(crate) fn new(numels: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(numels.len());
        let mut total = 0;
        for &n in &numels {
            offsets.push(total);
            total += n;
        }
        Layout {
            offsets,
            numels,
            total,
        }
    }

    /// The parts of `[a, b)` (clipped to `total`): `(parameter, offset in it, offset in the
    /// range, length)`.
    pub(crate) fn segments(&self, a: usize, b: usize) -> Vec<(usize, usize, usize, usize)> {
        let b = b.min(self.total);
        let mut out = Vec::new();
        if a >= b {
            return out;
        }
        // The first parameter that ends after `a`.
        let first = self.offsets.partition_point(|&o| o <= a).saturating_sub(1);
        for p in first..self.numels.len() {
            let (start, end) = (self.offsets[p], self.offsets[p] + self.numels[p]);
            if start >= b {
                break;
            }
            let (lo, hi) = (start.max(a), end.min(b));
            if lo < hi {
                out.push((p, lo - start, lo - a, hi - lo));
            }
        }
        out
    }
}

/// This rank's shard of the optimizer state.
#[derive(Debug)]
pub(crate) struct Zero {
    pub rank: usize,
    pub world: usize,
    pub layout: Layout,
    /// Elements per rank (the last rank's shard is padded with zeros).
    pub per_rank: usize,
    /// f32 master weights of the shard, `[per_rank]`.
    pub master: Tensor,
    /// Adam moments of the shard.
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// The reduced gradient of the shard (valid after [`Zero::reduce_scatter`]).
    pub grad: Tensor,
}

impl Zero {
    /// The shard of `rank` of `world` over parameters whose current f32 values are `weights`.
    pub(crate) fn new(rank: usize, world: usize, weights: &[Tensor]) -> Result<Self> {
        let layout = Layout::new(weights.iter().map(Tensor::numel).collect());
        let per_rank = layout.total.div_ceil(world).max(1);
        let device = weights.first().map_or(Device::Cpu, Tensor::device);
        let zeros = || Tensor::f_zeros([per_rank as i64], (Kind::Float, device));
        let z = Zero {
            rank,
            world,
            layout,
            per_rank,
            master: zeros()?,
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            grad: zeros()?,
        };
        let (a, b) = z.range();
        let master = z.master.shallow_clone();
        copy_out(weights, &z.layout, a, b, &master)?;
        Ok(z)
    }

    /// This rank's `[start, end)` of the padded flat vector.
    pub(crate) fn range(&self) -> (usize, usize) {
        let a = self.rank * self.per_rank;
        (a, a + self.per_rank)
    }

    /// The pieces of this rank's shard: `(parameter, offset in it, offset in the shard, len)`.
    pub(crate) fn pieces(&self) -> Vec<(usize, usize, usize, usize)> {
        let (a, b) = self.range();
        self.layout.segments(a, b)
    }

    /// Sums `grads` (full size, every rank's local sum) over the ranks into [`Zero::grad`],
    /// this rank's slice only.
    pub(crate) fn reduce_scatter(
        &mut self,
        grads: &[Tensor],
        group: &sft_dist::ProcessGroup,
    ) -> Result<()> {
        let chunk = CHUNK.min(self.per_rank);
        let device = self.grad.device();
        let mut done = 0;
        while done < self.per_rank {
            let n = chunk.min(self.per_rank - done);
            let input = Tensor::f_zeros([(n * self.world) as i64], (Kind::Float, device))?;
            for r in 0..self.world {
                let a = r * self.per_rank + done;
                copy_out(
                    grads,
                    &self.layout,
                    a,
                    a + n,
                    &input.f_narrow(0, (r * n) as i64, n as i64)?,
                )?;
            }
            let mut out = self.grad.f_narrow(0, done as i64, n as i64)?;
            group.reduce_scatter_sum(&mut out, &input)?;
            done += n;
        }
        Ok(())
    }

    /// Writes every rank's updated master slice into `vars` (all-gather, in chunks).
    pub(crate) fn all_gather_into(
        &self,
        vars: &[Tensor],
        group: &sft_dist::ProcessGroup,
    ) -> Result<()> {
        self.gather_chunks(group, |r, done, piece| {
            let a = r * self.per_rank + done;
            copy_in(vars, &self.layout, a, a + piece.size()[0] as usize, piece)
        })
    }

    /// Every rank's master slice, chunk by chunk: `f(rank, offset in its shard, values)`.
    pub(crate) fn gather_chunks(
        &self,
        group: &sft_dist::ProcessGroup,
        mut f: impl FnMut(usize, usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let chunk = CHUNK.min(self.per_rank);
        let device = self.master.device();
        let mut done = 0;
        while done < self.per_rank {
            let n = chunk.min(self.per_rank - done);
            let mut out = Tensor::f_zeros([(n * self.world) as i64], (Kind::Float, device))?;
            let mine = self
                .master
                .f_narrow(0, done as i64, n as i64)?
                .f_contiguous()?;
            group.all_gather(&mut out, &mine)?;
            for r in 0..self.world {
                f(r, done, &out.f_narrow(0, (r * n) as i64, n as i64)?)?;
            }
            done += n;
        }
        Ok(())
    }
}

/// Copies the flat range `[a, b)` of `tensors` into `dst` (`b - a` elements; zeros past the
/// end stay as they are).
pub(crate) fn copy_out(
    tensors: &[Tensor],
    layout: &Layout,
    a: usize,
    b: usize,
    dst: &Tensor,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (p, off, at, len) in layout.segments(a, b) {
            let src = tensors[p]
                .f_reshape([-1])?
                .f_narrow(0, off as i64, len as i64)?;
            dst.f_narrow(0, at as i64, len as i64)?.f_copy_(&src)?;
        }
        Ok(())
    })
}

/// Copies `src` (`b - a` elements) into the flat range `[a, b)` of `tensors` (each contiguous;
/// written in place, converted to its dtype).
pub(crate) fn copy_in(
    tensors: &[Tensor],
    layout: &Layout,
    a: usize,
    b: usize,
    src: &Tensor,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (p, off, at, len) in layout.segments(a, b) {
            let t = &tensors[p];
            if !t.is_contiguous() {
                return Err(Error::Config("a ZeRO parameter is not contiguous".into()));
            }
            t.f_view([-1])?
                .f_narrow(0, off as i64, len as i64)?
                .f_copy_(&src.f_narrow(0, at as i64, len as i64)?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_ranges_across_parameters() {
        let l = Layout::new(vec![3, 5, 2]);
        assert_eq!(l.total, 10);
        assert_eq!(l.segments(0, 4), vec![(0, 0, 0, 3), (1, 0, 3, 1)]);
        assert_eq!(l.segments(4, 8), vec![(1, 1, 0, 4)]);
        assert_eq!(l.segments(8, 12), vec![(2, 0, 0, 2)]);
        assert!(l.segments(10, 12).is_empty());
        // Every element of the padded vector is covered once by the rank ranges.
        for world in 1..5 {
            let per = l.total.div_ceil(world);
            let n: usize = (0..world)
                .flat_map(|r| l.segments(r * per, (r + 1) * per))
                .map(|s| s.3)
                .sum();
            assert_eq!(n, 10, "world {world}");
        }
    }
}
