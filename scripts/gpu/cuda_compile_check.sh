#!/usr/bin/env bash
# The tensor-core kernels compiled for CUDA on a machine with no GPU: run it
# before spending device time on them.
#
# 1. Installs CUDA 13.0's NVRTC, headers and ptxas from the Python package
#    index into a virtual environment (13.0: the GPU machines' driver and
#    toolkit).
# 2. Runs ops/tests/kernels_cuda_source.rs in a `cuda` + `wgpu` build: every
#    tensor-core attention kernel, under every plan, made by CubeCL's CUDA
#    compiler and compiled by NVRTC for sm_80 and sm_90a; the plans the
#    dispatch picks fit the cards' shared memory.
# 3. Reads each sm_90a kernel's registers, spills and stack off ptxas
#    (the GPU's driver compiles the same PTX when CubeCL loads it).
#
# Usage: scripts/gpu/cuda_compile_check.sh [OUT]   (default target/cuda-source;
# the sources and PTX are kept there). DISTILLERY_CUDA_TOOLS moves the
# virtual environment (default target/cuda-tools).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=${DISTILLERY_CUDA_TOOLS:-target/cuda-tools}
out=$(realpath -m "${1:-target/cuda-source}")

if [ ! -x "$tools/venv/bin/pip" ]; then
    python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88
toolkit=$(realpath "$tools"/venv/lib/python3*/site-packages/nvidia/cu13)
for needed in include/mma.h include/cuda_fp16.h lib/libnvrtc.so.13 bin/ptxas; do
    if [ ! -e "$toolkit/$needed" ]; then
        echo "the CUDA packages left no $needed under $toolkit" >&2
        exit 1
    fi
done

rm -rf "$out"
# Not CUDA_PATH: cudarc's build script reads it, and would rebuild.
DISTILLERY_CUDA_TOOLKIT=$toolkit DISTILLERY_CUDA_SOURCE_OUT=$out \
    LD_LIBRARY_PATH="$toolkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --locked -p distillery-ops --features cuda,wgpu \
    --test kernels_cuda_source -- --nocapture

echo
echo "sm_90a, ptxas $("$toolkit/bin/ptxas" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'):"
printf '%-50s %10s %12s %12s\n' kernel registers "spill bytes" "stack bytes"
for ptx in "$out"/*.sm_90a.ptx; do
    info=$("$toolkit/bin/ptxas" -arch=sm_90a -v "$ptx" -o /dev/null 2>&1)
    registers=$(sed -n 's/.*Used \([0-9]*\) registers.*/\1/p' <<<"$info")
    spills=$(sed -n 's/.*, \([0-9]*\) bytes spill stores.*/\1/p' <<<"$info")
    stack=$(sed -n 's/.* \([0-9]*\) bytes stack frame.*/\1/p' <<<"$info")
    printf '%-50s %10s %12s %12s\n' "$(basename "$ptx" .sm_90a.ptx)" "$registers" "$spills" "$stack"
done
