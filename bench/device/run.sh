#!/usr/bin/env bash
# The GPU check, for one NVIDIA H200 through the device tool (under 8 minutes). Expects,
# beside the working tree (carried): .carry/btx.xz (a release `btx`, xz-compressed) and
# .gl/*.deb (the Vulkan loader and GL packages, see DEVELOPERS.md). Writes its figures to
# $OUT (default /tmp/btx-device): the WGPU-vs-CPU logits check, the engine's training
# throughput of a ~91M dense model and its MoE in f32 and in f16 mixed precision, the PyTorch
# reference on the same GPU in f32, bf16 and f16, tokens/s and MFU of each, the MoE-vs-dense
# layer benchmark, the primitives and a host-side profile at
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
# Mixed precision: projections and attention in f16 (cooperative-matrix matmuls where the
# driver offers them), the rest in f32.
timeout 240 "$BTX" bench train --config bench/device/dense-100m.ron --device vulkan --warmup 3 --iters 10 \
    --precision f16 --json "$OUT/engine-f16.json" 2>&1 | tee "$OUT/engine-f16.txt" || echo "engine f16 failed"
for dtype in float32 bfloat16 float16; do
    timeout 90 python3 bench/reference/train_bench.py --engine-json "$OUT/engine.json" --device cuda \
        --dtype $dtype --warmup 3 --iters 10 > "$OUT/torch-$dtype.json" || echo "torch $dtype failed"
done
# Tokens/s and MFU against the H200's dense peak (SXM datasheet: 989 TFLOP/s f16/bf16 on the
# tensor cores, 67 TFLOP/s f32 without them), every run on the same model and batch.
python3 - "$OUT" <<'PY' | tee "$OUT/mfu.txt"
import json, os, sys
out = sys.argv[1]
peak = {"f32": 67.0, "f16": 989.0}
def rows(name):
    path = os.path.join(out, name)
    try:
        text = open(path).read().strip().splitlines()[-1]
        return json.loads(text)["rows"]
    except Exception:
        return None
runs = [("engine f32", "engine.json", "f32"), ("engine f16", "engine-f16.json", "f16"), ("torch float32", "torch-float32.json", "f32"),
        ("torch bfloat16", "torch-bfloat16.json", "f16"), ("torch float16", "torch-float16.json", "f16")]
# FLOPs per token as the engine counts them (6 x active params + attention), for every run.
flops_per_token = {r["model"]: r["tflops"] * 1e12 / r["tokens_per_s"] for r in rows("engine.json") or []}
print(f"{'run':<16} {'model':<6} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>7}")
for label, name, kind in runs:
    for r in rows(name) or []:
        tflops = r["tokens_per_s"] * flops_per_token.get(r["model"], float("nan")) / 1e12
        print(f"{label:<16} {r['model']:<6} {r['tokens_per_s']:>10.0f} {tflops:>9.2f} {100 * tflops / peak[kind]:>6.1f}%")
PY
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
