//! Frozen weights held in half precision (`frozen_precision`, engine/src/train/precision.rs):
//! the frozen projections are stored as f16/bf16 while adapters, routers, the embedding, the
//! head and norms stay f32; on the CPU a model so held computes exactly as the f32 model whose
//! frozen weights were rounded to that dtype (values and the adapters' gradients); a LoRA run
//! held in bf16 tracks the f32 run, resumes exactly and merges into f32 weights.

use btx::burn::prelude::*;
use btx::burn::tensor::DType;
use btx::checkpoint::{self, module_tensors::{freeze_all_but, module_from_tensors, module_to_tensors}, tensor_file::read_tensors};
use btx::model::LanguageModel;
use btx::model::lora::{self, LoraConfig};
use btx::model::moe::RoutingContext;
use btx::train::metrics::read_steps;
use btx::train::precision::FrozenPrecision;
use btx::train::start::hold_frozen_in;
use btx::train::trainable::Trainable;
use btx::train::{TrainConfig, TrainOptions, train};

use crate::common::*;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `v` rounded to bf16, as f32.
fn bf16_rounded(v: f32) -> f32 {
    btx::burn::tensor::bf16::from_f32(v).to_f32()
}

fn lora_config(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: Some(2.0 * rank as f64), dropout: 0.0, targets: ALL.iter().map(|t| t.to_string()).collect() }
}

/// Logits and the trained parameters' gradients of one training loss.
fn logits_and_grads(model: &LanguageModel, tokens: &Tensor<2, Int>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let [batch, len] = tokens.dims();
    let (inputs, targets) = (tokens.clone().narrow(1, 0, len - 1), tokens.clone().narrow(1, 1, len - 1));
    let logits = to_vec(model.forward(inputs.clone()));
    let grads = model.training_loss(inputs, targets, RoutingContext::default()).total().backward();
    let mut trained = Vec::new();
    for block in &model.layers {
        let attention = block.self_attn.iter().flat_map(|a| [&a.q_proj, &a.v_proj, &a.o_proj]);
        let ffn = block.mlp.iter().chain(block.block_sparse_moe.iter().flat_map(|m| m.experts.iter())).flat_map(|f| [&f.gate_proj, &f.down_proj]);
        for layer in attention.chain(ffn) {
            for param in layer.lora_a.iter().chain(&layer.lora_b) {
                trained.push(to_vec(param.val().grad(&grads).expect("an adapter's gradient")));
            }
        }
        if let Some(moe) = &block.block_sparse_moe {
            trained.push(to_vec(moe.gate.weight.val().grad(&grads).expect("a router's gradient")));
        }
    }
    assert!(batch > 0 && !trained.is_empty());
    (logits, trained)
}

#[test]
fn frozen_projections_held_in_half_compute_as_their_rounded_f32_values() {
    let device = cpu().autodiff();
    let dense = tiny_model(4, 2);
    let moe = btx::bench::bench_moe_config(&dense);
    for (config, precision) in [(&dense, FrozenPrecision::BF16), (&dense, FrozenPrecision::F16), (&moe, FrozenPrecision::BF16)] {
        // A LoRA base (dense), or an MoE whose routers train and whose experts get adapters.
        let model = lora::attach(LanguageModel::seeded(config, 3, &device), &lora_config(2)).unwrap();
        let mut trains = lora::trainable_names();
        trains.push(".gate.weight".into());
        let (model, _) = freeze_all_but(model, &trains);
        let held = hold_frozen_in(model.clone(), precision);
        let dtype = precision.dtype().unwrap();

        // What is held in half, and what stays f32.
        let block = &held.layers[0];
        let attention = block.self_attn.as_ref().unwrap();
        assert_eq!(attention.q_proj.weight.val().dtype(), dtype, "{precision:?}");
        let ffn = block.mlp.as_ref().or_else(|| block.block_sparse_moe.as_ref().map(|m| &m.experts[1])).unwrap();
        assert_eq!(ffn.down_proj.weight.val().dtype(), dtype);
        assert_eq!(attention.q_proj.lora_a.as_ref().unwrap().val().dtype(), DType::F32, "adapters train in f32");
        assert_eq!(held.embed_tokens.weight.val().dtype(), DType::F32, "the embedding stays f32");
        assert_eq!(block.input_layernorm.gamma.val().dtype(), DType::F32, "norms stay f32");
        if let Some(moe) = &block.block_sparse_moe {
            assert_eq!(moe.gate.weight.val().dtype(), DType::F32, "routers stay f32");
        }

        // The reference: the same model with every held weight rounded and stored back in f32.
        let rounded = module_to_tensors(&held);
        let reference = freeze_all_but(module_from_tensors(model, &rounded, "rounded").unwrap(), &trains).0;
        assert_eq!(reference.layers[0].self_attn.as_ref().unwrap().q_proj.weight.val().dtype(), DType::F32);
        let original = module_to_tensors(&LanguageModel::seeded(config, 3, &device));
        let q = "model.layers.0.self_attn.q_proj.weight";
        let rounding = max_abs_diff(&rounded[q].values, &original[q].values);
        assert!(rounding > 0.0 && rounding < 1e-2, "{precision:?}: q_proj rounded by {rounding}");

        let tokens = random_tokens(2, 17, config.vocab_size, 5, &device);
        let (held_logits, held_grads) = logits_and_grads(&held, &tokens);
        let (reference_logits, reference_grads) = logits_and_grads(&reference, &tokens);
        assert_eq!(max_abs_diff(&held_logits, &reference_logits), 0.0, "{precision:?}: logits differ from the rounded f32 model's");
        for (h, r) in held_grads.iter().zip(&reference_grads) {
            assert_eq!(max_abs_diff(h, r), 0.0, "{precision:?}: a trained parameter's gradient differs");
        }
    }
}

