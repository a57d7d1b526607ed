//! Stored rows as the tensors of [`crate::kernels::kd::SparseTeacher`].

use anyhow::{Result, ensure};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::store::TeacherLogitsStore;
use crate::kernels::kd::SparseTeacher;

/// The teacher of dataset rows `rows` (a micro-batch, in order) over their
/// first `positions` positions: `[rows * positions, K]` ids and
/// log-probabilities at the store's temperature, and the tails' logs.
pub fn sparse_teacher<B: Backend>(
    store: &TeacherLogitsStore,
    rows: &[usize],
    positions: usize,
    device: &B::Device,
) -> Result<SparseTeacher<B>> {
    let h = &store.header;
    ensure!(
        positions <= h.positions,
        "the teacher logits cover {} positions per row, {positions} are asked for",
        h.positions
    );
    let decoded = rows
        .par_iter()
        .map(|&i| store.row(i))
        .collect::<Result<Vec<_>>>()?;
    let k = h.top_k;
    let n = rows.len() * positions;
    let inv_tau = 1.0 / h.temperature as f64;
    let (mut ids, mut log_probs, mut log_tail) = (
        Vec::with_capacity(n * k),
        Vec::with_capacity(n * k),
        Vec::with_capacity(n),
    );
    for row in &decoded {
        let kept = positions * k;
        ids.extend(row.ids[..kept].iter().map(|&id| id as i64));
        for (p, logits) in row.logits[..kept].chunks_exact(k).enumerate() {
            let lse = row.lse[p] as f64;
            log_probs.extend(logits.iter().map(|&x| (x as f64 * inv_tau - lse) as f32));
        }
        log_tail.extend_from_slice(&row.log_tail[..positions]);
    }
    Ok(SparseTeacher {
        ids: Tensor::from_data(TensorData::new(ids, [n, k]), device),
        log_probs: Tensor::from_data(TensorData::new(log_probs, [n, k]), device),
        log_tail: Tensor::from_data(TensorData::new(log_tail, [n]), device),
    })
}
