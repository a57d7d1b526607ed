//! The analysis scripts in scripts/ on inputs whose answers are known: the
//! tokens-to-reach fit recovers a known power law (its own self-test), and
//! the kernel profile sums a CubeCL launch log by family and per step.

use std::path::Path;
use std::process::Command;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn python(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tokens_to_reach_recovers_a_known_curve() {
    let out = python(&[
        script("tokens_to_reach.py").as_os_str(),
        "--self-test".as_ref(),
    ]);
    assert!(out.contains("self-test passed"), "{out}");
}

#[test]
fn kernel_profile_sums_launches_by_family_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("profile.log");
    // Two steps: per step two matrix products (1 ms, 3 ms), one RMSNorm
    // (500 us), one Burn addition (250 us), and a cast and a two-part split
    // for a bf16 product (100 us each); a summary table and other log lines
    // in between are not launches.
    let step = "| 1.0ms      | MatmulEntry | TensorArgs | CudaRuntime\n\
                | 3ms        | MatmulEntry | TensorArgs | CudaRuntime\n\
                | 500µs      | RmsNormRows | CudaRuntime\n\
                | 250.0µs    | KernelBinop | AddOp | CudaRuntime\n\
                | 100µs      | CastElement | CudaRuntime\n\
                | 100µs      | SideBySide | CudaRuntime\n\
                | Name | Duration | Num Computed | Ratio |\n\
                [START_KERNEL_COMPILATION]\n";
    std::fs::write(&log, format!("{step}{step}")).unwrap();
    let out = python(&[
        script("gpu/kernel_profile.py").as_os_str(),
        log.as_os_str(),
        "--steps".as_ref(),
        "2".as_ref(),
    ]);
    assert!(
        out.starts_with("6 launches and 5.0 ms of device time per step (2 steps)"),
        "{out}"
    );
    assert!(
        out.contains("| matrix products | 2 | 4.00 | 81% |"),
        "{out}"
    );
    assert!(
        out.contains("| RMSNorm, RoPE, SwiGLU (ours) | 1 | 0.50 | 10% |"),
        "{out}"
    );
    assert!(
        out.contains("| elementwise (Burn) | 1 | 0.25 | 5% |"),
        "{out}"
    );
    assert!(
        out.contains("| bf16 operands: casts, two-part splits | 2 | 0.20 | 4% |"),
        "{out}"
    );
}
