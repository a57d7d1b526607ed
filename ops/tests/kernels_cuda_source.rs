//! The tensor-core attention kernels compile for CUDA, checked without a
//! GPU: CubeCL's CUDA compiler makes their C++ (`kernels::cuda_source`),
//! NVRTC compiles it for sm_80 and sm_90a, and the plans CUDA's dispatch
//! picks fit the cards' shared memory with the kernels' real declarations.
//!
//! Runs only in a build with both `cuda` and `wgpu`, and needs NVRTC on the
//! library path and a CUDA toolkit's headers under
//! `$DISTILLERY_CUDA_TOOLKIT/include`:
//! `scripts/gpu/cuda_compile_check.sh` installs both from the Python
//! package index, runs this file, and reads registers and spills off
//! `ptxas`. With `DISTILLERY_CUDA_SOURCE_OUT` set, every source and its PTX
//! are written there.
#![cfg(all(feature = "cuda", feature = "wgpu"))]

use burn::tensor::DType;
use distillery_ops::kernels::cuda_source::{
    CudaArch, CudaKernelSource, attention_tile_sources, nvrtc_ptx, sixteen_bit_sources,
};
use distillery_ops::kernels::{
    BackwardTilePlan, TilePlan, tile_plan_backward_within, tile_plan_within,
};
use std::path::PathBuf;

/// The toolkit headers NVRTC includes (`cuda_fp16.h`, `mma.h`), under
/// `DISTILLERY_CUDA_TOOLKIT`. Not `CUDA_PATH`: cudarc's build script reads
/// that one, and setting it would rebuild the CUDA crates.
fn cuda_include() -> PathBuf {
    let root = std::env::var_os("DISTILLERY_CUDA_TOOLKIT").expect(
        "DISTILLERY_CUDA_TOOLKIT names a CUDA toolkit with include/cuda_fp16.h and \
         include/mma.h (scripts/gpu/cuda_compile_check.sh installs one)",
    );
    let include = PathBuf::from(root).join("include");
    assert!(
        include.join("mma.h").is_file(),
        "{} has no mma.h",
        include.display()
    );
    include
}

/// Writes the source and its PTX where `DISTILLERY_CUDA_SOURCE_OUT` says.
fn keep(source: &CudaKernelSource, arch: CudaArch, ptx: &str) {
    let Some(dir) = std::env::var_os("DISTILLERY_CUDA_SOURCE_OUT") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("the output folder");
    let stem = format!(
        "{}.{}",
        source.label.replace([' ', '/'], "_"),
        arch.nvrtc_target()
    );
    std::fs::write(dir.join(format!("{stem}.cu")), &source.source).expect("the source");
    std::fs::write(dir.join(format!("{stem}.ptx")), ptx).expect("the PTX");
}

/// Every plan shape the dispatch can pick: 1, 2 or 4 planes a cube, tiles
/// of 1, 2 or 4 fragments.
fn every_plan() -> Vec<TilePlan> {
    let mut plans = Vec::new();
    for planes in [1u32, 2, 4] {
        for tile_frags in [1usize, 2, 4] {
            plans.push(TilePlan {
                planes,
                tile_frags,
                matrix_units: true,
            });
        }
    }
    plans
}

#[test]
fn attention_tiles_compile_for_cuda_under_every_plan() {
    let include = cuda_include();
    let mut failures = Vec::new();
    let mut compiled = 0;
    for arch in CudaArch::ALL {
        for d in [64, 128] {
            for plan in every_plan() {
                let backward = BackwardTilePlan {
                    dq: plan,
                    dkv: plan,
                };
                let sources = match attention_tile_sources(d, plan, backward, arch) {
                    Ok(sources) => sources,
                    Err(err) => {
                        failures.push(err);
                        continue;
                    }
                };
                assert_eq!(
                    sources.len(),
                    6,
                    "four forwards (inference and training, each writing f32 and bf16), \
                     dq and dk/dv"
                );
                for source in &sources {
                    // The products are tensor-core instructions, not their
                    // emulation.
                    assert!(
                        source.source.contains("wmma::mma_sync"),
                        "{}: no tensor-core product in the source",
                        source.label
                    );
                    // A forward writing bf16 rounds its accumulators to it.
                    if source.label.ends_with("out BF16") {
                        assert!(
                            source.source.contains("__nv_bfloat16"),
                            "{}: no bf16 in the source",
                            source.label
                        );
                    }
                    match nvrtc_ptx(source, arch, &include) {
                        Ok(ptx) => {
                            assert!(
                                ptx.contains(&format!(".entry {}", source.entry_point)),
                                "{}: the PTX has no entry {}",
                                source.label,
                                source.entry_point
                            );
                            keep(source, arch, &ptx);
                            compiled += 1;
                        }
                        Err(err) => failures.push(err),
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} kernels failed:\n{}",
        failures.len(),
        failures.len() + compiled,
        failures.join("\n\n")
    );
}

#[test]
fn sixteen_bit_casts_compile_for_cuda() {
    let include = cuda_include();
    for arch in CudaArch::ALL {
        let sources = sixteen_bit_sources(arch).expect("sources");
        assert!(sources.iter().any(|s| s.source.contains("__nv_bfloat16")));
        for source in &sources {
            let ptx = nvrtc_ptx(source, arch, &include).unwrap_or_else(|err| panic!("{err}"));
            keep(source, arch, &ptx);
        }
    }
}

/// The check can fail: NVRTC's rejection comes back as an error that names
/// the kernel and carries NVRTC's log.
#[test]
fn a_source_nvrtc_rejects_is_an_error_with_its_log() {
    let source = CudaKernelSource {
        label: "a broken kernel".into(),
        entry_point: "broken".into(),
        source: "extern \"C\" __global__ void broken() { undeclared_name = 1; }".into(),
        shared_memory_bytes: 0,
    };
    let err = nvrtc_ptx(&source, CudaArch::Hopper, &cuda_include()).unwrap_err();
    assert!(
        err.contains("a broken kernel")
            && err.contains("sm_90a")
            && err.contains("undeclared_name"),
        "{err}"
    );
}

/// At the shapes the benches run, CUDA's dispatch finds plans for both
/// directions, and the kernels of those plans declare no more shared memory
/// than the card gives a cube: the plans' byte counts are estimates made
/// before the kernels exist, and a launch past the limit fails.
#[test]
fn picked_plans_fit_the_cards_shared_memory() {
    for arch in CudaArch::ALL {
        let limit = arch.shared_memory_limit();
        for (seq, d) in [(512, 64), (512, 128), (2048, 64), (16, 64)] {
            let forward = tile_plan_within(limit, seq, seq, d, DType::F16, true)
                .unwrap_or_else(|| panic!("{arch:?}: no forward plan at seq {seq}, d {d}"));
            let backward =
                tile_plan_backward_within(limit, seq, seq, d, [DType::F16, DType::BF16], true)
                    .unwrap_or_else(|| panic!("{arch:?}: no backward plan at seq {seq}, d {d}"));
            let sources = attention_tile_sources(d, forward, backward, arch).expect("sources");
            for source in &sources {
                assert!(
                    source.shared_memory_bytes > 0 && source.shared_memory_bytes <= limit,
                    "{arch:?}, seq {seq}, d {d}: {} declares {} bytes of shared memory \
                     (limit {limit})",
                    source.label,
                    source.shared_memory_bytes
                );
                println!(
                    "{arch:?} seq {seq} d {d}: {} takes {} bytes of shared memory",
                    source.label, source.shared_memory_bytes
                );
            }
        }
    }
}
