//! Activation checkpointing (`activation_checkpointing: true`, Burn's balanced gradient
//! checkpointing): the run recomputes memory-bound activations in the backward pass instead
//! of keeping them, and nothing else changes: the same losses step for step and the same
//! weights at the end, for a dense model, a top-2 MoE and a LoRA run.

use btx::model::moe_config::{MoeConfig, Routing};
use btx::train::metrics::read_steps;
use btx::train::{TrainConfig, TrainOptions, train};

use crate::common::*;

/// Each step's loss and the final weights of `config` trained on `device` in `out`.
pub fn losses_and_weights(config: &TrainConfig, device: &btx::device::SelectedDevice, out: &std::path::Path) -> (Vec<f64>, btx::checkpoint::tensor_file::TensorMap) {
    let options = TrainOptions { out: out.to_path_buf(), resume: false, progress: false, stop_after: None };
    train(config, "test", device, &options).unwrap();
    let losses = read_steps(&out.join("metrics.jsonl")).unwrap().iter().map(|s| s.loss).collect();
    let (_, model) = btx::checkpoint::load_model(&btx::checkpoint::latest_checkpoint(out).unwrap(), &cpu()).unwrap();
    (losses, btx::checkpoint::module_tensors::module_to_tensors(&model))
}

#[test]
fn activation_checkpointing_changes_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let dense = TrainConfig { batch_size: 4, ..tiny_train_config(dir.path(), 8) };
    let moe = TrainConfig { model: btx::config::ModelConfig { moe: Some(MoeConfig::new(4, 2, Routing::TopK)), ..dense.model.clone() }, ..dense.clone() };
    let lora = TrainConfig { lora: Some(btx::model::lora::LoraConfig { rank: 4, alpha: Some(8.0), dropout: 0.0, targets: btx::model::lora::PROJECTIONS.iter().map(|p| p.to_string()).collect() }), ..dense.clone() };
    assert!(btx::train::start::training_device(&cpu(), &TrainConfig { activation_checkpointing: true, ..dense.clone() }).gradient_checkpointing_strategy().is_some_and(|s| format!("{s:?}").contains("Balanced")));
    for (name, config) in [("dense", dense), ("moe", moe), ("lora", lora)] {
        let (plain, plain_weights) = losses_and_weights(&config, &cpu_selected(), &dir.path().join(format!("{name}-plain")));
        let checkpointed = TrainConfig { activation_checkpointing: true, ..config };
        let (recomputed, recomputed_weights) = losses_and_weights(&checkpointed, &cpu_selected(), &dir.path().join(format!("{name}-checkpointed")));
        assert_eq!(plain.len(), 8);
        let loss_diff = plain.iter().zip(&recomputed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let weight_diff = plain_weights.iter().map(|(n, t)| max_abs_diff(&t.values, &recomputed_weights[n].values)).fold(0.0, f32::max);
        eprintln!("{name}: max |loss difference| {loss_diff:.2e}, max |weight difference| {weight_diff:.2e}");
        assert!(loss_diff < 1e-6, "{name}: checkpointing changed the losses by {loss_diff}: {plain:?} vs {recomputed:?}");
        assert!(weight_diff < 1e-6, "{name}: checkpointing changed the weights by {weight_diff}");
    }
}

