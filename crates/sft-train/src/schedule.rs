//! Learning-rate schedules, matching `transformers.get_{cosine,linear,constant}_schedule_with_warmup`.

use crate::config::Schedule;

/// A schedule resolved against a run length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Which curve.
    pub kind: Schedule,
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps: `ceil(total * warmup_ratio)`, as HF computes it.
    pub warmup: u64,
    /// Total optimizer steps.
    pub total: u64,
}

impl LrSchedule {
    /// Resolves `ratio` into warm-up steps for a run of `total` steps.
    pub fn new(kind: Schedule, peak: f64, warmup_ratio: f64, total: u64) -> Self {
        let warmup = (total as f64 * warmup_ratio).ceil() as u64;
        LrSchedule {
            kind,
            peak,
            warmup,
            total,
        }
    }

    /// The learning rate used by the update that follows `done` completed updates.
    pub fn lr(&self, done: u64) -> f64 {
        let s = done as f64;
        let w = self.warmup as f64;
        if done < self.warmup {
            return self.peak * s / w.max(1.0);
        }
        let factor = match self.kind {
            Schedule::Constant => 1.0,
            Schedule::Linear => {
                ((self.total as f64 - s) / (self.total as f64 - w).max(1.0)).max(0.0)
            }
            Schedule::Cosine => {
                let progress = (s - w) / (self.total as f64 - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        let s = LrSchedule::new(Schedule::Cosine, 1.0, 0.1, 100);
        assert_eq!(s.warmup, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
    }

    #[test]
    fn linear_and_constant() {
        let l = LrSchedule::new(Schedule::Linear, 2.0, 0.0, 10);
        assert_eq!(l.lr(0), 2.0);
        assert!((l.lr(5) - 1.0).abs() < 1e-12);
        let c = LrSchedule::new(Schedule::Constant, 3.0, 0.5, 4);
        assert_eq!(c.warmup, 2);
        assert!((c.lr(1) - 1.5).abs() < 1e-12);
        assert_eq!(c.lr(3), 3.0);
    }

    #[test]
    fn warmup_rounds_up_like_hf() {
        // 0.03 * 50 = 1.5 -> 2 warm-up steps.
        assert_eq!(LrSchedule::new(Schedule::Cosine, 1.0, 0.03, 50).warmup, 2);
    }
}
