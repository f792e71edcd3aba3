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
    pub is_gpu: bool,
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
        is_gpu: false,
    };
    let gpu = |device: Device, api: &str| -> Result<SelectedDevice> {
        let adapters = hardware_adapters();
        let Some(name) = adapters.first() else {
            bail!(
                "--device {api}: WGPU found no hardware GPU adapter (software adapters such as \
                 lavapipe are not used); use --device cpu or --device auto"
            );
        };
        Ok(SelectedDevice { device, description: format!("{api}: {name}"), is_gpu: true })
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
