//! AdamW written in tensor ops, so that its state can be checkpointed and restored exactly.
//!
//! tch's built-in optimizer keeps its moments inside libtorch where we cannot save them, and
//! exact resume needs them. This implementation follows `torch.optim.AdamW` (single-tensor path)
//! operation by operation: decoupled decay `p *= 1 - lr·wd`, `m.lerp_(g, 1-β1)`,
//! `v = v·β2 + (1-β2)·g·g`, `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + ε)`.
//! Weight decay is never applied to norms, biases or other 1-D parameters (HF's grouping).
//!
//! Mixed precision: when a parameter is not f32 (bf16 on CUDA), the optimizer keeps an f32
//! master copy, sums the micro-batches' gradients in f32 ([`AdamW::absorb_grads`] after each
//! backward), updates the master with that sum, and writes it back rounded. The master copy is
//! what checkpoints store.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::zero::Zero;

use crate::error::{Error, Result};

/// One optimised parameter.
#[derive(Debug)]
struct Param {
    name: String,
    /// The model's variable (shares storage with the VarStore).
    var: Tensor,
    /// f32 master weights when `var` is lower precision.
    master: Option<Tensor>,
    decay: bool,
    /// The f32 sum of the micro-batches' gradients when `var` is lower precision
    /// ([`AdamW::absorb_grads`]); `var`'s own gradient is then only the last backward's.
    grad32: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Hyperparameters that do not change during a run (the learning rate comes per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay for ≥2-D, non-norm, non-bias parameters.
    pub weight_decay: f64,
}

/// AdamW over the trainable variables of a [`VarStore`].
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    hp: AdamWParams,
    step: u64,
    /// ZeRO-1: this rank's shard of master weights and moments ([`AdamW::shard`]).
    zero: Option<Zero>,
    /// Update through libtorch's fused multi-tensor kernel ([`AdamW::set_fused`]).
    fused: bool,
}

/// Whether HF's trainer would decay this parameter (not a norm, not a bias, at least 2-D).
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.ends_with(".bias") && !name.contains("norm")
}

