//! Scalar `exp2` and `ln` written so that the compiler vectorizes the loops
//! that call them (libm's calls do not vectorize), shared by the CPU twins.
//! `FMA` selects fused multiply-adds: set it in code compiled for a CPU
//! tier that has them ([`super::cpu_dispatch`]), never on baseline x86-64,
//! where `mul_add` is a slow libm call.

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `2^x` for `x <= 0` (0 at and below -126, where it leaves the normal
/// range, and for NaN): `x = k + f` with `k` an integer and `|f| <= 1/2`,
/// `2^f` by a degree-5 minimax polynomial (relative error 7.5e-8; about
/// 2e-7 once evaluated in f32), `2^k` from its bits.
#[inline(always)]
pub(crate) fn exp2_nonpos<const FMA: bool>(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let in_range = x > -126.0;
    let kf = x + MAGIC;
    let k = kf - MAGIC;
    let f = x - k;
    let mut p = 1.327_647_1e-3f32;
    p = fmadd::<FMA>(p, f, 9.675_541e-3);
    p = fmadd::<FMA>(p, f, 5.550_713e-2);
    p = fmadd::<FMA>(p, f, 2.402_212e-1);
    p = fmadd::<FMA>(p, f, 6.931_469_4e-1);
    p = fmadd::<FMA>(p, f, 1.000_000_1);
    // k is in [-126, 0] where the result is kept: 2^k from its bits.
    let two_k = f32::from_bits(kf.to_bits().wrapping_add(127) << 23);
    if in_range { p * two_k } else { 0.0 }
}

/// `ln x` for a normal positive `x`: Cephes' `logf`. Relative error about
/// 2e-7 (absolute near `x = 1`).
#[inline(always)]
pub(crate) fn ln_pos<const FMA: bool>(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32 - 126) as f32;
    // Mantissa in [0.5, 1).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    let e = if small { e - 1.0 } else { e };
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let mut y = 7.037_683_6e-2f32;
    y = fmadd::<FMA>(y, m, -1.151_461e-1);
    y = fmadd::<FMA>(y, m, 1.167_699_9e-1);
    y = fmadd::<FMA>(y, m, -1.242_014_1e-1);
    y = fmadd::<FMA>(y, m, 1.424_932_3e-1);
    y = fmadd::<FMA>(y, m, -1.666_805_8e-1);
    y = fmadd::<FMA>(y, m, 2.000_071_4e-1);
    y = fmadd::<FMA>(y, m, -2.499_999_4e-1);
    y = fmadd::<FMA>(y, m, 3.333_333e-1);
    let y = fmadd::<FMA>(e, -2.121_944_4e-4, y * m * z);
    let y = fmadd::<FMA>(-0.5, z, y);
    fmadd::<FMA>(e, 0.693_359_4, m + y)
}

/// `ln (e^a + e^b)` in f64, `-inf` when both are.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let hi = a.max(b);
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + ((a - hi).exp() + (b - hi).exp()).ln()
}
