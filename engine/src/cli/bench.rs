//! `btx bench train|moe`: benchmarks that print their figures.

use std::path::PathBuf;

use anyhow::Result;

use super::write_json;
use crate::bench::{MoeBenchOptions, TrainBenchRun, bench_moe, bench_moe_config, bench_train};
use crate::config::ModelConfig;
use crate::device::{DeviceArgs, select_device};
use crate::train::TrainConfig;
use crate::train::precision::Precision;

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
        /// Override the config's precision (f16: projections and attention in f16).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Time the dense model only (at real sizes its MoE may not fit in memory beside it).
        #[arg(long)]
        dense_only: bool,
        /// Train LoRA adapters of this rank (all seven projections, alpha = 2 x rank) on a
        /// frozen base instead of every weight.
        #[arg(long)]
        lora: Option<usize>,
        /// What the MoE trains: all (default), routers (MixtureKit's router-only finetune),
        /// routers-and-shared or experts; the rest is frozen.
        #[arg(long, value_parser = parse_trainable)]
        trainable: Option<crate::train::trainable::Trainable>,
        /// How the frozen weights are held: f32 (default), f16 or bf16
        /// (`frozen_precision` of a training config).
        #[arg(long, value_enum, default_value = "f32")]
        frozen_precision: crate::train::precision::FrozenPrecision,
    },
    /// Generation throughput of a checkpoint (greedy, KV cache), prompt and new tokens apart;
    /// beside it, where torch is available (BTX_PYTHON, else python3), transformers' generate
    /// on the same checkpoint exported to Hugging Face, on the same CPU threads.
    Generate {
        checkpoint: PathBuf,
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The primitives a training step spends its time in, alone, at a training config's
    /// shapes: exp over the logits, SiLU over the FFN activations, the FFN matmul
    /// (bench/reference/ops_bench.py times the same in PyTorch).
    Ops {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long, default_value_t = 20)]
        iters: usize,
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

fn parse_trainable(s: &str) -> Result<crate::train::trainable::Trainable, String> {
    use crate::train::trainable::Trainable;
    match s {
        "all" => Ok(Trainable::All),
        "routers" => Ok(Trainable::Routers),
        "routers-and-shared" => Ok(Trainable::RoutersAndShared),
        "experts" => Ok(Trainable::Experts),
        other => Err(format!("`{other}`: expected all, routers, routers-and-shared or experts")),
    }
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Train { config, device, warmup, iters, batch, precision, json, dense_only, lora, trainable, frozen_precision } => {
            train(config, device, (warmup, iters), batch, precision, json, (dense_only, lora, trainable, frozen_precision))
        }
        BenchCommand::Generate { checkpoint, prompt_tokens, new_tokens, device } => generate(&checkpoint, prompt_tokens, new_tokens, device),
        BenchCommand::Ops { config, device, iters } => ops(&config, device, iters),
        BenchCommand::Moe { device, d_model, expert_d_ff, layers, batch, seq_len, warmup, iters, json } => {
            let options = MoeBenchOptions { d_model, expert_d_ff, n_layers: layers, batch, seq_len, warmup, iters };
            moe(device, &options, json)
        }
    }
}

