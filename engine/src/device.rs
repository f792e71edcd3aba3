//! Choosing the compute device at run time: one model code, any backend.
//!
//! `auto` takes the first hardware GPU adapter WGPU finds (Vulkan, Metal, DirectX 12, then
//! OpenGL) and falls back to the CPU. Software adapters (Mesa's llvmpipe through OpenGL,
//! lavapipe through Vulkan) are never chosen unless asked for with `--allow-software-gpu`:
//! they exist to test the GPU code path on machines without a GPU, not to train on.

use std::sync::Mutex;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::wgpu::{WgpuBackend, wgpu};

/// What `--device` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The first hardware GPU adapter WGPU finds, else the CPU.
    Auto,
    /// Burn's pure-Rust CPU backend (Flex).
    Cpu,
    /// WGPU on the first graphics API with a hardware adapter (with --allow-software-gpu:
    /// else a software OpenGL adapter).
    Wgpu,
    /// WGPU pinned to Vulkan (SPIR-V kernels).
    Vulkan,
    /// WGPU pinned to OpenGL / GLES (WGSL kernels translated to GLSL).
    Gl,
    /// WGPU pinned to Metal (macOS).
    Metal,
    /// WGPU pinned to DirectX 12 (Windows).
    Dx12,
}

/// How to choose the device: `--device` and `--allow-software-gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct DeviceArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Let wgpu, vulkan or gl use a software adapter (Mesa's llvmpipe): slow, for testing
    /// the GPU code path on a machine without a GPU. Also set by BTX_ALLOW_SOFTWARE_GPU=1.
    #[arg(long)]
    pub allow_software_gpu: bool,
}

impl DeviceArgs {
    pub fn new(device: DeviceChoice) -> Self {
        Self { device, allow_software_gpu: false }
    }

    /// Software adapters are allowed by the flag or by `BTX_ALLOW_SOFTWARE_GPU=1`.
    pub fn software_allowed(&self) -> bool {
        self.allow_software_gpu || std::env::var("BTX_ALLOW_SOFTWARE_GPU").is_ok_and(|v| v == "1" || v == "true")
    }

    /// The arguments that choose the same device in a child `btx` process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--device".to_string(), format!("{:?}", self.device).to_lowercase()];
        if self.allow_software_gpu {
            args.push("--allow-software-gpu".into());
        }
        args
    }
}

/// A selected device and a line that says what it is.
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
}

/// A GPU adapter WGPU can see.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
}

impl Adapter {
    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}, {:?}{})", self.name, self.backend, self.device_type, if self.is_software() { ", software" } else { "" })
    }
}

/// The graphics APIs in order of preference.
const APIS: [wgpu::Backend; 4] = [wgpu::Backend::Vulkan, wgpu::Backend::Metal, wgpu::Backend::Dx12, wgpu::Backend::Gl];

/// Every adapter on every graphics API, each API asked through an instance of its own.
pub fn adapters() -> Vec<Adapter> {
    APIS.iter()
        .filter(|api| wgpu::Instance::enabled_backend_features().contains((**api).into()))
        .flat_map(|&api| {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends: api.into(),
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            futures_lite::future::block_on(instance.enumerate_adapters(api.into()))
        })
        .map(|a| {
            let info = a.get_info();
            Adapter { name: info.name, backend: info.backend, device_type: info.device_type }
        })
        .collect()
}

/// The hardware (non-software) GPU adapters WGPU can see, as `name (backend, type)`.
pub fn hardware_adapters() -> Vec<String> {
    adapters().into_iter().filter(|a| !a.is_software()).map(|a| a.to_string()).collect()
}

