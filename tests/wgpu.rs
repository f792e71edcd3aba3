//! WGPU against the CPU backend: the same weights give the same logits to float tolerance.
//! Runs only where WGPU finds a hardware GPU adapter (software Vulkan is known to crash in
//! Burn's kernels); elsewhere it reports itself skipped.

use btx::device::{DeviceChoice, compare_logits_with_cpu, hardware_adapters, select_device};

#[test]
fn wgpu_logits_match_cpu() {
    if hardware_adapters().is_empty() {
        eprintln!("SKIPPED wgpu_logits_match_cpu: no hardware GPU adapter on this machine");
        return;
    }
    let gpu = select_device(DeviceChoice::Wgpu).unwrap().device;
    let (diff, scale) = compare_logits_with_cpu(&gpu);
    assert!(diff <= 1e-4 * scale.max(1.0), "max difference {diff} (logit scale {scale})");
}
