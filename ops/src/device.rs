//! Which device a recipe's `device:` means on this machine.

use distillery_engine::Device;

/// Resolves `auto` to the best device present; asking for `cuda` where
/// there is none is an error that says why.
pub fn resolve(requested: Device) -> Result<Device, String> {
    match requested {
        Device::Cpu => Ok(Device::Cpu),
        Device::Auto => Ok(if cuda_available() {
            Device::Cuda
        } else {
            Device::Cpu
        }),
        Device::Cuda if cuda_available() => Ok(Device::Cuda),
        Device::Cuda if cfg!(feature = "cuda") => {
            Err("the recipe asks for `device: cuda`, but no CUDA device was found".into())
        }
        Device::Cuda => Err(
            "the recipe asks for `device: cuda`, but this build has no CUDA support \
             (rebuild with `--features cuda`, or use `device: cpu`)"
                .into(),
        ),
    }
}

/// Whether a CUDA device can be used; never panics.
fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        // Loading the driver library is the probe: without a driver there is
        // no device, and creating a client would panic.
        ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("ldconfig -p | grep -q {name}"))
                .status()
                .is_ok_and(|s| s.success())
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}
