//! Training behaviour: the loss falls, and an interrupted then resumed run ends with exactly
//! the weights of an uninterrupted one.

use btx::checkpoint::{self, module_tensors::module_to_tensors};
use btx::eval::{evaluate, mean_loss};
use btx::model::LanguageModel;
use btx::train::{TrainOptions, train};
use btx::data::load_domains;

use crate::common::*;


fn options(out: &std::path::Path, resume: bool, stop_after: Option<usize>) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after }
}

#[test]
fn validation_loss_falls_on_every_domain() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 60);
    let domains = load_domains(&config.data, config.model.vocab_size, "test").unwrap();
    let device = cpu();
    device.seed(config.seed);
    let before = evaluate(&LanguageModel::new(&config.model, &device), &domains, 8, 2, &device);

    let out = dir.path().join("run");
    let summary = train(&config, "test", &cpu_selected(), &options(&out, false, None)).unwrap();
    let after = summary.final_eval;
    assert_eq!(summary.state.step, 60);
    for (b, a) in before.iter().zip(&after) {
        assert!(a.loss < b.loss - 1.0, "domain {}: val loss {} -> {}", b.domain, b.loss, a.loss);
    }
    assert!(mean_loss(&after) < mean_loss(&before) - 2.0);
    // Metrics: one line per step plus one per domain evaluation.
    let metrics = out.join("metrics.jsonl");
    assert_eq!(btx::train::metrics::read_steps(&metrics).unwrap().len(), 60);
    assert_eq!(btx::train::metrics::read_evals(&metrics).unwrap().len(), 3);
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 9);
    config.checkpoint_every = 3;
    config.grad_accum = 2;

    let straight = dir.path().join("straight");
    train(&config, "test", &cpu_selected(), &options(&straight, false, None)).unwrap();

    // Stopped after 5 steps: the checkpoint at step 3 survives, steps 4-5 are lost and redone.
    let interrupted = dir.path().join("interrupted");
    train(&config, "test", &cpu_selected(), &options(&interrupted, false, Some(5))).unwrap();
    let ckpt = checkpoint::latest_checkpoint(&interrupted).unwrap();
    assert_eq!(checkpoint::read_train_state(&ckpt).unwrap().step, 3);
    let summary = train(&config, "test", &cpu_selected(), &options(&interrupted, true, None)).unwrap();
    assert_eq!(summary.state.step, 9);

    let device = cpu();
    let (_, a) = checkpoint::load_model(&checkpoint::latest_checkpoint(&straight).unwrap(), &device).unwrap();
    let (_, b) = checkpoint::load_model(&summary.checkpoint, &device).unwrap();
    let (a, b) = (module_to_tensors(&a), module_to_tensors(&b));
    for (name, ta) in &a {
        let diff = max_abs_diff(&ta.values, &b[name].values);
        assert!(diff <= 1e-6, "tensor {name} differs by {diff}");
    }
    // The metrics describe one run: 9 step lines, no duplicates from the lost steps.
    let steps: Vec<usize> = btx::train::metrics::read_steps(&interrupted.join("metrics.jsonl")).unwrap().iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=9).collect::<Vec<_>>());
}

#[test]
fn branch_from_checkpoint_starts_from_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let seed_config = tiny_train_config(dir.path(), 3);
    let seed_run = dir.path().join("seed");
    train(&seed_config, "test", &cpu_selected(), &options(&seed_run, false, None)).unwrap();

    let mut expert = tiny_train_config(dir.path(), 1);
    expert.init_from = Some(seed_run.clone());
    expert.optimizer.lr = 1e-9; // one negligible step: the weights stay the seed's
    expert.optimizer.weight_decay = 0.0;
    let out = dir.path().join("expert");
    let summary = train(&expert, "test", &cpu_selected(), &options(&out, false, None)).unwrap();
    let device = cpu();
    let (_, a) = checkpoint::load_model(&checkpoint::latest_checkpoint(&seed_run).unwrap(), &device).unwrap();
    let (_, b) = checkpoint::load_model(&summary.checkpoint, &device).unwrap();
    let (a, b) = (module_to_tensors(&a), module_to_tensors(&b));
    for (name, ta) in &a {
        assert!(max_abs_diff(&ta.values, &b[name].values) < 1e-6, "tensor {name}");
    }
}

/// `shared_lr_multiplier`: at 0 an expert trains its FFNs alone, every other weight kept
/// exactly (the experts of FlexOlmo's protocol); at 0.1 the shared weights move, less.
#[test]
fn shared_lr_multiplier_scales_the_shared_weights_alone() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start");
    std::fs::create_dir_all(&start).unwrap();
    let base = tiny_train_config(dir.path(), 3);
    btx::checkpoint::write_model_files(&start, &LanguageModel::seeded(&base.model, 2, &cpu()), &base.model).unwrap();
    let before = btx::checkpoint::tensor_file::read_tensors(&start.join("model.safetensors")).unwrap();
    let mut moved = Vec::new();
    for multiplier in [0.0, 0.1, 1.0] {
        let optimizer = btx::train::OptimizerConfig { shared_lr_multiplier: multiplier, ..base.optimizer.clone() };
        let config = btx::train::TrainConfig { optimizer, init_from: Some(start.clone()), ..base.clone() };
        let out = dir.path().join(format!("run-{multiplier}"));
        let summary = train(&config, "test", &cpu_selected(), &options(&out, false, None)).unwrap();
        let after = btx::checkpoint::tensor_file::read_tensors(&summary.checkpoint.join("model.safetensors")).unwrap();
        let change = |ffn: bool| -> f32 {
            after.iter().filter(|(n, _)| btx::checkpoint::tensor_names::is_ffn(n) == ffn).map(|(n, t)| max_abs_diff(&t.values, &before[n].values)).fold(0.0, f32::max)
        };
        moved.push((change(true), change(false)));
    }
    assert!(moved.iter().all(|&(ffn, _)| ffn > 0.0), "{moved:?}");
    assert_eq!(moved[0].1, 0.0, "multiplier 0 moved a shared weight: {moved:?}");
    assert!(moved[1].1 > 0.0 && moved[1].1 < moved[2].1, "{moved:?}");
}