impl AdamW {
    /// Optimises every variable of `vs` that requires grad, in name order. With `master`, f32
    /// master copies are taken now (call before lowering the store's precision); parameters that
    /// are not f32 always get one.
    pub fn new(vs: &VarStore, hp: AdamWParams, master: bool) -> Result<Self> {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if vars.is_empty() {
            return Err(Error::Config(
                "the model has no trainable parameters".into(),
            ));
        }
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let master = if var.kind() == Kind::Float && !master {
                None
            } else {
                Some(tch::no_grad(|| {
                    var.f_to_kind(Kind::Float)?.f_detach_copy()
                })?)
            };
            let exp_avg = Tensor::f_zeros(var.size(), (Kind::Float, var.device()))?;
            let exp_avg_sq = Tensor::f_zeros(var.size(), (Kind::Float, var.device()))?;
            let decay = decays(&name, var.dim());
            params.push(Param {
                name,
                var,
                master,
                decay,
                grad32: None,
                exp_avg,
                exp_avg_sq,
            });
        }
        Ok(AdamW {
            params,
            hp,
            step: 0,
            zero: None,
            fused: false,
        })
    }

    /// Runs the update through libtorch's fused multi-tensor AdamW (`at::_fused_adamw_`, via
    /// `sft_dist::fused_adamw`) instead of a few tensor ops per parameter: the same update
    /// (the tests compare them), one pass over each tensor instead of about ten, and far fewer
    /// kernel launches on CUDA. The trainer turns it on for every device.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// ZeRO-1: from now on this rank keeps only its `1 / world` shard of the f32 master weights
    /// and Adam moments (see [`crate::zero`]); the per-parameter copies are freed. Call on a
    /// fresh optimizer, on every rank, after the weights are the same everywhere.
    pub fn shard(&mut self, rank: usize, world: usize) -> Result<()> {
        let weights: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| match &p.master {
                Some(m) => Ok(m.shallow_clone()),
                None => Ok(p.var.f_detach()?.f_to_kind(Kind::Float)?),
            })
            .collect::<Result<_>>()?;
        self.zero = Some(Zero::new(rank, world, &weights)?);
        for p in &mut self.params {
            let empty = Tensor::f_zeros([0], (Kind::Float, p.var.device()))?;
            p.master = None;
            p.exp_avg = empty.shallow_clone();
            p.exp_avg_sq = empty;
        }
        Ok(())
    }

    /// Whether the state is sharded (ZeRO-1).
    pub fn is_sharded(&self) -> bool {
        self.zero.is_some()
    }

    /// Sums the step's gradients over `group`: an all-reduce of every gradient, or with ZeRO-1
    /// a reduce-scatter into this rank's shard.
    pub fn reduce_grads(&mut self, group: &sft_dist::ProcessGroup) -> Result<()> {
        let grads = self.grads();
        match &mut self.zero {
            Some(z) => {
                if grads.len() != self.params.len() {
                    return Err(Error::Config(
                        "a parameter has no gradient to reduce".into(),
                    ));
                }
                z.reduce_scatter(&grads, group)
            }
            None => self.all_reduce_grads(group),
        }
    }

    /// Updates done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters that get weight decay.
    pub fn decayed_names(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Sets every gradient to zero (the buffers stay allocated for the next step).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
            if let Some(g) = &mut p.grad32 {
                let _ = g.f_zero_();
            }
        }
    }

    /// Adds the gradients of lower-precision (bf16) parameters into their f32 accumulators and
    /// zeroes the bf16 ones; call after every micro-batch's backward, so that gradient
    /// accumulation across micro-batches happens in f32, not bf16. A no-op for f32 parameters,
    /// whose gradients libtorch already accumulates in f32.
    pub fn absorb_grads(&mut self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                if p.var.kind() == Kind::Float {
                    continue;
                }
                let mut g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                match &mut p.grad32 {
                    Some(acc) => {
                        let _ = acc.f_add_(&g)?;
                    }
                    None => p.grad32 = Some(g.f_to_kind(Kind::Float)?),
                }
                let _ = g.f_zero_()?;
            }
            Ok(())
        })
    }

    /// Each parameter's f32 gradient of the step (the accumulator for bf16 parameters), or an
    /// undefined tensor when it has none.
    fn grad_of(p: &Param) -> Tensor {
        match &p.grad32 {
            Some(g) => g.shallow_clone(),
            None => p.var.grad(),
        }
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(Self::grad_of)
            .filter(|g| g.defined())
            .collect()
    }

    /// Sums the step's f32 gradients over the ranks of `group`, in place, in buckets of about
    /// 64 MiB (so the reduction's flat buffer stays small); after it every rank holds the
    /// global batch's gradients and takes the same update.
    fn all_reduce_grads(&mut self, group: &sft_dist::ProcessGroup) -> Result<()> {
        const BUCKET_BYTES: usize = 64 << 20;
        let grads = self.grads();
        if grads.len() != self.params.len() {
            return Err(Error::Config(format!(
                "{} of {} parameters have no gradient to reduce",
                self.params.len() - grads.len(),
                self.params.len()
            )));
        }
        let mut bucket: Vec<Tensor> = Vec::new();
        let mut bytes = 0;
        for g in grads {
            bytes += g.numel() * 4;
            bucket.push(g);
            if bytes >= BUCKET_BYTES {
                group.all_reduce_sum(&mut bucket)?;
                bucket.clear();
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            group.all_reduce_sum(&mut bucket)?;
        }
        Ok(())
    }

    /// The f32 gradients of the step by parameter name (after [`AdamW::absorb_grads`]); for
    /// tests and the data-parallel all-reduce.
    pub fn gradients(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), Self::grad_of(p)))
            .filter(|(_, g)| g.defined())
            .collect()
    }

    /// Global L2 norm of all gradients (as `torch.nn.utils.clip_grad_norm_` computes it).
    pub fn grad_norm(&self, group: Option<&sft_dist::ProcessGroup>) -> Result<f64> {
        if let (Some(z), Some(g)) = (&self.zero, group) {
            // The shards' squared norms summed over the ranks (padding is zero).
            let mut sq =
                [tch::no_grad(|| z.grad.f_square()?.f_sum(Kind::Double))?.f_double_value(&[])?];
            g.all_reduce_sum_f64(&mut sq)?;
            return Ok(sq[0].sqrt());
        }
        let grads = self.grads();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms = tch::no_grad(|| -> Result<Tensor> {
            let per: Vec<Tensor> = grads
                .iter()
                .map(|g| g.f_to_kind(Kind::Float)?.f_norm())
                .collect::<Result<_, tch::TchError>>()?;
            Ok(Tensor::f_stack(&per, 0)?.f_norm()?)
        })?;
        Ok(norms.f_double_value(&[])?)
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's formula:
    /// `coef = min(1, max_norm / (norm + 1e-6))`). `max_norm = 0` disables clipping.
    pub fn clip(&mut self, max_norm: f64, norm: f64) -> Result<()> {
        if max_norm <= 0.0 {
            return Ok(());
        }
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef >= 1.0 {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            if let Some(z) = &mut self.zero {
                let _ = z.grad.f_mul_scalar_(coef)?;
                return Ok(());
            }
            for mut g in self.grads() {
                let _ = g.f_mul_scalar_(coef)?;
            }
            Ok(())
        })
    }

    /// One AdamW update at learning rate `lr` (with ZeRO-1, of this rank's shard, then the
    /// all-gather of the shards into every rank's weights through `group`).
    pub fn step(&mut self, lr: f64, group: Option<&sft_dist::ProcessGroup>) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let hp = self.hp;
        let bc1 = 1.0 - hp.beta1.powi(t);
        let bc2_sqrt = (1.0 - hp.beta2.powi(t)).sqrt();
        if let Some(z) = &mut self.zero {
            let group = group.ok_or_else(|| {
                Error::Config("a sharded (ZeRO-1) optimizer needs its process group".into())
            })?;
            let mut work = Vec::new();
            for (p, _, at, len) in z.pieces() {
                let (at, len) = (at as i64, len as i64);
                work.push(Slot {
                    w: z.master.f_narrow(0, at, len)?,
                    g: z.grad.f_narrow(0, at, len)?,
                    m: z.exp_avg.f_narrow(0, at, len)?,
                    v: z.exp_avg_sq.f_narrow(0, at, len)?,
                    decay: self.params[p].decay,
                });
            }
            apply(work, self.fused, self.step, lr, &hp, (bc1, bc2_sqrt))?;
            let vars: Vec<Tensor> = self.params.iter().map(|p| p.var.shallow_clone()).collect();
            return z.all_gather_into(&vars, group);
        }
        let mut work = Vec::new();
        for p in &self.params {
            let g = Self::grad_of(p);
            if !g.defined() {
                continue;
            }
            let g = if g.kind() == Kind::Float {
                g
            } else {
                g.f_to_kind(Kind::Float)?
            };
            work.push(Slot {
                w: p.master.as_ref().unwrap_or(&p.var).shallow_clone(),
                g,
                m: p.exp_avg.shallow_clone(),
                v: p.exp_avg_sq.shallow_clone(),
                decay: p.decay,
            });
        }
        apply(work, self.fused, self.step, lr, &hp, (bc1, bc2_sqrt))?;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                if let (Some(m), true) = (&p.master, Self::grad_of(p).defined()) {
                    p.var.f_copy_(m)?;
                }
            }
            Ok(())
        })
    }

    /// The f32 weights by parameter name for a checkpoint: the master copies where they exist;
    /// with ZeRO-1 and lower-precision variables, every rank's master shard gathered through
    /// `group` (each rank must call it). With ZeRO-1 in f32 the variables are the masters.
    pub fn full_weights(
        &self,
        group: Option<&sft_dist::ProcessGroup>,
    ) -> Result<Vec<(String, Tensor)>> {
        let (Some(z), Some(g)) = (&self.zero, group) else {
            return Ok(self.weights());
        };
        if self.params.iter().all(|p| p.var.kind() == Kind::Float) {
            return Ok(self.weights());
        }
        let full: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| Tensor::f_zeros(p.var.size(), (Kind::Float, Device::Cpu)))
            .collect::<Result<_, _>>()?;
        z.gather_chunks(g, |r, done, piece| {
            let a = r * z.per_rank + done;
            let host = piece.f_to_device(Device::Cpu)?;
            crate::zero::copy_in(&full, &z.layout, a, a + piece.size()[0] as usize, &host)
        })?;
        Ok(self
            .params
            .iter()
            .zip(full)
            .map(|(p, t)| (p.name.clone(), t))
            .collect())
    }

    /// The f32 weights (master copies where they exist) by parameter name.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.master.as_ref().unwrap_or(&p.var).shallow_clone(),
                )
            })
            .collect()
    }

    /// State tensors for a checkpoint: `exp_avg.<name>` and `exp_avg_sq.<name>`; with ZeRO-1
    /// this rank's shard: `zero.exp_avg`, `zero.exp_avg_sq` and `zero.layout` (world, rank,
    /// total elements, elements per rank).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        if let Some(z) = &self.zero {
            let layout = Tensor::from_slice(&[
                z.world as i64,
                z.rank as i64,
                z.layout.total as i64,
                z.per_rank as i64,
            ]);
            return vec![
                ("zero.exp_avg".into(), z.exp_avg.shallow_clone()),
                ("zero.exp_avg_sq".into(), z.exp_avg_sq.shallow_clone()),
                ("zero.layout".into(), layout),
            ];
        }
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        out
    }

    /// The whole-model state (`exp_avg.<name>`, `exp_avg_sq.<name>`) assembled from every
    /// rank's ZeRO-1 shard (`zero.*` tensors, in rank order), for a run with another world size
    /// or without ZeRO.
    pub fn merge_shards(&self, shards: &[Vec<(String, Tensor)>]) -> Result<Vec<(String, Tensor)>> {
        let numels: Vec<usize> = self.params.iter().map(|p| p.var.numel()).collect();
        let layout = crate::zero::Layout::new(numels);
        let mut out = Vec::new();
        for key in ["exp_avg", "exp_avg_sq"] {
            let mut parts = Vec::with_capacity(shards.len());
            for (r, shard) in shards.iter().enumerate() {
                let get = |k: &str| {
                    shard
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, t)| t.shallow_clone())
                        .ok_or_else(|| Error::Config(format!("shard {r} lacks `{k}`")))
                };
                let l: Vec<i64> = Vec::<i64>::try_from(&get("zero.layout")?)?;
                if l.len() != 4
                    || l[0] as usize != shards.len()
                    || l[1] as usize != r
                    || l[2] as usize != layout.total
                {
                    return Err(Error::Config(format!(
                        "shard {r} has layout {l:?}; expected world {}, rank {r}, {} elements",
                        shards.len(),
                        layout.total
                    )));
                }
                parts.push(get(&format!("zero.{key}"))?);
            }
            let flat = Tensor::f_cat(&parts, 0)?;
            for (p, (&off, &n)) in self
                .params
                .iter()
                .zip(layout.offsets.iter().zip(&layout.numels))
            {
                let t = flat
                    .f_narrow(0, off as i64, n as i64)?
                    .f_reshape(p.var.size())?;
                out.push((format!("{key}.{}", p.name), t));
            }
        }
        Ok(out)
    }

    /// Restores moments and the step count; every parameter must be present with its shape.
    pub fn load_state(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        if let Some(z) = &mut self.zero {
            return tch::no_grad(|| -> Result<()> {
                if let Some(layout) = map.get("zero.layout") {
                    let l: Vec<i64> = Vec::<i64>::try_from(*layout)?;
                    let want = [
                        z.world as i64,
                        z.rank as i64,
                        z.layout.total as i64,
                        z.per_rank as i64,
                    ];
                    if l != want {
                        return Err(Error::Config(format!(
                            "optimizer shard has layout {l:?} (world, rank, total, per rank), this run needs {want:?}"
                        )));
                    }
                    for (key, dst) in [
                        ("zero.exp_avg", &z.exp_avg),
                        ("zero.exp_avg_sq", &z.exp_avg_sq),
                    ] {
                        let src = map.get(key).ok_or_else(|| {
                            Error::Config(format!("optimizer shard lacks `{key}`"))
                        })?;
                        dst.shallow_clone().f_copy_(src)?;
                    }
                } else {
                    // A whole-model state: take this rank's slice of it.
                    for (prefix, dst) in [("exp_avg", &z.exp_avg), ("exp_avg_sq", &z.exp_avg_sq)] {
                        let full: Vec<Tensor> = self
                            .params
                            .iter()
                            .map(|p| {
                                map.get(format!("{prefix}.{}", p.name).as_str())
                                    .map(|t| t.shallow_clone())
                                    .ok_or_else(|| {
                                        Error::Config(format!(
                                            "optimizer state lacks `{prefix}.{}`",
                                            p.name
                                        ))
                                    })
                            })
                            .collect::<Result<_>>()?;
                        let (a, b) = z.range();
                        let host = Tensor::f_zeros([(b - a) as i64], (Kind::Float, Device::Cpu))?;
                        crate::zero::copy_out(&full, &z.layout, a, b, &host)?;
                        dst.shallow_clone().f_copy_(&host)?;
                    }
                }
                self.step = step;
                Ok(())
            });
        }
        let get = |key: String, like: &Tensor| -> Result<Tensor> {
            let t = map
                .get(key.as_str())
                .ok_or_else(|| Error::Config(format!("optimizer state lacks `{key}`")))?;
            if t.size() != like.size() {
                return Err(Error::Config(format!(
                    "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.f_to_kind(Kind::Float)?.f_to_device(like.device())?)
        };
        for p in &mut self.params {
            p.exp_avg = get(format!("exp_avg.{}", p.name), &p.var)?;
            p.exp_avg_sq = get(format!("exp_avg_sq.{}", p.name), &p.var)?;
        }
        if map.len() != self.params.len() * 2 {
            return Err(Error::Config(format!(
                "optimizer state has {} tensors, expected {}",
                map.len(),
                self.params.len() * 2
            )));
        }
        self.step = step;
        Ok(())
    }

    /// Loads f32 weights into the parameters (and their master copies).
    pub fn load_weights(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let src = map
                    .get(p.name.as_str())
                    .ok_or_else(|| Error::Config(format!("weights lack `{}`", p.name)))?;
                if src.size() != p.var.size() {
                    return Err(Error::Config(format!(
                        "weight `{}` has shape {:?}, model has {:?}",
                        p.name,
                        src.size(),
                        p.var.size()
                    )));
                }
                if let Some(m) = &mut p.master {
                    m.f_copy_(src)?;
                }
                p.var.f_copy_(src)?;
            }
            if let Some(z) = &mut self.zero {
                // The shard's master weights are the loaded f32 values (not the rounded vars).
                let srcs: Vec<Tensor> = self
                    .params
                    .iter()
                    .map(|p| map[p.name.as_str()].shallow_clone())
                    .collect();
                let (a, b) = z.range();
                let host = Tensor::f_zeros([(b - a) as i64], (Kind::Float, Device::Cpu))?;
                crate::zero::copy_out(&srcs, &z.layout, a, b, &host)?;
                z.master.f_copy_(&host)?;
            }
            Ok(())
        })
    }
}

