//! A small seeded generator (SplitMix64) and the shuffle built on it: the
//! one source of randomness for sampling, row selection and random pruning,
//! so that a seed always reproduces the same result.

/// SplitMix64: fast, seedable, good enough for shuffles and sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `0..n` in a uniformly random order (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// Two words into one well-mixed word (for deriving stream seeds).
pub fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ SplitMix64::new(b).next_u64()).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_depend_on_the_seed() {
        let p = SplitMix64::new(3).permutation(50);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(p, SplitMix64::new(3).permutation(50));
        assert_ne!(p, SplitMix64::new(4).permutation(50));
    }
}
