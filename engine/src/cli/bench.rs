//! `btx bench train|moe`: benchmarks that print their figures.

use std::path::PathBuf;

use anyhow::Result;

use super::write_json;
use crate::bench::{MoeBenchOptions, bench_moe, bench_moe_config, bench_train};
use crate::config::ModelConfig;
use crate::device::{DeviceArgs, select_device};
use crate::train::TrainConfig;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Training-step throughput (forward, backward, AdamW) of a training config's dense model
    /// and of its MoE counterpart (4 experts of the same FFN, top-2), after warm-up.
    Train {
        /// A training config (its model, batch_size and data.seq_len are used).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Override the config's batch size.
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Forward+backward time of top-2 of 4 experts against the dense model with the same
    /// active parameters, for one layer and for the whole LM.
    Moe {
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long, default_value_t = 256)]
        d_model: usize,
        /// Hidden width of one expert (the dense FFN has twice this).
        #[arg(long, default_value_t = 512)]
        expert_d_ff: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Train { config, device, warmup, iters, batch, json } => train(config, device, warmup, iters, batch, json),
        BenchCommand::Moe { device, d_model, expert_d_ff, layers, batch, seq_len, warmup, iters, json } => {
            let options = MoeBenchOptions { d_model, expert_d_ff, n_layers: layers, batch, seq_len, warmup, iters };
            moe(device, &options, json)
        }
    }
}

fn train(config: PathBuf, device: DeviceArgs, warmup: usize, iters: usize, batch: Option<usize>, json: Option<PathBuf>) -> Result<()> {
    let train_config = TrainConfig::load(&config)?;
    let selected = select_device(device)?;
    println!("device: {}", selected.description);
    let dense = ModelConfig { moe: None, ..train_config.model.clone() };
    let moe = bench_moe_config(&dense);
    let batch = batch.unwrap_or(train_config.batch_size);
    let seq = train_config.data.seq_len;
    let rows: Vec<_> = [("dense", &dense), ("moe", &moe)]
        .into_iter()
        .map(|(label, c)| bench_train(c, label, batch, seq, warmup, iters, &selected.device))
        .collect();
    println!("{batch}x{seq} tokens per step, median of {iters} steps after {warmup} warm-up steps");
    println!(
        "{:<6} {:>9} {:>9} {:>10} {:>12} {:>9} {:>10} {:>11} {:>10}",
        "model", "params", "active", "step ms", "tokens/s", "TFLOP/s", "warmup s", "peak MB", "matmul TF"
    );
    for r in &rows {
        println!(
            "{:<6} {:>8.2}M {:>8.2}M {:>10.1} {:>12.0} {:>9.4} {:>10.2} {:>11.0} {:>10.4}",
            r.model,
            r.params as f64 / 1e6,
            r.active_params as f64 / 1e6,
            r.step_ms,
            r.tokens_per_s,
            r.tflops,
            r.warmup_s,
            r.peak_memory_mb,
            r.matmul_tflops
        );
    }
    if let Some(json) = json {
        let out = serde_json::json!({
            "device": selected.description, "rows": rows, "dense_config": dense, "moe_config": moe,
            "batch": batch, "seq_len": seq, "lr": 1e-4,
        });
        write_json(&json, &out)?;
    }
    Ok(())
}

fn moe(device: DeviceArgs, o: &MoeBenchOptions, json: Option<PathBuf>) -> Result<()> {
    let selected = select_device(device)?;
    println!("device: {}", selected.description);
    println!(
        "MoE top-2 of 4 experts (expert d_ff {}) vs dense (d_ff {}), d_model {}, {} layers, {}x{} tokens, \
         forward+backward, median of {}",
        o.expert_d_ff,
        2 * o.expert_d_ff,
        o.d_model,
        o.n_layers,
        o.batch,
        o.seq_len,
        o.iters
    );
    let rows = bench_moe(&selected.device, o);
    println!("{:<8} {:>12} {:>12} {:>8}", "", "dense ms", "moe ms", "ratio");
    for r in &rows {
        println!("{:<8} {:>12.2} {:>12.2} {:>8.2}", r.what, r.dense_ms, r.moe_ms, r.ratio);
    }
    if let Some(json) = json {
        write_json(&json, &rows)?;
    }
    Ok(())
}