fn train(
    config: PathBuf,
    device: DeviceArgs,
    (warmup, iters): (usize, usize),
    batch: Option<usize>,
    precision: Option<Precision>,
    json: Option<PathBuf>,
    (dense_only, lora_rank, trainable, frozen_precision): (bool, Option<usize>, Option<crate::train::trainable::Trainable>, crate::train::precision::FrozenPrecision),
) -> Result<()> {
    let train_config = TrainConfig::load(&config)?;
    let selected = select_device(device)?;
    let precision = precision.unwrap_or(train_config.precision);
    precision.check_device(&selected.device, &selected.description)?;
    frozen_precision.check_device(&selected.device, &selected.description)?;
    println!("device: {}; precision {precision:?}; frozen weights {frozen_precision:?}", selected.description);
    let dense = ModelConfig { moe: None, ..train_config.model.clone() };
    let moe = bench_moe_config(&dense);
    let batch = batch.unwrap_or(train_config.batch_size);
    let seq = train_config.data.seq_len;
    let run = TrainBenchRun { batch, seq_len: seq, warmup, iters, precision, lora_rank, trainable, activation_checkpointing: train_config.activation_checkpointing, frozen_precision };
    let models = if dense_only { vec![("dense", &dense)] } else { vec![("dense", &dense), ("moe", &moe)] };
    let rows: Vec<_> = models.into_iter().map(|(label, c)| bench_train(c, label, &run, &selected.device)).collect();
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
            "batch": batch, "seq_len": seq, "lr": 1e-4, "precision": precision, "lora_rank": lora_rank, "frozen_precision": frozen_precision,
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

fn generate(checkpoint: &std::path::Path, prompt_tokens: usize, new_tokens: usize, device: DeviceArgs) -> Result<()> {
    use crate::generate::{SamplingOptions, check_prompt, generate};
    let ckpt = crate::checkpoint::resolve_checkpoint(checkpoint)?;
    let selected = select_device(device)?;
    println!("device: {}", selected.description);
    let (config, model) = crate::checkpoint::load_model(&ckpt, &selected.device)?;
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| ((i * 37 + 11) % config.vocab_size) as u32).collect();
    let options = SamplingOptions { max_tokens: new_tokens, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: None };
    check_prompt(&prompt, &options, config.vocab_size, config.max_seq_len)?;
    generate(&model, &prompt, &SamplingOptions { max_tokens: 4, ..options.clone() }, &selected.device, |_| Ok(()))?; // warm-up
    let stats = generate(&model, &prompt, &options, &selected.device, |_| Ok(()))?;
    let engine = (stats.prompt_tokens as f64 / stats.prompt_seconds, stats.generated_tokens as f64 / stats.generation_seconds);
    println!("{prompt_tokens}-token prompt, {new_tokens} new tokens, greedy");
    println!("{:<14} {:>16} {:>18}", "", "prompt tok/s", "generated tok/s");
    println!("{:<14} {:>16.0} {:>18.1}", "engine", engine.0, engine.1);
    let python = std::env::var("BTX_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_torch = std::process::Command::new(&python).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("transformers is not available to `{python}` (set BTX_PYTHON): engine figures only");
        return Ok(());
    }
    let hf = tempfile_dir()?;
    crate::hf::export_hf(&ckpt, &hf, None, true)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/generate_bench.py");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(&hf)
        .args(["--prompt-tokens", &prompt_tokens.to_string(), "--new-tokens", &new_tokens.to_string(), "--threads", &threads])
        .output()?;
    let _ = std::fs::remove_dir_all(&hf);
    if !output.status.success() {
        anyhow::bail!("the transformers reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let reference: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let (p, g) = (reference["prompt_tokens_per_s"].as_f64().unwrap_or(f64::NAN), reference["generated_tokens_per_s"].as_f64().unwrap_or(f64::NAN));
    println!("{:<14} {:>16.0} {:>18.1}", "transformers", p, g);
    println!("{:<14} {:>16.2} {:>18.2}", "ratio", engine.0 / p, engine.1 / g);
    Ok(())
}

/// A fresh folder under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("btx-bench-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(dir)
}

fn ops(config: &std::path::Path, device: DeviceArgs, iters: usize) -> Result<()> {
    let c = TrainConfig::load(config)?;
    let selected = select_device(device)?;
    println!("device: {}", selected.description);
    let tokens = c.batch_size * c.data.seq_len;
    for r in crate::bench::bench_ops(&selected.device, tokens, c.model.d_model, c.model.d_ff, c.model.vocab_size, iters) {
        println!("{:<34} {:>9.3} ms {:>12.3e} {}", r.op, r.ms, r.rate, r.unit);
    }
    Ok(())
}
