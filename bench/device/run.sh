#!/usr/bin/env bash
# The GPU check, for one NVIDIA H200 through the device tool (under 8 minutes). Expects,
# beside the working tree (carried): .carry/btx.xz (a release `btx`, xz-compressed) and
# .gl/*.deb (the Vulkan loader and GL packages, see DEVELOPERS.md). Writes its figures to
# $OUT (default /tmp/btx-device): the WGPU-vs-CPU logits check, the engine's training
# throughput of a ~91M dense model and its MoE, the PyTorch reference on the same GPU in
# f32 and bf16, the MoE-vs-dense layer benchmark, the primitives and a host-side profile at
# the GPU size, and the WGPU test group (tests/wgpu.rs) on
# Vulkan (SPIR-V kernels; CI runs the same group on OpenGL, WGSL translated to GLSL) when
# .carry/integration.xz (the integration test binary) is there.
#
# Prepare here (once per build; the stripped, xz-compressed binary is about 15 MB):
#   cargo build --release -p btx-engine
#   mkdir -p .carry && cp "${CARGO_TARGET_DIR:-target}/release/btx" .carry/btx && strip .carry/btx \
#       && xz -T2 -f .carry/btx && printf '.carry/\n.gl/\n' >> .git/info/exclude
#   cp "$(cargo test --release --no-run --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*integration[^"]*"' \
#       | cut -d'"' -f4)" .carry/integration && strip .carry/integration && xz -T2 -f .carry/integration
#   (and .gl/ as DEVELOPERS.md shows), then through the device tool:
#   run(command: "bash bench/device/run.sh && cp -r /tmp/btx-device/. $OUT/", carry: [".carry", ".gl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
BTX=.carry/btx
if [ -f .carry/btx.xz ]; then xz -dkf .carry/btx.xz; fi
chmod +x "$BTX"
OUT=${OUT:-/tmp/btx-device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$BTX" devices --check --device vulkan 2>&1 | tee "$OUT/check.txt"
timeout 240 "$BTX" bench train --config bench/device/dense-100m.ron --device vulkan --warmup 3 --iters 10 \
    --json "$OUT/engine.json" 2>&1 | tee "$OUT/engine.txt"
for dtype in float32 bfloat16; do
    timeout 90 python3 bench/reference/train_bench.py --engine-json "$OUT/engine.json" --device cuda \
        --dtype $dtype --warmup 3 --iters 10 > "$OUT/torch-$dtype.json" || echo "torch $dtype failed"
done
timeout 90 "$BTX" bench moe --device vulkan --d-model 768 --expert-d-ff 2048 --layers 4 --batch 16 \
    --seq-len 512 2>&1 | tee "$OUT/moe.txt" || echo "bench moe failed"
# Where a step's time goes at the GPU size: the primitives alone, and a CPU-side profile of
# the training benchmark when perf is there (the host's share of a GPU step: launches, reads).
timeout 60 "$BTX" bench ops --config bench/device/dense-100m.ron --device vulkan 2>&1 | tee "$OUT/ops.txt" || echo "bench ops failed"
if command -v perf >/dev/null; then
    timeout 120 perf record -e cpu-clock -F 499 -o "$OUT/perf.data" "$BTX" bench train --config bench/device/dense-100m.ron \
        --device vulkan --warmup 2 --iters 5 >/dev/null 2>&1 || true
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null | head -60 > "$OUT/profile.txt" || true
fi
if [ -f .carry/integration.xz ]; then
    xz -dkf .carry/integration.xz && chmod +x .carry/integration
    BTX_REPO_ROOT=$PWD BTX_REQUIRE_WGPU=1 timeout 300 .carry/integration wgpu_ --nocapture 2>&1 | tee "$OUT/wgpu-tests.txt" \
        || echo "wgpu tests failed"
fi
