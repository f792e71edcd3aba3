//! `cargo xtask bench real [--config C]... [--pairs N] [--warmup W] [--iters I] [--lora R [--frozen-precision bf16]]`: a training
//! step at the sizes users bring (bench/real: Qwen2.5-0.5B's and Llama-3.2-1B's shapes,
//! random weights made locally) on the CPU, the engine (`btx bench train --dense-only`)
//! against transformers' own model class with torch's AdamW (bench/reference/real_bench.py),
//! run alternately `--pairs` times (default 3). Prints each one's median seconds per step
//! and peak resident memory (wait4's rusage of each process alone), and the ratios:
//! speed = PyTorch's step time / the engine's (above 1: the engine is faster), memory = the
//! engine's peak / PyTorch's.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::bench_data::measure;
use crate::{cpu_model, cpu_vector_units, flag, median};

const CONFIGS: [&str; 2] = ["bench/real/qwen2.5-0.5b.ron", "bench/real/llama-3.2-1b.ron"];

pub fn run(btx: &Path, args: &[String]) -> Result<()> {
    let pairs: usize = flag(args, "--pairs").map_or(Ok(3), str::parse).context("--pairs: expected a number")?;
    let warmup = flag(args, "--warmup").unwrap_or("1");
    let iters = flag(args, "--iters").unwrap_or("2");
    let configs: Vec<&str> = match args.iter().enumerate().filter(|(_, a)| *a == "--config").map(|(i, _)| args.get(i + 1)).collect::<Option<Vec<_>>>() {
        Some(given) if !given.is_empty() => given.into_iter().map(String::as_str).collect(),
        _ => CONFIGS.to_vec(),
    };
    // `--lora R`: LoRA of rank R (the engine's against PEFT's) instead of full finetuning.
    let lora = flag(args, "--lora");
    // `--frozen-precision bf16|f16`: LoRA's frozen base held so (PyTorch's base model in that
    // dtype, PEFT's adapters in f32).
    let frozen_precision = flag(args, "--frozen-precision");
    let python = std::env::var("BTX_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_torch = Command::new(&python).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
    let json_path = std::env::temp_dir().join(format!("btx-bench-real-{}.json", std::process::id()));
    let json = json_path.to_str().context("temporary path")?;
    let mut table = Vec::new();
    for config in &configs {
        let (mut engine, mut torch) = (Vec::new(), Vec::new());
        for pair in 0..pairs.max(1) {
            let mut engine_command = Command::new(btx);
            engine_command.args(["bench", "train", "--config", config, "--device", "cpu", "--dense-only"]).args(["--warmup", warmup, "--iters", iters, "--json", json]);
            if let Some(rank) = lora {
                engine_command.args(["--lora", rank]);
            }
            if let Some(frozen) = frozen_precision {
                engine_command.args(["--frozen-precision", frozen]);
            }
            let run = measure(&mut engine_command)?;
            let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
            let step_s = report["rows"][0]["step_ms"].as_f64().unwrap_or(f64::NAN) / 1e3;
            engine.push((step_s, run.peak_mb));
            eprintln!("{config}: engine {step_s:.2} s/step, peak {:.0} MB", run.peak_mb);
            if has_torch {
                let run = measure(Command::new(&python).args(["bench/reference/real_bench.py", "--engine-json", json, "--warmup", warmup, "--iters", iters]))?;
                let line = run.output.lines().rfind(|l| l.starts_with('{')).unwrap_or("{}");
                let report: serde_json::Value = serde_json::from_str(line)?;
                let step_s = report["step_s"].as_f64().unwrap_or(f64::NAN);
                torch.push((step_s, run.peak_mb, report["torch"].as_str().unwrap_or("?").to_string()));
                eprintln!("{config}: torch {step_s:.2} s/step, peak {:.0} MB (pair {}/{pairs})", run.peak_mb, pair + 1);
            }
        }
        table.push((config.to_string(), engine, torch));
    }
    let _ = std::fs::remove_file(&json_path);
    let mode = lora.map_or("full finetune".to_string(), |r| format!("LoRA rank {r} on every projection (PEFT's on the PyTorch side)"));
    let mode = match frozen_precision {
        Some(frozen) => format!("{mode}, frozen base in {frozen}"),
        None => mode,
    };
    println!("\nCPU: {} ({}), {} threads; {mode} step (forward, backward, AdamW), median of {iters} steps after {warmup}", cpu_model(), cpu_vector_units(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Some(version) = table.iter().find_map(|(_, _, t)| t.first().map(|t| t.2.clone())) {
        println!("PyTorch {version}, transformers' own model class; {pairs} alternating pairs; ratios are medians of the pairs' ratios (min-max)");
    }
    println!("{:<32} {:>10} {:>10} {:>16} {:>11} {:>11} {:>16}", "shape", "engine s", "torch s", "speed (t/e)", "engine GB", "torch GB", "memory (e/t)");
    let mut rows = Vec::new();
    for (config, engine, torch) in &table {
        let (e_s, e_mb): (Vec<f64>, Vec<f64>) = engine.iter().copied().unzip();
        let t_s: Vec<f64> = torch.iter().map(|t| t.0).collect();
        let t_mb: Vec<f64> = torch.iter().map(|t| t.1).collect();
        let speed: Vec<f64> = t_s.iter().zip(&e_s).map(|(t, e)| t / e).collect();
        let memory: Vec<f64> = e_mb.iter().zip(&t_mb).map(|(e, t)| e / t).collect();
        let span = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
            if v.is_empty() { "-".to_string() } else { format!("{:.2} ({lo:.2}-{hi:.2})", median(v)) }
        };
        println!(
            "{:<32} {:>10.2} {:>10.2} {:>16} {:>11.2} {:>11.2} {:>16}",
            config,
            median(&e_s),
            median(&t_s),
            span(&speed),
            median(&e_mb) / 1e3,
            median(&t_mb) / 1e3,
            span(&memory)
        );
        rows.push(serde_json::json!({
            "config": config, "engine_step_s": e_s, "engine_peak_mb": e_mb, "torch_step_s": t_s, "torch_peak_mb": t_mb,
            "speed_ratio": speed, "memory_ratio": memory,
        }));
    }
    if !has_torch {
        println!("(PyTorch and transformers are not available to `{python}`; set BTX_PYTHON: engine figures only)");
    }
    let summary = serde_json::json!({ "cpu": cpu_model(), "vector_units": cpu_vector_units(), "pairs": pairs, "lora_rank": lora, "frozen_precision": frozen_precision, "rows": rows });
    std::fs::write("bench-real.json", serde_json::to_string_pretty(&summary)?)?;
    println!("(every pair in bench-real.json)");
    Ok(())
}
