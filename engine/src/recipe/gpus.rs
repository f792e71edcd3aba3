//! One expert per GPU: on a machine with several GPU adapters, each training stage that runs
//! at the same time as others gets an adapter of its own (`btx recipe run --jobs N
//! --devices 0,1,...`, or every hardware adapter of the run's graphics API by default). A
//! stage takes the least busy adapter, so no two share one while another is idle. The child
//! `btx` process is pointed at its adapter through CubeCL's `CUBECL_WGPU_DEFAULT_DEVICE`
//! (the Nth adapter of a device type on the chosen API).

use std::sync::Mutex;

use anyhow::{Result, bail};
use burn::tensor::wgpu::wgpu;

use crate::device::{Adapter, DeviceArgs, DeviceChoice};

/// The environment variable CubeCL reads to choose its WGPU adapter.
pub const ADAPTER_ENV: &str = "CUBECL_WGPU_DEFAULT_DEVICE";

/// An adapter given to one stage: its index in the run's list (as `btx devices` lists the
/// API's hardware adapters) and the value of `ADAPTER_ENV` that selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub index: usize,
    pub selector: String,
}

/// The adapters a run spreads its GPU stages over, and how many stages each is running.
#[derive(Debug)]
pub struct GpuPool {
    adapters: Vec<Assignment>,
    busy: Mutex<Vec<usize>>,
}

impl GpuPool {
    pub fn new(adapters: Vec<Assignment>) -> Self {
        let busy = Mutex::new(vec![0; adapters.len()]);
        Self { adapters, busy }
    }

    /// The least busy adapter (the first of equals), counted busy until `release`.
    pub fn acquire(&self) -> Option<Assignment> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, _) = busy.iter().enumerate().min_by_key(|(i, n)| (**n, *i))?;
        busy[slot] += 1;
        Some(self.adapters[slot].clone())
    }

    pub fn release(&self, assignment: &Assignment) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = self.adapters.iter().position(|a| a == assignment) {
            busy[slot] = busy[slot].saturating_sub(1);
        }
    }
}

/// CubeCL's name for the `nth` adapter of `adapter`'s device type.
fn selector(adapter: &Adapter, nth: usize) -> String {
    let kind = match adapter.device_type {
        wgpu::DeviceType::DiscreteGpu => "DiscreteGpu",
        wgpu::DeviceType::IntegratedGpu => "IntegratedGpu",
        wgpu::DeviceType::VirtualGpu => "VirtualGpu",
        wgpu::DeviceType::Cpu => return "Cpu".into(),
        wgpu::DeviceType::Other => "Other",
    };
    format!("{kind}({nth})")
}

/// The assignments for `wanted` (indices into the adapters of `api` among `found`, in their
/// order; None: all of them): hardware adapters, and software ones where the run allows them
/// (`--allow-software-gpu`). Errors name the flag and what exists.
pub fn assignments(found: &[Adapter], api: wgpu::Backend, wanted: Option<&[usize]>, software: bool) -> Result<Vec<Assignment>> {
    let on_api: Vec<&Adapter> = found.iter().filter(|a| a.backend == api && (software || !a.is_software())).collect();
    let all: Vec<usize> = (0..on_api.len()).collect();
    let wanted = wanted.unwrap_or(&all);
    let mut out = Vec::new();
    for &index in wanted {
        let Some(adapter) = on_api.get(index) else {
            let listed: Vec<String> = on_api.iter().enumerate().map(|(i, a)| format!("{i}: {a}")).collect();
            let kind = if software { "adapters" } else { "hardware adapters" };
            bail!("--devices: there is no adapter {index} on {api:?}; its {kind} are [{}]", listed.join(", "));
        };
        let nth = on_api[..index].iter().filter(|a| a.device_type == adapter.device_type).count();
        if out.iter().any(|a: &Assignment| a.index == index) {
            bail!("--devices lists adapter {index} twice");
        }
        out.push(Assignment { index, selector: selector(adapter, nth) });
    }
    Ok(out)
}

/// The pool of a local run: None on the CPU, with one adapter and no `--devices`, or where
/// the user chose the adapter already (`CUBECL_WGPU_DEFAULT_DEVICE` set).
pub fn pool_for(device: &DeviceArgs, wanted: Option<&[usize]>) -> Result<Option<GpuPool>> {
    if device.device == DeviceChoice::Cpu {
        if wanted.is_some() {
            bail!("--devices assigns GPU adapters; it has no meaning with --device cpu");
        }
        return Ok(None);
    }
    if std::env::var_os(ADAPTER_ENV).is_some() && wanted.is_none() {
        return Ok(None);
    }
    let found = crate::device::adapters();
    let Some(api) = crate::device::chosen_api(*device, &found)? else {
        return Ok(None);
    };
    let adapters = assignments(&found, api, wanted, device.software_allowed())?;
    Ok((adapters.len() > 1 || wanted.is_some()).then(|| GpuPool::new(adapters)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::wgpu::wgpu;

    fn adapter(name: &str, backend: wgpu::Backend, device_type: wgpu::DeviceType) -> Adapter {
        Adapter { name: name.into(), backend, device_type }
    }

    /// Four GPUs of two kinds on Vulkan (and the same seen through GL, and a software one):
    /// each index selects the Nth adapter of its own type; a busy adapter is not given out
    /// while another is idle; a bad index names what exists.
    #[test]
    fn stages_spread_over_the_adapters_and_never_share_one_while_another_is_idle() {
        use wgpu::{Backend::*, DeviceType::*};
        let found = vec![
            adapter("A", Vulkan, DiscreteGpu),
            adapter("B", Vulkan, IntegratedGpu),
            adapter("C", Vulkan, DiscreteGpu),
            adapter("llvmpipe", Vulkan, Cpu),
            adapter("D", Vulkan, DiscreteGpu),
            adapter("A", Gl, DiscreteGpu),
        ];
        let all = assignments(&found, Vulkan, None, false).unwrap();
        let selectors: Vec<&str> = all.iter().map(|a| a.selector.as_str()).collect();
        assert_eq!(selectors, ["DiscreteGpu(0)", "IntegratedGpu(0)", "DiscreteGpu(1)", "DiscreteGpu(2)"]);
        let pool = GpuPool::new(assignments(&found, Vulkan, Some(&[3, 0, 2]), false).unwrap());
        let (a, b, c) = (pool.acquire().unwrap(), pool.acquire().unwrap(), pool.acquire().unwrap());
        assert_eq!([a.index, b.index, c.index], [3, 0, 2], "three stages, three adapters");
        pool.release(&b);
        assert_eq!(pool.acquire().unwrap().index, 0, "the freed adapter is the idle one");
        assert_eq!(pool.acquire().unwrap().index, 3, "all busy: the first of the least busy");
        let err = assignments(&found, Vulkan, Some(&[4]), false).unwrap_err().to_string();
        assert!(err.contains("no adapter 4") && err.contains("3: D"), "{err}");
        assert!(assignments(&found, Vulkan, Some(&[1, 1]), false).is_err());
        // With software adapters allowed, llvmpipe is adapter 3, selected as CubeCL's `Cpu`.
        let with_software = assignments(&found, Vulkan, None, true).unwrap();
        assert_eq!((with_software.len(), with_software[3].selector.as_str(), with_software[4].selector.as_str()), (5, "Cpu", "DiscreteGpu(2)"));
    }
}
