//! Whether this machine runs the AMX products: the CPU's tiles and the
//! AVX-512 conversions the packing uses, and the kernel's permission for
//! the process's tile data.

/// Whether this CPU and kernel run AMX bf16 tiles (checked once; the first
/// call asks the kernel for the tile-data permission).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        let packing = has!("avx512f") && has!("avx512bw") && has!("avx512bf16");
        cpu_has_amx_bf16() && packing && request_tile_permission()
    })
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}
