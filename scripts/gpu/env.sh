# Sourced by the GPU scripts: where the CUDA libraries are (cudarc opens
# libcuda and libnvrtc at run time; CubeCL's runtime compiles kernels with
# NVRTC, which needs the toolkit's headers), and the unpacked binaries.
cuda_root=/usr/local/cuda
if command -v nvcc >/dev/null; then cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
export CUDA_PATH=${CUDA_PATH:-$cuda_root} CUDA_HOME=${CUDA_HOME:-$cuda_root}
for d in "$cuda_root/lib64" "$cuda_root/targets/x86_64-linux/lib" \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
BIN=/tmp/distillery-gpu
mkdir -p "$BIN"
for f in .gpu/*/*.xz; do
    [ -f "$f" ] || continue
    out=$BIN/$(basename "$f" .xz)
    [ -x "$out" ] || { xz -dc "$f" >"$out" && chmod +x "$out"; }
done
export PATH=$BIN:$PATH
