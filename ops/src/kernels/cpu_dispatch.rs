//! Run-time choice of the widest vector instructions for the CPU twins' hot
//! loops: the build targets baseline x86-64, so each loop is compiled again
//! for AVX-512 and AVX2 (both with FMA) and picked once per process.

/// The instruction sets a hot loop is compiled for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The widest set this CPU supports. Both vector tiers require FMA, since
/// their builds enable it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn isa() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if has!("avx512f") && has!("avx512vl") && has!("fma") {
            Isa::Avx512
        } else if has!("avx2") && has!("fma") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    })
}

/// Declares `pub fn $name` that runs `$body` built for AVX-512, AVX2 or the
/// baseline, whichever this CPU supports; `baseline = $path` runs another
/// function on the baseline (e.g. one that avoids software FMA).
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:path $(, baseline = $base:path)?;) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::cpu_dispatch::{Isa, isa};
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match isa() {
                    // SAFETY: `isa` detected these features on this CPU.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $crate::kernels::cpu_dispatch::dispatch!(@baseline $body $(, $base)?)($($arg),*)
        }
    };
    (@baseline $body:path) => { $body };
    (@baseline $body:path, $base:path) => { $base };
}

pub(crate) use dispatch;
