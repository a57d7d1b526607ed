//! How much memory a step took, for the benches: the process's peak
//! resident set on the CPU, and on a CubeCL device what its memory pool
//! holds (the pool keeps what it reserved, so after a step its reservation
//! is the step's high-water mark, plus the pool's rounding).

use burn::tensor::backend::Backend;

/// One backend's figure.
#[derive(Debug, Clone, Copy)]
pub enum MemoryFigure {
    /// The process's peak resident set, in bytes (the host's memory).
    PeakResident(u64),
    /// The device pool's reservation and what of it is in use, in bytes.
    DevicePool { reserved: u64, in_use: u64 },
}

impl std::fmt::Display for MemoryFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        match *self {
            Self::PeakResident(bytes) => {
                write!(f, "peak resident memory {:.2} GiB", gib(bytes))
            }
            Self::DevicePool { reserved, in_use } => write!(
                f,
                "device memory reserved {:.2} GiB ({:.2} GiB in use now)",
                gib(reserved),
                gib(in_use)
            ),
        }
    }
}

pub trait MemoryOps: Backend {
    /// `None` where the figure cannot be read.
    fn memory_figure(device: &Self::Device) -> Option<MemoryFigure>;
}

impl MemoryOps for burn::backend::Flex {
    fn memory_figure(_: &Self::Device) -> Option<MemoryFigure> {
        peak_resident().map(MemoryFigure::PeakResident)
    }
}

/// `getrusage`'s peak resident set of this process.
fn peak_resident() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; it is read only when
    // the call succeeds.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    // Linux reports kibibytes.
    ok.then(|| unsafe { usage.assume_init() }.ru_maxrss as u64 * 1024)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R, F, I, BT> MemoryOps for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    fn memory_figure(device: &Self::Device) -> Option<MemoryFigure> {
        let usage = R::client(device).memory_usage().ok()?;
        Some(MemoryFigure::DevicePool {
            reserved: usage.bytes_reserved,
            in_use: usage.bytes_in_use,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_figure_is_this_process_peak_resident_set() {
        let before = match burn::backend::Flex::memory_figure(&Default::default()) {
            Some(MemoryFigure::PeakResident(bytes)) => bytes,
            other => panic!("{other:?}"),
        };
        // Touching more than the peak so far raises the peak past it.
        let touched = vec![1u8; before as usize + (64 << 20)];
        assert!(touched.iter().step_by(4096).all(|&b| b == 1));
        let after = match burn::backend::Flex::memory_figure(&Default::default()) {
            Some(MemoryFigure::PeakResident(bytes)) => bytes,
            other => panic!("{other:?}"),
        };
        assert!(before > 1 << 20, "{before}");
        assert!(after >= before + (64 << 20), "{before} -> {after}");
    }
}