/// The graphics API `choice` runs on, given the adapters found; None for the CPU.
fn choose_api(choice: DeviceChoice, software: bool, found: &[Adapter]) -> Result<Option<wgpu::Backend>> {
    let usable = |a: &&Adapter| software || !a.is_software();
    let pinned = |api: wgpu::Backend, flag: &str| -> Result<Option<wgpu::Backend>> {
        if found.iter().filter(usable).any(|a| a.backend == api) {
            return Ok(Some(api));
        }
        let hint = if found.iter().any(|a| a.backend == api && a.is_software()) {
            " (it has a software adapter: add --allow-software-gpu to use it)"
        } else {
            ""
        };
        bail!("--device {flag}: WGPU found no {api:?} adapter{hint}; use --device cpu or --device auto")
    };
    let first_hardware = found.iter().find(|a| !a.is_software()).map(|a| a.backend);
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => Ok(first_hardware),
        DeviceChoice::Wgpu => match first_hardware {
            Some(api) => Ok(Some(api)),
            // Software Vulkan (lavapipe) crashes in Burn's SPIR-V reductions; GL runs.
            None if software => pinned(wgpu::Backend::Gl, "wgpu"),
            None => bail!(
                "--device wgpu: WGPU found no hardware GPU adapter{}; use --device cpu or --device auto",
                if found.is_empty() { "" } else { " (only software ones: add --allow-software-gpu to use them)" }
            ),
        },
        DeviceChoice::Vulkan => pinned(wgpu::Backend::Vulkan, "vulkan"),
        DeviceChoice::Gl => pinned(wgpu::Backend::Gl, "gl"),
        DeviceChoice::Metal => pinned(wgpu::Backend::Metal, "metal"),
        DeviceChoice::Dx12 => pinned(wgpu::Backend::Dx12, "dx12"),
    }
}

/// WGPU devices already brought up in this process: a runtime initialises once per API.
static WGPU_DEVICES: Mutex<Vec<(wgpu::Backend, Device, String)>> = Mutex::new(Vec::new());

fn wgpu_device(api: wgpu::Backend) -> Result<SelectedDevice> {
    let mut devices = WGPU_DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, device, description)) = devices.iter().find(|(a, _, _)| *a == api) {
        return Ok(SelectedDevice { device: device.clone(), description: description.clone() });
    }
    let pinned = match api {
        wgpu::Backend::Vulkan => WgpuBackend::Vulkan,
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        _ => WgpuBackend::Gl,
    };
    let (device, setup) = Device::wgpu_options()
        .graphics_api(pinned)
        .init_with_setup()
        .map_err(|e| anyhow::anyhow!("cannot start WGPU on {api:?}: {e}"))?;
    let info = setup.adapter.get_info();
    let adapter = Adapter { name: info.name, backend: info.backend, device_type: info.device_type };
    let description = format!("wgpu: {adapter}");
    devices.push((api, device.clone(), description.clone()));
    Ok(SelectedDevice { device, description })
}

/// The graphics API `args` would run on among the adapters `found` (None: the CPU).
pub fn chosen_api(args: DeviceArgs, found: &[Adapter]) -> Result<Option<wgpu::Backend>> {
    choose_api(args.device, args.software_allowed(), found)
}

/// Whether `device` is the CPU backend (Flex), autodiff or not.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

pub fn select_device(args: DeviceArgs) -> Result<SelectedDevice> {
    let found = if args.device == DeviceChoice::Cpu { vec![] } else { adapters() };
    match choose_api(args.device, args.software_allowed(), &found)? {
        None => Ok(SelectedDevice {
            device: Device::flex(),
            description: format!("cpu (Burn Flex, {} threads)", rayon_threads()),
        }),
        Some(api) => wgpu_device(api),
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs a small random model on `device` and on the CPU with the same weights; returns
/// (max |logit difference|, largest |logit|). The WGPU-vs-CPU check of `btx devices --check`.
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
        rope_scaling: None,
        head_dim: None,
        attention_bias: false,
        qk_norm: false,
        norm_eps: 1e-5,
        tie_embeddings: false,
        attention_experts: None,
        moe: None,
        gemma: None,
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
