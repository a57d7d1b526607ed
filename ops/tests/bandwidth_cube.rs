#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The device copy bandwidth that `bench importance` and `bench kd` compare
//! their kernels with, measured on the CubeCL backend (lavapipe here): its
//! passes run and their result reads back. On lavapipe a 256 MiB tensor
//! failed to allocate, and the bench printed a bandwidth of passes that
//! never ran. Not a timing: only that the measurement runs.

mod cube_support;

use cube_support::{Cube, device, device_present};
use distillery_ops::kernels::bandwidth::measure_device_copy_bandwidth;

#[test]
fn the_device_copy_bandwidth_is_measured_on_passes_that_ran() {
    if !device_present() {
        return;
    }
    let bytes_per_second = measure_device_copy_bandwidth::<Cube>(&device())
        .unwrap_or_else(|e| panic!("copy bandwidth: {e}"));
    assert!(
        bytes_per_second.is_finite() && bytes_per_second > 0.0,
        "copy bandwidth {bytes_per_second} B/s"
    );
}