#[test]
fn a_lora_run_held_in_bf16_tracks_f32_resumes_exactly_and_merges_into_f32_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 6);
    config.checkpoint_every = 3;
    config.keep_last = 5;
    config.lora = Some(lora_config(2));
    let held = TrainConfig { frozen_precision: FrozenPrecision::BF16, ..config.clone() };
    let opts = |out: &std::path::Path, resume, stop_after| TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after };

    let f32_run = dir.path().join("f32");
    train(&config, "test", &cpu_selected(), &opts(&f32_run, false, None)).unwrap();
    let whole = dir.path().join("bf16");
    train(&held, "test", &cpu_selected(), &opts(&whole, false, None)).unwrap();
    let (f32_steps, bf16_steps) = (read_steps(&f32_run.join("metrics.jsonl")).unwrap(), read_steps(&whole.join("metrics.jsonl")).unwrap());
    assert!(f32_steps.iter().zip(&bf16_steps).any(|(a, b)| a.loss != b.loss), "bf16 weights changed no loss");
    for (a, b) in f32_steps.iter().zip(&bf16_steps) {
        assert!((a.loss - b.loss).abs() < 0.01 * a.loss, "step {}: f32 {} against bf16 {}", a.step, a.loss, b.loss);
    }
    assert!(bf16_steps.iter().all(|s| s.loss_scale.is_none()), "the CPU computes in f32: no loss scaling");

    // Step 3's checkpoint holds the frozen base as its bf16 values (written as f32).
    let initial = module_to_tensors(&LanguageModel::seeded(&config.model, config.seed, &cpu()));
    let midway = checkpoint::checkpoint_steps(&whole).into_iter().find(|(s, _)| *s == 3).unwrap().1;
    let tensors = read_tensors(&midway.join(checkpoint::MODEL_FILE)).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    assert!(tensors[name].values.iter().zip(&initial[name].values).all(|(held, original)| *held == bf16_rounded(*original)));
    let embedding = "model.embed_tokens.weight";
    assert_eq!(tensors[embedding].values, initial[embedding].values, "the embedding is not held in half");

    // The final checkpoint: merged f32 weights, loadable, the same after stopping and resuming.
    let (last, merged) = last_checkpoint(&whole);
    assert!(merged.keys().all(|n| !n.contains("lora")));
    assert!(merged[name].values.iter().zip(&initial[name].values).any(|(m, o)| *m != bf16_rounded(*o)), "the adapter moved up_proj");
    checkpoint::load_model(&last, &cpu()).unwrap();
    assert_a_resumed_run_ends_with(&held, dir.path(), 4, &merged);
}

#[test]
fn a_router_only_finetune_holds_its_experts_in_bf16_and_trains_its_routers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 3);
    config.model = btx::bench::bench_moe_config(&config.model);
    config.trainable = Some(Trainable::Routers);
    config.frozen_precision = FrozenPrecision::BF16;
    let out = dir.path().join("routers");
    train(&config, "test", &cpu_selected(), &TrainOptions { out: out.clone(), resume: false, progress: false, stop_after: None }).unwrap();
    let initial = module_to_tensors(&LanguageModel::seeded(&config.model, config.seed, &cpu()));
    let (_, trained) = last_checkpoint(&out);
    for (name, host) in &initial {
        let values = &trained[name].values;
        if name.ends_with(".block_sparse_moe.gate.weight") {
            assert_ne!(values, &host.values, "router `{name}` did not train");
        } else if name.contains(".experts.") || name.contains("_proj.weight") {
            assert!(values.iter().zip(&host.values).all(|(t, o)| *t == bf16_rounded(*o)), "`{name}` is not its bf16 rounding");
        } else {
            assert_eq!(values, &host.values, "`{name}` (f32, frozen) changed");
        }
    }
    // Without anything frozen, the field is refused by name.
    let full = TrainConfig { trainable: None, ..config };
    let error = full.validate("full.ron").unwrap_err().to_string();
    assert!(error.contains("full.ron") && error.contains("`frozen_precision`") && error.contains("trains every weight"), "{error}");
}
