//! `btx devices [--check]`.

use anyhow::{Result, bail};

use crate::device::{DeviceArgs, adapters, compare_logits_with_cpu, select_device};

#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Also compare a small model's logits on --device against the CPU backend.
    #[arg(long)]
    check: bool,
    /// Run one reduction (the sum of 1..=1024) on --device and print it: the smallest check
    /// that a driver runs Burn's kernels (Mesa's lavapipe crashes here).
    #[arg(long)]
    sum: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: DevicesArgs) -> Result<()> {
    let found = adapters();
    if !found.iter().any(|a| !a.is_software()) {
        println!("no hardware GPU adapter found; --device auto uses the CPU");
    }
    for a in &found {
        println!("{a}");
    }
    if args.sum {
        let selected = select_device(args.device)?;
        let values: Vec<f32> = (1..=1024).map(|i| i as f32).collect();
        let tensor = burn::prelude::Tensor::<1>::from_data(burn::prelude::TensorData::new(values, [1024]), &selected.device);
        println!("{}: sum of 1..=1024 = {} (expected 524800)", selected.description, tensor.sum().into_scalar::<f32>());
    }
    if args.check {
        let selected = select_device(args.device)?;
        let (diff, scale) = compare_logits_with_cpu(&selected.device);
        let ok = diff <= 1e-4 * scale.max(1.0);
        println!(
            "{}: max |logit - cpu logit| = {diff:.3e} at logit scale {scale:.3} -> {}",
            selected.description,
            if ok { "OK" } else { "MISMATCH" }
        );
        if !ok {
            bail!("{} disagrees with the CPU backend", selected.description);
        }
    }
    Ok(())
}
