//! WGPU against the CPU backend: the same weights give the same logits to float tolerance.
//! Runs only where WGPU finds a hardware GPU adapter (software Vulkan is known to crash in
//! Burn's kernels); elsewhere it reports itself skipped.

use btx::burn::prelude::*;
use btx::checkpoint::module_tensors::{module_from_tensors, module_to_tensors};
use btx::device::{DeviceChoice, hardware_adapters, select_device};
use btx::model::LanguageModel;

use crate::common::*;

#[test]
fn wgpu_logits_match_cpu() {
    if hardware_adapters().is_empty() {
        eprintln!("SKIPPED wgpu_logits_match_cpu: no hardware GPU adapter on this machine");
        return;
    }
    let gpu = select_device(DeviceChoice::Wgpu).unwrap().device;
    let config = tiny_model(4, 2);
    let cpu_device = cpu();
    cpu_device.seed(3);
    let cpu_model = LanguageModel::new(&config, &cpu_device);
    let tensors = module_to_tensors(&cpu_model);
    let gpu_model = module_from_tensors(LanguageModel::new(&config, &gpu), &tensors, "test").unwrap();
    let tokens = random_tokens(2, 32, config.vocab_size, 9, &cpu_device);
    let gpu_tokens = Tensor::<2, Int>::from_data(tokens.to_data(), &gpu);
    let a = to_vec(cpu_model.forward(tokens));
    let b = to_vec(gpu_model.forward(gpu_tokens));
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= 1e-4 * scale.max(1.0), "max difference {diff} (logit scale {scale})");
}
