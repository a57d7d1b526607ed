#!/usr/bin/env bash
# The test command: every test of the workspace, the CubeCL kernels on wgpu
# included, which Mesa's software Vulkan (lavapipe) runs on the CPU.
# Arguments go to `cargo test` (for example `--locked`, a test name filter,
# or `-- --nocapture`).
#
# Without a Vulkan driver the kernel tests on wgpu are skipped with a note
# saying how to install one; under CI=true that fails instead, as tests that
# lack ../shared/assets do (testkit/ holds that policy for the Rust tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Vulkan loader and at least one driver (an ICD manifest).
vulkan_driver() {
    ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null || return 1
    compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null || compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null
}
install="apt-get install -y mesa-vulkan-drivers libvulkan1"

if vulkan_driver; then
    # One build for everything: the feature only adds the kernel tests on
    # wgpu (kernels_importance, kernels_kd_cube), so the rest runs as in a
    # plain `cargo test --workspace`, which a second build would repeat.
    exec cargo test --workspace --features distillery-ops/wgpu "$@"
fi
if [ "${CI:-}" = true ]; then
    echo "error: a Vulkan driver is missing, and under CI=true the kernel tests on wgpu must run ($install)" >&2
    exit 1
fi
cargo test --workspace "$@"
echo "skipped: the CubeCL kernel tests on wgpu: a Vulkan driver is missing (install Mesa's: sudo $install)" >&2
