//! Seeded, portable sampling: ChaCha8 streams derived with SHA-256, our own Fisher–Yates shuffle,
//! and nested selections taken as prefixes of one permutation.
//!
//! Nothing here uses `rand`'s `StdRng` or `SliceRandom::shuffle`: their algorithms are allowed
//! to change between versions, which would silently change every mixture. The stream derivation,
//! the bounded integer draw and the shuffle below are fixed and covered by golden tests.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::ratio::Take;

/// A ChaCha8 generator for a named purpose: the key is
/// `SHA-256("sft-compose/v1\0" ‖ purpose ‖ "\0" ‖ seed as little-endian u64)`.
///
/// Deriving one stream per purpose (e.g. `sample/math`) keeps a source's selection unchanged
/// when another source is added to the mixture.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"sft-compose/v1\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(seed.to_le_bytes());
    let key: [u8; 32] = h.finalize().into();
    ChaCha8Rng::from_seed(key)
}

/// A uniform integer in `0..bound` (`bound > 0`) by Lemire's multiply-and-reject method,
/// using 64-bit draws. Unbiased; the sequence of draws consumed is part of the format.
pub fn uniform_below(rng: &mut impl RngCore, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let x = rng.next_u64();
        let m = (x as u128) * (bound as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Shuffles `items` in place with the Durstenfeld form of Fisher–Yates:
/// for `i` from `len-1` down to 1, swap `items[i]` with `items[uniform_below(i+1)]`.
pub fn fisher_yates<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, rng: &mut impl RngCore) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    fisher_yates(&mut p, rng);
    p
}

/// Selects indices into a source of `available` records.
///
/// The selection is a prefix of one seeded permutation of `0..available`, so for one seed and
/// stream the 1/256 subset ⊂ 1/64 ⊂ 1/16 ⊂ 1/4 ⊂ all. When more than `available` records
/// are asked for (ratio > 1 or a large count), the result is `q` whole copies of the
/// permutation followed by its first `r` entries, where `count = q·available + r`.
///
/// The returned order is the permutation order; callers that want file order sort it.
pub fn select(available: usize, take: Take, rng: &mut impl RngCore) -> Vec<usize> {
    let count = take.count_of(available);
    if count == 0 {
        return Vec::new();
    }
    let perm = permutation(available, rng);
    let whole = count / available;
    let rest = count % available;
    let mut out = Vec::with_capacity(count);
    for _ in 0..whole {
        out.extend_from_slice(&perm);
    }
    out.extend_from_slice(&perm[..rest]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratio::Ratio;

    #[test]
    fn golden_permutation_is_stable() {
        // If this changes, every mixture ever composed changes: bump the stream prefix instead.
        let mut rng = rng_for(42, "sample/golden");
        let p = permutation(10, &mut rng);
        assert_eq!(p, GOLDEN_10);
        let mut rng = rng_for(0, "sample/golden");
        let p = permutation(10, &mut rng);
        assert_ne!(p, GOLDEN_10, "seed 0 must be a real seed, not an alias");
    }

    const GOLDEN_10: [usize; 10] = [7, 3, 8, 9, 4, 1, 2, 6, 5, 0];

    #[test]
    fn permutation_is_a_permutation_and_roughly_uniform() {
        let mut counts = [[0u32; 5]; 5];
        let mut rng = rng_for(7, "uniformity");
        for _ in 0..20_000 {
            let p = permutation(5, &mut rng);
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
            for (pos, &v) in p.iter().enumerate() {
                counts[pos][v] += 1;
            }
        }
        for row in counts {
            for c in row {
                assert!(
                    (3_600..4_400).contains(&c),
                    "position/value count {c} far from 4000"
                );
            }
        }
    }

    #[test]
    fn uniform_below_stays_in_range() {
        let mut rng = rng_for(1, "range");
        for bound in [1u64, 2, 3, 7, 1 << 33, u64::MAX] {
            for _ in 0..100 {
                assert!(uniform_below(&mut rng, bound) < bound);
            }
        }
    }

    #[test]
    fn nested_prefixes_and_upsampling() {
        let n = 1000;
        let mut prev: Option<Vec<usize>> = None;
        for den in [256u64, 64, 16, 4, 1] {
            let take = Take::Ratio(Ratio::new(1, den).unwrap());
            let sel = select(n, take, &mut rng_for(3, "nest"));
            assert_eq!(sel.len(), take.count_of(n));
            if let Some(p) = prev {
                assert_eq!(&sel[..p.len()], &p[..]);
            }
            prev = Some(sel);
        }
        let up = select(
            n,
            Take::Ratio(Ratio::parse("2.5").unwrap()),
            &mut rng_for(3, "nest"),
        );
        assert_eq!(up.len(), 2500);
        let mut counts = vec![0u32; n];
        for i in &up {
            counts[*i] += 1;
        }
        assert_eq!(counts.iter().filter(|&&c| c == 3).count(), 500);
        assert_eq!(counts.iter().filter(|&&c| c == 2).count(), 500);
    }
}
