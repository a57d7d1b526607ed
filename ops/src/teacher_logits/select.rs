//! One position's teacher distribution made sparse: the `K` largest logits,
//! the log-sum-exp of all of them, and the log of the mass the others hold.

/// A position's kept logits, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Token ids of the kept logits, ascending.
    pub ids: Vec<u32>,
    /// Their raw logits, in the order of `ids`.
    pub logits: Vec<f32>,
    /// `ln sum_v e^(t_v / tau)` over the whole vocabulary.
    pub lse: f32,
    /// `ln` of the teacher's probability mass on the tokens not kept, at
    /// `tau`; `-inf` when every token is kept.
    pub log_tail: f32,
}

/// Reused buffers for [`top_k`], one set per thread.
#[derive(Default)]
pub struct Selector {
    order: Vec<u32>,
    exps: Vec<f64>,
}

impl Selector {
    /// The `k` largest of `logits` (ties to the lower id, so the choice is
    /// the same on every run and machine), with the sums in f64: `ln` of
    /// the tail is summed from the tail's own terms, never formed as `1 -
    /// kept`, so it keeps its precision however small it is.
    pub fn top_k(&mut self, logits: &[f32], k: usize, tau: f32) -> TopK {
        let vocab = logits.len();
        assert!(
            (1..=vocab).contains(&k),
            "top-{k} of a vocabulary of {vocab}"
        );
        let by_rank = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        self.order.clear();
        self.order.extend(0..vocab as u32);
        if k < vocab {
            self.order.select_nth_unstable_by(k - 1, by_rank);
        }
        let mut ids = self.order[..k].to_vec();
        ids.sort_unstable();

        let inv_tau = 1.0 / tau as f64;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        self.exps.clear();
        self.exps
            .extend(logits.iter().map(|&x| ((x as f64 - max) * inv_tau).exp()));
        let total: f64 = self.exps.iter().sum();
        let lse = max * inv_tau + total.ln();
        let log_tail = if k == vocab {
            f64::NEG_INFINITY
        } else {
            for &id in &ids {
                self.exps[id as usize] = 0.0;
            }
            let tail: f64 = self.exps.iter().sum();
            if tail > 0.0 {
                max * inv_tau + tail.ln() - lse
            } else {
                // Every tail term underflowed from the row's largest logit:
                // measure them from the tail's own.
                let mut kept = ids.iter().peekable();
                let tail_logits: Vec<f64> = logits
                    .iter()
                    .enumerate()
                    .filter(|&(v, _)| kept.next_if(|&&id| id as usize == v).is_none())
                    .map(|(_, &x)| x as f64 * inv_tau)
                    .collect();
                let tail_max = tail_logits
                    .iter()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = tail_logits.iter().map(|z| (z - tail_max).exp()).sum();
                tail_max + sum.ln() - lse
            }
        };
        TopK {
            logits: ids.iter().map(|&id| logits[id as usize]).collect(),
            ids,
            lse: lse as f32,
            log_tail: log_tail as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::sparse_teacher_row;
    use crate::rng::SplitMix64;

    fn random_logits(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (scale * (2.0 * rng.next_f64() - 1.0)) as f32)
            .collect()
    }

    #[test]
    fn agrees_with_the_oracle() {
        let mut rng = SplitMix64::new(3);
        let mut selector = Selector::default();
        for (vocab, scale) in [(7, 1.0), (1000, 30.0), (1000, 1e4), (49_152, 10.0)] {
            let logits = random_logits(&mut rng, vocab, scale);
            for k in [1, 5, 64, vocab] {
                if k > vocab {
                    continue;
                }
                for tau in [0.5f32, 1.0, 2.0] {
                    let got = selector.top_k(&logits, k, tau);
                    let (ids, log_q, log_tail) = sparse_teacher_row(&logits, k, tau as f64);
                    assert_eq!(got.ids, ids, "V {vocab} k {k}");
                    for (i, (&id, &lq)) in got.ids.iter().zip(&log_q).enumerate() {
                        assert_eq!(got.logits[i], logits[id as usize]);
                        let ours = got.logits[i] as f64 / tau as f64 - got.lse as f64;
                        assert!(
                            (ours - lq as f64).abs() <= 1e-6 * (1.0 + lq.abs() as f64),
                            "V {vocab} k {k} tau {tau}: ln q {ours} vs {lq}"
                        );
                    }
                    if k == vocab {
                        assert_eq!(got.log_tail, f32::NEG_INFINITY);
                    } else {
                        let (a, b) = (got.log_tail as f64, log_tail as f64);
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                            "V {vocab} k {k} tau {tau}: ln tail {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, 3.0];
        let got = Selector::default().top_k(&logits, 2, 1.0);
        assert_eq!(got.ids, vec![1, 3]);
    }
}
