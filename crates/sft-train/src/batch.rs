//! Data order, batching and collation.
//!
//! The order of an epoch is a pure function of `(seed, epoch, examples)`: a ChaCha8 stream
//! (`seed`, stream `epoch`) drives our own Fisher–Yates shuffle, so a resumed run rebuilds the
//! exact plan and skips to its step. Without packing, micro-batches are padded on the right
//! (no attention mask is needed: causal attention never lets a real token see a pad) and, with
//! `group_by_length`, formed from length-sorted mega-batches of 50 micro-batches (as HF's
//! `LengthGroupedSampler`). With packing, conversations are laid end to end into rows of at
//! most `max_len` tokens; each row gets a block-diagonal causal mask and positions that restart
//! at 0 for every conversation, and the first label of each conversation is ignored, so no
//! token sees or predicts across a boundary.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::data::{Example, IGNORE};
use crate::error::Result;

/// One micro-batch: rows of example indices (one index per row unless packing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicroBatch {
    /// Example indices per row, in order.
    pub rows: Vec<Vec<usize>>,
}

/// One optimizer step: `grad_accum` micro-batches (fewer at the end of an epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// The micro-batches whose gradients are summed.
    pub micro: Vec<MicroBatch>,
}

impl StepPlan {
    /// Every example index of the step, in order.
    pub fn example_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.micro
            .iter()
            .flat_map(|m| m.rows.iter().flatten().copied())
    }
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    // Rejection sampling: unbiased and fully specified by us, unlike `rand`'s shuffle.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