/// One tensor's share of an update: weights, f32 gradient, moments (all f32, same shape).
struct Slot {
    w: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// Updates every slot in place: with `fused`, one `at::_fused_adamw_` call per weight-decay
/// group; otherwise [`update`] per slot. `step` is the 1-based step being taken.
fn apply(
    work: Vec<Slot>,
    fused: bool,
    step: u64,
    lr: f64,
    hp: &AdamWParams,
    bc: (f64, f64),
) -> Result<()> {
    if !fused {
        return tch::no_grad(|| -> Result<()> {
            for mut s in work {
                update(&mut s.w, &s.g, &mut s.m, &mut s.v, s.decay, lr, hp, bc)?;
            }
            Ok(())
        });
    }
    for decay in [true, false] {
        let group: Vec<&Slot> = work.iter().filter(|s| s.decay == decay).collect();
        if group.is_empty() {
            continue;
        }
        let take = |f: fn(&Slot) -> &Tensor| -> Vec<Tensor> {
            group.iter().map(|s| f(s).shallow_clone()).collect()
        };
        let (mut w, g, mut m, mut v) = (
            take(|s| &s.w),
            take(|s| &s.g),
            take(|s| &s.m),
            take(|s| &s.v),
        );
        // The kernel reads the step being taken from these (torch.optim increments them first).
        let mut steps: Vec<Tensor> = group
            .iter()
            .map(|s| Tensor::f_full([], step as f64, (Kind::Float, s.w.device())))
            .collect::<Result<_, _>>()?;
        let wd = if decay { hp.weight_decay } else { 0.0 };
        sft_dist::fused_adamw(
            &mut w,
            &g,
            &mut m,
            &mut v,
            &mut steps,
            lr,
            (hp.beta1, hp.beta2),
            wd,
            hp.eps,
        )?;
    }
    Ok(())
}

/// The AdamW update of one tensor (or a shard's piece of one), in place, as
/// `torch.optim.AdamW`'s single-tensor path: decoupled decay `w *= 1 - lr·wd`,
/// `m.lerp_(g, 1-β1)`, `v = v·β2 + (1-β2)·g·g`, `w -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + ε)`.
#[allow(clippy::too_many_arguments)]
fn update(
    w: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    decay: bool,
    lr: f64,
    hp: &AdamWParams,
    (bc1, bc2_sqrt): (f64, f64),
) -> Result<()> {
    if decay && hp.weight_decay != 0.0 {
        let _ = w.f_mul_scalar_(1.0 - lr * hp.weight_decay)?;
    }
    let _ = m.f_lerp_(g, 1.0 - hp.beta1)?;
    let _ = v.f_mul_scalar_(hp.beta2)?;
    let _ = v.f_addcmul_(&g.f_mul_scalar(1.0 - hp.beta2)?, g)?;
    let mut denom = v.f_sqrt()?.f_div_scalar(bc2_sqrt)?;
    let _ = denom.f_add_scalar_(hp.eps)?;
    let _ = w.f_addcdiv_(&m.f_mul_scalar(-lr / bc1)?, &denom)?;
    Ok(())
}
