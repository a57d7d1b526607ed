//! The learning-rate schedule: linear warmup, then cosine decay.

/// `lr(step)` for steps `0..total`: `peak * (step + 1) / warmup` during the
/// first `warmup` steps, then a half cosine from `peak` down to `min` at the
/// last step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub min: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup);
        if decay_steps <= 1 {
            return self.peak;
        }
        let progress = ((step - self.warmup) as f64 / (decay_steps - 1) as f64).min(1.0);
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_min() {
        let s = Schedule {
            peak: 1e-3,
            min: 1e-5,
            warmup: 4,
            total: 20,
        };
        assert!((s.lr(0) - 2.5e-4).abs() < 1e-12);
        assert!((s.lr(3) - 1e-3).abs() < 1e-12);
        assert!((s.lr(4) - 1e-3).abs() < 1e-12, "decay starts at the peak");
        assert!((s.lr(19) - 1e-5).abs() < 1e-12, "the last step is at min");
        let lrs: Vec<f64> = (4..20).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
        let mid = s.lr(4 + 15 / 2);
        assert!(mid < 1e-3 && mid > 1e-5);
    }

    #[test]
    fn no_warmup_and_single_step() {
        let s = Schedule {
            peak: 1.0,
            min: 0.0,
            warmup: 0,
            total: 1,
        };
        assert_eq!(s.lr(0), 1.0);
    }
}
