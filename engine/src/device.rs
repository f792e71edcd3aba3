//! Choosing the compute device at run time: one model code, any backend.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::DeviceKind;
use burn::tensor::wgpu::wgpu;

/// What `--device` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The first hardware GPU adapter WGPU finds, else the CPU.
    Auto,
    /// Burn's pure-Rust CPU backend (Flex).
    Cpu,
    /// WGPU with the graphics API it prefers on this machine.
    Wgpu,
    /// WGPU pinned to Vulkan (SPIR-V kernels).
    Vulkan,
    /// WGPU pinned to Metal (macOS).
    Metal,
    /// WGPU on DirectX 12 (Windows).
    Dx12,
}

/// A selected device and a line that says what it is.
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
}

/// The hardware (non-software) GPU adapters WGPU can see, as `name (backend, type)`.
pub fn hardware_adapters() -> Vec<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    futures_lite::future::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| a.get_info())
        .filter(|info| info.device_type != wgpu::DeviceType::Cpu)
        .map(|info| format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
        .collect()
}

pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice> {
    let cpu = || SelectedDevice {
        device: Device::flex(),
        description: format!("cpu (Burn Flex, {} threads)", rayon_threads()),
    };
    let gpu = |device: Device, api: &str| -> Result<SelectedDevice> {
        let adapters = hardware_adapters();
        let Some(name) = adapters.first() else {
            bail!(
                "--device {api}: WGPU found no hardware GPU adapter (software adapters such as \
                 lavapipe are not used); use --device cpu or --device auto"
            );
        };
        Ok(SelectedDevice { device, description: format!("{api}: {name}") })
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => {
            if hardware_adapters().is_empty() {
                Ok(cpu())
            } else {
                gpu(Device::wgpu(DeviceKind::DefaultDevice), "wgpu")
            }
        }
        DeviceChoice::Wgpu => gpu(Device::wgpu(DeviceKind::DefaultDevice), "wgpu"),
        DeviceChoice::Vulkan => gpu(Device::vulkan(DeviceKind::DefaultDevice), "vulkan"),
        DeviceChoice::Metal => metal(gpu),
        DeviceChoice::Dx12 => {
            if cfg!(windows) {
                gpu(Device::wgpu(DeviceKind::DefaultDevice), "dx12")
            } else {
                bail!("--device dx12: DirectX 12 exists only on Windows; use --device vulkan or auto")
            }
        }
    }
}

#[cfg(target_os = "macos")]
fn metal(gpu: impl Fn(Device, &str) -> Result<SelectedDevice>) -> Result<SelectedDevice> {
    gpu(Device::metal(DeviceKind::DefaultDevice), "metal")
}

#[cfg(not(target_os = "macos"))]
fn metal(_: impl Fn(Device, &str) -> Result<SelectedDevice>) -> Result<SelectedDevice> {
    bail!("--device metal: Metal exists only on macOS; use --device vulkan or auto")
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs a small random model on `device` and on the CPU with the same weights; returns
/// (max |logit difference|, largest |logit|). The WGPU-vs-CPU check of tests and GPU scripts.
pub fn compare_logits_with_cpu(device: &Device) -> (f32, f32) {
    use crate::checkpoint::module_tensors::{module_from_tensors, module_to_tensors};
    use crate::config::ModelConfig;
    use crate::model::LanguageModel;
    let config = ModelConfig {
        vocab_size: 512,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        d_ff: 128,
        max_seq_len: 64,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        moe: None,
    };
    let cpu = Device::flex();
    let reference = LanguageModel::seeded(&config, 3, &cpu);
    let tensors = module_to_tensors(&reference);
    let model = module_from_tensors(LanguageModel::new(&config, device), &tensors, "check").expect("same config");
    let ids: Vec<i64> = (0..64).map(|i| (i * 37 % 512) as i64).collect();
    let logits = |m: &LanguageModel, d: &Device| -> Vec<f32> {
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 32]), d);
        m.forward(tokens).into_data().convert::<f32>().try_to_vec().expect("f32")
    };
    let (a, b) = (logits(&reference, &cpu), logits(&model, device));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    (diff, a.iter().fold(0.0f32, |m, x| m.max(x.abs())))
}
