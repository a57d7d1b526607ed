//! Inputs and tolerances shared by the KD kernel tests (the Flex twin and
//! the CubeCL kernel), so both are held to the same cases.

use distillery_ops::rng::SplitMix64;

/// Relative error allowed on the loss.
pub const LOSS_TOL: f64 = 1e-5;
/// Error allowed on a gradient entry, in each test's gradient scale.
pub const GRAD_TOL: f64 = 1e-6;

pub const TEMPERATURES: [f32; 3] = [0.5, 1.0, 2.0];
pub const SCALES: [f64; 3] = [1.0, 30.0, 1e4];

/// `len` values uniform in `[-scale, scale)`.
pub fn logits(rng: &mut SplitMix64, len: usize, scale: f64) -> Vec<f32> {
    (0..len)
        .map(|_| (scale * (2.0 * rng.next_f64() - 1.0)) as f32)
        .collect()
}

/// Token-mean weights with every third row (from the second) masked.
pub fn weights(rows: usize) -> Vec<f32> {
    let masked = |n: usize| n % 3 == 1;
    let count = (0..rows).filter(|&n| !masked(n)).count().max(1);
    (0..rows)
        .map(|n| if masked(n) { 0.0 } else { 1.0 / count as f32 })
        .collect()
}
