//! The memory plan (`btx train --plan`): its parts add up and scale as their formulas say,
//! a run whose plan exceeds the memory given stops before it starts (naming the batch that
//! fits and what LoRA would save, writing nothing), and the plan of a small CPU run is close
//! above its measured peak.

use std::process::Command;

use btx::config::to_ron;
use btx::train::TrainConfig;
use btx::train::memory_plan::{plan, plan_for};

use crate::common::*;

fn part(config: &TrainConfig, name: &str) -> f64 {
    plan(config).parts.iter().find(|p| p.name == name).unwrap().bytes
}

#[test]
fn plan_parts_follow_their_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig { batch_size: 4, ..tiny_train_config(dir.path(), 10) };
    let p = plan(&config);
    assert_eq!(p.total(), p.parts.iter().map(|x| x.bytes).sum::<f64>());
    let params = config.model.num_params() as f64;
    assert_eq!(part(&config, "weights"), 4.0 * params);
    assert_eq!(part(&config, "gradients"), 4.0 * params);
    assert_eq!(part(&config, "optimizer state"), 8.0 * params);
    // Activations grow with the batch, one sequence at a time.
    let doubled = TrainConfig { batch_size: 8, ..config.clone() };
    assert!((part(&doubled, "activations") - 2.0 * part(&config, "activations")).abs() < 1.0);
    assert!((p.activations_per_sequence * 4.0 - part(&config, "activations")).abs() < 1.0);
    // LoRA trains adapters only: r x (in + out) per targeted projection.
    let lora = btx::model::lora::LoraConfig { rank: 4, alpha: None, dropout: 0.0, targets: vec!["q_proj".into()] };
    let m = &config.model;
    let adapters = (m.n_layers * 4 * (m.d_model + m.q_dim())) as f64;
    let with_lora = TrainConfig { lora: Some(lora), ..config.clone() };
    assert_eq!(part(&with_lora, "gradients"), 4.0 * adapters);
    assert_eq!(part(&with_lora, "weights"), 4.0 * (params + adapters));
    // The base held in bf16: every projection's weight at 2 bytes (the embedding, head and
    // norms at 4); gradients and optimizer state unchanged.
    let held = TrainConfig { frozen_precision: btx::train::precision::FrozenPrecision::BF16, ..with_lora.clone() };
    let f = m.d_ff;
    let projections = (m.n_layers * (2 * m.d_model * m.q_dim() + 2 * m.d_model * m.kv_heads() * m.head_dim() + 3 * m.d_model * f)) as f64;
    assert_eq!(part(&held, "weights"), 4.0 * (params + adapters) - 2.0 * projections);
    assert_eq!(part(&held, "gradients"), part(&with_lora, "gradients"));
    assert_eq!(part(&held, "optimizer state"), part(&with_lora, "optimizer state"));
    // A frozen head computes no weight gradient in the fused kernel.
    assert_eq!(part(&config, "LM head") - part(&with_lora, "LM head"), 4.0 * (m.vocab_size * m.d_model) as f64);
    // Without the fused head (WGPU): the logits, their softmax and gradient, whole.
    let tokens = (config.batch_size * config.data.seq_len) as f64;
    let unfused = plan_for(&config, false);
    assert_eq!(unfused.parts.iter().find(|x| x.name == "LM head").unwrap().bytes, 12.0 * tokens * m.vocab_size as f64);
}

#[test]
fn a_run_whose_plan_exceeds_memory_stops_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig { batch_size: 64, ..tiny_train_config(dir.path(), 10) };
    let path = dir.path().join("train.ron");
    std::fs::write(&path, to_ron(&config).unwrap()).unwrap();
    let fixed = plan(&config).total() - plan(&config).parts.iter().find(|p| p.name == "activations").unwrap().bytes;
    // Room for the fixed parts and 5 sequences' activations.
    let memory_gb = (fixed + 5.5 * plan(&config).activations_per_sequence) / 1e9;
    let (ok, stderr) = run_btx(&["train", "--config", "train.ron", "--out", "run", "--device", "cpu", "--memory-gb", &memory_gb.to_string()], dir.path());
    assert!(!ok, "{stderr}");
    for expected in ["train.ron: this run needs about", "activations", "LM head", "`batch_size: 5` (from 64; with `grad_accum: 13`", "`lora: (rank: 16"] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    // A run that freezes weights is also told what holding them in bf16 saves.
    let lora = btx::model::lora::LoraConfig { rank: 4, alpha: None, dropout: 0.0, targets: vec!["q_proj".into()] };
    std::fs::write(dir.path().join("lora.ron"), to_ron(&TrainConfig { lora: Some(lora), ..config.clone() }).unwrap()).unwrap();
    let (ok, stderr) = run_btx(&["train", "--config", "lora.ron", "--out", "run", "--device", "cpu", "--memory-gb", "0.001"], dir.path());
    assert!(!ok && stderr.contains("`frozen_precision: BF16` (F16 on WGPU) for the frozen weights ("), "{stderr}");
    assert!(!dir.path().join("run").exists(), "a refused run left a folder");
    let (ok, stdout) = run_btx(&["train", "--config", "train.ron", "--plan", "--device", "cpu", "--memory-gb", &memory_gb.to_string()], dir.path());
    assert!(ok, "{stdout}");
}

/// The plan of a small CPU run against its measured peak: above it, and not by much (the
/// fixed runtime share is largest at this size; bench/RESULTS.md has three sizes).
#[test]
fn the_plan_is_close_above_a_measured_peak() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 4);
    config.model.d_model = 128;
    config.model.d_ff = 512;
    config.batch_size = 16;
    config.data.seq_len = 64;
    let path = dir.path().join("train.ron");
    std::fs::write(&path, to_ron(&config).unwrap()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_btx"));
    command.args(["train", "--config", path.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap(), "--device", "cpu"]);
    let measured = crate::protection::peak_kb_of(&mut command) as f64 * 1024.0;
    let planned = plan(&config).total();
    eprintln!("planned {:.0} MB, measured {:.0} MB", planned / 1e6, measured / 1e6);
    assert!(planned >= 0.9 * measured && planned <= 1.6 * measured, "planned {planned:.3e} bytes, measured {measured:.3e}");
}
