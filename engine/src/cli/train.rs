//! `btx train`.

use std::path::PathBuf;

use anyhow::Result;

use crate::device::{DeviceArgs, select_device};
use crate::train::precision::Precision;
use crate::train::{TrainConfig, TrainOptions, train};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, required_unless_present = "plan")]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// No progress bar (plain log lines only).
    #[arg(long)]
    no_progress: bool,
    /// Overrides the config's `precision`: f32, or f16 (projections and attention in f16,
    /// weights and optimizer in f32, dynamic loss scaling).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Print the run's expected peak memory by part (weights, gradients, optimizer state,
    /// activations, the LM head's logits) on the device, and exit.
    #[arg(long)]
    plan: bool,
    /// The device's memory in GB, for the plan and the check before the run (default: the
    /// CPU's available memory; a GPU's, which WGPU does not report, is not checked unless
    /// given).
    #[arg(long)]
    memory_gb: Option<f64>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let origin = args.config.display().to_string();
    let mut config = TrainConfig::load(&args.config)?;
    if let Some(precision) = args.precision {
        config.precision = precision;
    }
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    eprintln!(
        "model: {:.2}M parameters, {} layers, d_model {}; {} steps of {} tokens",
        config.model.num_params() as f64 / 1e6,
        config.model.n_layers,
        config.model.d_model,
        config.steps,
        config.tokens_per_step()
    );
    let plan = crate::train::memory_plan::plan_on(&config, &selected.device);
    let available = args.memory_gb.map(|g| g * 1e9).or_else(|| crate::train::memory_plan::available_memory(&selected.device));
    if args.plan {
        println!("memory plan of {origin} on {}:\n{}", selected.description, plan.table(available));
        if let Some(a) = available {
            println!("{}", if plan.total() <= a { "fits" } else { "does not fit" });
        }
        return Ok(());
    }
    // Stop before the first allocation when the plan cannot fit (resuming included: the run
    // would fail the same way at its first step).
    if let Some(a) = available {
        plan.check_fits(&config, a, &origin)?;
    }
    let out = args.out.expect("clap requires --out without --plan");
    let options = TrainOptions { out, resume: args.resume, progress: !args.no_progress, stop_after: None };
    let summary = train(&config, &origin, &selected, &options)?;
    let s = &summary.state;
    let seconds = s.wall_time_s.max(1e-9);
    eprintln!(
        "done: {} steps, {} tokens in {:.1} s ({:.0} tokens/s, {:.3} TFLOP/s); checkpoint {}",
        s.step,
        s.tokens_seen,
        s.wall_time_s,
        s.tokens_seen as f64 / seconds,
        s.train_flops / seconds / 1e12,
        summary.checkpoint.display()
    );
    Ok(())
}
