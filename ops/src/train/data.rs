//! Which rows each optimizer step trains on, and how a micro-batch of rows
//! becomes tensors: a deterministic order from the seed (so a resumed run
//! sees the same rows), and per-token loss weights that make the sum over a
//! global batch the mean over its target tokens.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::tokens_tensor;
use crate::rng::{SplitMix64, mix};

/// Sample `i` of the run is row `order(i)`: epoch `i / rows` visits every
/// row once, in a permutation seeded by the run's seed and the epoch.
#[derive(Debug, Clone)]
pub struct DataOrder {
    rows: usize,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(rows: usize, seed: u64) -> Self {
        assert!(rows > 0, "a data order over no rows");
        Self {
            rows,
            seed,
            epoch: None,
        }
    }

    /// The row of sample `i` (counting from the start of the run).
    pub fn row(&mut self, i: u64) -> usize {
        let epoch = i / self.rows as u64;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let perm = SplitMix64::new(mix(self.seed, epoch)).permutation(self.rows);
            self.epoch = Some((epoch, perm));
        }
        let (_, perm) = self.epoch.as_ref().expect("set above");
        perm[(i % self.rows as u64) as usize]
    }
}

/// One row to train on: its tokens and, for masked data, which tokens are
/// targets (`mask[j] != 0`: token `j` is predicted from tokens `..j`).
#[derive(Debug, Clone, Copy)]
pub struct TrainRow<'a> {
    /// The row's index in its dataset split (what stored teacher logits
    /// are looked up by).
    pub index: usize,
    pub tokens: &'a [u32],
    pub mask: Option<&'a [u8]>,
}

impl TrainRow<'_> {
    /// Target tokens of the row: positions `1..len` that the mask keeps.
    pub fn targets(&self) -> usize {
        match self.mask {
            None => self.tokens.len().saturating_sub(1),
            Some(m) => m[1..].iter().filter(|&&b| b != 0).count(),
        }
    }
}

/// A micro-batch as tensors: `inputs` and `targets` `[rows, seq - 1]`, and
/// the loss weight of each position, flattened `[rows * (seq - 1)]`.
pub struct MicroBatch<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
    pub weights: Tensor<B, 1>,
    /// Target tokens in this micro-batch (positions of non-zero weight).
    pub target_count: usize,
    /// The rows' indices in their dataset split, in batch order (the
    /// training split wherever an objective sees them: the held-out loss is
    /// the student's own cross-entropy and needs no objective).
    pub rows: Vec<usize>,
}

impl<B: Backend> MicroBatch<B> {
    /// `weight_per_target` is `1 / (targets in the whole global batch)`.
    pub fn new(rows: &[TrainRow], weight_per_target: f32, device: &B::Device) -> Self {
        let seq = rows[0].tokens.len();
        let inputs: Vec<&[u32]> = rows.iter().map(|r| &r.tokens[..seq - 1]).collect();
        let targets: Vec<&[u32]> = rows.iter().map(|r| &r.tokens[1..]).collect();
        let mut weights = Vec::with_capacity(rows.len() * (seq - 1));
        let mut target_count = 0;
        for r in rows {
            for j in 1..seq {
                let on = r.mask.is_none_or(|m| m[j] != 0);
                target_count += on as usize;
                weights.push(if on { weight_per_target } else { 0.0 });
            }
        }
        let n = weights.len();
        Self {
            inputs: tokens_tensor(&inputs, device),
            targets: tokens_tensor(&targets, device),
            weights: Tensor::from_data(TensorData::new(weights, [n]), device),
            target_count,
            rows: rows.iter().map(|r| r.index).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_every_row_once_in_a_seeded_order() {
        let mut a = DataOrder::new(10, 7);
        let first: Vec<usize> = (0..10).map(|i| a.row(i)).collect();
        let second: Vec<usize> = (10..20).map(|i| a.row(i)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(first, second, "epochs are shuffled differently");
        // A fresh order (a resumed run) agrees at any position.
        let mut b = DataOrder::new(10, 7);
        assert_eq!(b.row(13), second[3]);
        assert_eq!(b.row(2), first[2]);
        assert_ne!(
            (0..10)
                .map(|i| DataOrder::new(10, 8).row(i))
                .collect::<Vec<_>>(),
            first
        );
    }

    #[test]
    fn masks_count_targets_from_the_second_token() {
        let tokens = [1, 2, 3, 4];
        let mask = [1, 0, 1, 1];
        let row = TrainRow {
            index: 0,
            tokens: &tokens,
            mask: Some(&mask),
        };
        assert_eq!(row.targets(), 2);
        let plain = TrainRow {
            index: 0,
            tokens: &tokens,
            mask: None,
        };
        assert_eq!(plain.targets(), 3);
    }
}