/// The shuffled example order of `epoch`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(epoch));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// The steps of one epoch.
pub fn epoch_plan(examples: &[Example], cfg: &TrainConfig, epoch: u32) -> Vec<StepPlan> {
    let perm = epoch_permutation(examples.len(), cfg.seed, epoch);
    let len = |i: usize| examples[i].input_ids.len();
    let rows: Vec<Vec<usize>> = if cfg.packing {
        let mut rows = Vec::new();
        let mut row: Vec<usize> = Vec::new();
        let mut used = 0;
        for i in perm {
            if used + len(i) > cfg.max_len && !row.is_empty() {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            used += len(i);
            row.push(i);
        }
        if !row.is_empty() {
            rows.push(row);
        }
        rows
    } else if cfg.group_by_length {
        let mega = cfg.micro_batch_size * 50;
        let mut order = Vec::with_capacity(perm.len());
        for chunk in perm.chunks(mega) {
            let mut c = chunk.to_vec();
            c.sort_by_key(|&i| std::cmp::Reverse(len(i)));
            order.extend(c);
        }
        order.into_iter().map(|i| vec![i]).collect()
    } else {
        perm.into_iter().map(|i| vec![i]).collect()
    };
    let micro: Vec<MicroBatch> = rows
        .chunks(cfg.micro_batch_size)
        .map(|c| MicroBatch { rows: c.to_vec() })
        .collect();
    micro
        .chunks(cfg.grad_accum)
        .map(|c| StepPlan { micro: c.to_vec() })
        .collect()
}

/// Where one example sits in a collated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index into the example list.
    pub example: usize,
    /// Row in the batch.
    pub row: usize,
    /// First position in the row.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}

/// A micro-batch as tensors.
#[derive(Debug)]
pub struct Collated {
    /// `[B, T]` i64 token ids (pads are 0).
    pub input_ids: Tensor,
    /// `[B, T]` i64 labels, unshifted, [`IGNORE`] on masked and padded positions.
    pub labels: Tensor,
    /// `[B, T]` positions restarting per conversation (packing only).
    pub position_ids: Option<Tensor>,
    /// `[B, 1, T, T]` bool, true = may attend (packing only).
    pub attn_mask: Option<Tensor>,
    /// Where each example sits.
    pub segments: Vec<Segment>,
    /// Positions that contribute to the loss.
    pub target_tokens: usize,
    /// Non-pad tokens.
    pub tokens: usize,
}

/// Builds the tensors of a micro-batch on `device`.
pub fn collate(
    examples: &[Example],
    mb: &MicroBatch,
    packed: bool,
    device: Device,
) -> Result<Collated> {
    let b = mb.rows.len();
    let t = mb
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|&i| examples[i].input_ids.len())
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
        .max(2);
    let mut ids = vec![0i64; b * t];
    let mut labels = vec![IGNORE; b * t];
    let mut pos = vec![0i64; b * t];
    // Segment id per position; pads get their own id so their attention rows are never empty.
    let mut seg = vec![-1i64; b * t];
    let mut segments = Vec::new();
    let mut tokens = 0;
    for (r, row) in mb.rows.iter().enumerate() {
        let mut start = 0;
        for (k, &i) in row.iter().enumerate() {
            let ex = &examples[i];
            let n = ex.input_ids.len();
            let base = r * t + start;
            ids[base..base + n].copy_from_slice(&ex.input_ids);
            labels[base..base + n].copy_from_slice(&ex.labels);
            // The first label of a conversation is never predicted from inside it.
            labels[base] = IGNORE;
            for (p, slot) in pos[base..base + n].iter_mut().enumerate() {
                *slot = p as i64;
            }
            seg[base..base + n].iter_mut().for_each(|s| *s = k as i64);
            segments.push(Segment {
                example: i,
                row: r,
                start,
                len: n,
            });
            start += n;
            tokens += n;
        }
    }
    let target_tokens = labels.iter().filter(|&&l| l != IGNORE).count();
    let shape = [b as i64, t as i64];
    let input_ids = Tensor::from_slice(&ids)
        .f_reshape(shape)?
        .f_to_device(device)?;
    let labels_t = Tensor::from_slice(&labels)
        .f_reshape(shape)?
        .f_to_device(device)?;
    let (position_ids, attn_mask) = if packed {
        let p = Tensor::from_slice(&pos)
            .f_reshape(shape)?
            .f_to_device(device)?;
        let s = Tensor::from_slice(&seg)
            .f_reshape(shape)?
            .f_to_device(device)?;
        let same = s.f_unsqueeze(2)?.f_eq_tensor(&s.f_unsqueeze(1)?)?;
        let causal = Tensor::f_ones([t as i64, t as i64], (Kind::Bool, device))?.f_tril(0)?;
        let mask = same.f_logical_and(&causal)?.f_unsqueeze(1)?;
        (Some(p), Some(mask))
    } else {
        (None, None)
    };
    Ok(Collated {
        input_ids,
        labels: labels_t,
        position_ids,
        attn_mask,
        segments,
        target_tokens,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: usize, n: usize) -> Example {
        Example {
            record_id: format!("s:{id}"),
            source: "s".into(),
            input_ids: (0..n as i64).collect(),
            labels: (0..n as i64).collect(),
        }
    }

    #[test]
    fn permutation_is_reproducible_and_differs_per_epoch() {
        let a = epoch_permutation(100, 7, 0);
        assert_eq!(a, epoch_permutation(100, 7, 0));
        assert_ne!(a, epoch_permutation(100, 7, 1));
        assert_ne!(a, epoch_permutation(100, 8, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn every_example_appears_once_per_epoch() {
        let exs: Vec<Example> = (0..37).map(|i| ex(i, 3 + i % 11)).collect();
        for packing in [false, true] {
            let cfg = TrainConfig {
                micro_batch_size: 3,
                grad_accum: 2,
                max_len: 20,
                packing,
                ..TrainConfig::default()
            };
            let plan = epoch_plan(&exs, &cfg, 1);
            let mut all: Vec<usize> = plan.iter().flat_map(|s| s.example_indices()).collect();
            all.sort();
            assert_eq!(all, (0..37).collect::<Vec<_>>(), "packing={packing}");
            for s in &plan {
                assert!(s.micro.len() <= 2);
                for m in &s.micro {
                    assert!(m.rows.len() <= 3);
                    for r in &m.rows {
                        let used: usize = r.iter().map(|&i| exs[i].input_ids.len()).sum();
                        assert!(used <= 20 || r.len() == 1);
                    }
                }
            }
        }
    }

    #[test]
    fn packed_mask_is_block_diagonal_causal() {
        let exs = vec![ex(0, 3), ex(1, 2)];
        let mb = MicroBatch {
            rows: vec![vec![0, 1], vec![1]],
        };
        let c = collate(&exs, &mb, true, Device::Cpu).unwrap();
        let m = c.attn_mask.unwrap();
        assert_eq!(m.size(), vec![2, 1, 5, 5]);
        let row0: Vec<i64> =
            Vec::try_from(m.get(0).get(0).to_kind(Kind::Int64).flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let want = vec![
            1, 0, 0, 0, 0,
            1, 1, 0, 0, 0,
            1, 1, 1, 0, 0,
            0, 0, 0, 1, 0,
            0, 0, 0, 1, 1,
        ];
        assert_eq!(row0, want);
        let pos: Vec<i64> = Vec::try_from(c.position_ids.unwrap().get(0)).unwrap();
        assert_eq!(pos, vec![0, 1, 2, 0, 1]);
        let labels: Vec<i64> = Vec::try_from(c.labels.get(0)).unwrap();
        assert_eq!(labels, vec![IGNORE, 1, 2, IGNORE, 1]);
        // Row 1 is padded; pads are ignored and attend only among themselves.
        let labels1: Vec<i64> = Vec::try_from(c.labels.get(1)).unwrap();
        assert_eq!(labels1, vec![IGNORE, 1, IGNORE, IGNORE, IGNORE]);
        assert_eq!(c.target_tokens, 4);
    }
}
