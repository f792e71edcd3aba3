//! The MoE LM: the dense LM with MoE layers swapped in. It reduces to the dense model when
//! its experts are copies of the dense FFNs, trains in every routing mode, and its checkpoint
//! round-trips with Mixtral's tensor names.

use btx::checkpoint::module_tensors::{module_from_tensors, module_to_tensors};
use btx::checkpoint::tensor_file::HostTensor;
use btx::checkpoint::{self, load_model, write_model_files};
use btx::eval::{evaluate, mean_loss};
use btx::model::LanguageModel;
use btx::model::moe_config::{MoeConfig, Routing};
use btx::train::{TrainOptions, train};
use btx::data::load_domains;

use crate::common::*;

#[test]
fn moe_lm_with_copies_of_the_dense_ffns_equals_the_dense_lm() {
    let device = cpu();
    device.seed(21);
    let dense_config = tiny_model(4, 2);
    let dense = LanguageModel::new(&dense_config, &device);
    let dense_tensors = module_to_tensors(&dense);

    // Not Switch: it scales the chosen expert by p_i(x) < 1, so copies give p_i(x) FFN(x)
    // (checked per layer in moe.rs).
    for routing in [Routing::TopK, Routing::Soft] {
        let mut config = dense_config.clone();
        config.moe = Some(MoeConfig::new(4, 2, routing.clone()));
        let fresh = LanguageModel::new(&config, &device);
        // Every tensor from the dense model, except each FFN copied into the 4 experts;
        // the routers stay as initialised.
        let mut tensors = module_to_tensors(&fresh);
        for (name, t) in &dense_tensors {
            match name.split_once(".mlp.") {
                Some((layer, rest)) => {
                    let w = match rest {
                        "gate_proj.weight" => "w1",
                        "down_proj.weight" => "w2",
                        "up_proj.weight" => "w3",
                        other => panic!("unexpected {other}"),
                    };
                    for e in 0..4 {
                        tensors.insert(format!("{layer}.block_sparse_moe.experts.{e}.{w}.weight"), t.clone());
                    }
                }
                None => {
                    tensors.insert(name.clone(), t.clone());
                }
            }
        }
        let model = module_from_tensors(fresh, &tensors, "test").unwrap();
        let tokens = random_tokens(2, 16, config.vocab_size, 5, &device);
        let diff = max_abs_diff(&to_vec(dense.forward(tokens.clone())), &to_vec(model.forward(tokens)));
        assert!(diff < 1e-4, "{routing:?}: max logit difference {diff}");
    }
}

#[test]
fn moe_checkpoint_has_mixtral_names_and_round_trips() {
    let device = cpu();
    let mut config = tiny_model(4, 2);
    config.moe = Some(MoeConfig::new(4, 2, Routing::TopK));
    device.seed(3);
    let model = LanguageModel::new(&config, &device);
    let tensors = module_to_tensors(&model);
    let shape = |n: &str| tensors.get(n).map(|t: &HostTensor| t.shape.clone()).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(shape("model.layers.0.block_sparse_moe.gate.weight"), vec![4, 32]);
    assert_eq!(shape("model.layers.1.block_sparse_moe.experts.3.w1.weight"), vec![64, 32]);
    assert_eq!(shape("model.layers.1.block_sparse_moe.experts.3.w2.weight"), vec![32, 64]);
    assert_eq!(shape("model.layers.1.block_sparse_moe.experts.0.w3.weight"), vec![64, 32]);
    assert!(!tensors.keys().any(|n| n.contains(".mlp.")));
    assert_eq!(tensors.len(), 1 + 2 * (2 + 4 + 1 + 4 * 3) + 1 + 1);

    let dir = tempfile::tempdir().unwrap();
    write_model_files(dir.path(), &model, &config).unwrap();
    let (loaded_config, loaded) = load_model(dir.path(), &device).unwrap();
    assert_eq!(loaded_config, config);
    let tokens = random_tokens(2, 16, config.vocab_size, 8, &device);
    assert_eq!(to_vec(model.forward(tokens.clone())), to_vec(loaded.forward(tokens)));
}

#[test]
fn moe_lm_trains_in_every_routing_mode() {
    let modes = [
        (2, Routing::TopK),
        (1, Routing::Switch { capacity_factor: 1.5 }),
        (1, Routing::Soft),
        (1, Routing::SampleTop1 { tau_min: 0.5, tau_decay: 1e-2, first_layer_soft: true }),
    ];
    for (k, routing) in modes {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tiny_train_config(dir.path(), 30);
        config.model.moe = Some(MoeConfig::new(4, k, routing.clone()));
        let domains = load_domains(&config.data, config.model.vocab_size, "test").unwrap();
        let device = cpu();
        device.seed(config.seed);
        let before = mean_loss(&evaluate(&LanguageModel::new(&config.model, &device), &domains, 8, 2, &device));
        let out = dir.path().join("run");
        let selected = cpu_selected();
        let options = TrainOptions { out: out.clone(), resume: false, progress: false, stop_after: None };
        let summary = train(&config, "test", &selected, &options).unwrap();
        let after = mean_loss(&summary.final_eval);
        assert!(after < before - 1.5, "{routing:?}: mean val loss {before} -> {after}");
        // Routing statistics reach evaluation and the training metrics.
        let routing_shares = summary.final_eval[0].routing.as_ref().map(|r| r.panels()).unwrap_or_default();
        assert_eq!(routing_shares.len(), 2, "{routing:?}");
        assert!(routing_shares.iter().all(|l| l.len() == 4 && (l.iter().sum::<f64>() - 1.0).abs() < 1e-9));
        let steps = btx::train::metrics::read_steps(&out.join("metrics.jsonl")).unwrap();
        assert!(steps[0].routing.is_some() && steps[0].aux_loss > 0.0);
    }
}

#[test]
fn frozen_experts_do_not_change_while_routers_train() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    let mut m = MoeConfig::new(4, 2, Routing::TopK);
    m.freeze_experts = true;
    config.model.moe = Some(m);
    let out = dir.path().join("run");
    let selected = cpu_selected();
    let options = TrainOptions { out: out.clone(), resume: false, progress: false, stop_after: None };
    let device = cpu();
    device.seed(config.seed);
    let initial = module_to_tensors(&LanguageModel::seeded(&config.model, config.seed, &device));
    let summary = train(&config, "test", &selected, &options).unwrap();
    let trained = module_to_tensors(&checkpoint::load_model(&summary.checkpoint, &device).unwrap().1);
    for (name, t) in &initial {
        let changed = max_abs_diff(&t.values, &trained[name].values) > 0.0;
        if name.contains(".experts.") {
            assert!(!changed, "frozen expert tensor {name} changed");
        } else {
            assert!(changed, "{name} did not train");
        }
    }
}

/// `router_lr_multiplier` scales the routers' AdamW update and nothing else: with the same
/// gradients, a multiplier of 10 moves every router weight 10 times as far and every other
/// weight exactly as far as a multiplier of 1.
#[test]
fn the_routers_learn_at_their_multiple_of_the_learning_rate() {
    use btx::train::adamw::AdamW;
    use burn::optim::GradientsParams;
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 1);
    config.model.moe = Some(MoeConfig::new(4, 2, Routing::TopK));
    let device = cpu().autodiff();
    let model = LanguageModel::seeded(&config.model, 5, &device);
    let tokens = random_tokens(2, 16, config.model.vocab_size, 9, &device);
    let before = module_to_tensors(&model);
    let step = |multiplier: f64| {
        let loss = model.clone().training_loss(tokens.clone(), tokens.clone(), btx::model::moe::RoutingContext { training: true, step: 0 }).total();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optimizer = AdamW::new(btx::train::OptimizerConfig { router_lr_multiplier: multiplier, ..config.optimizer.clone() });
        module_to_tensors(&optimizer.step(model.clone(), grads, 1e-3, 1.0))
    };
    let (slow, fast) = (step(1.0), step(10.0));
    let mut routers = 0;
    for (name, x) in &before {
        let moved = |after: &btx::checkpoint::tensor_file::TensorMap| -> Vec<f32> { after[name].values.iter().zip(&x.values).map(|(a, b)| a - b).collect() };
        let (slow, fast) = (moved(&slow), moved(&fast));
        if btx::checkpoint::tensor_names::is_router(name) {
            routers += 1;
            let scaled: Vec<f32> = slow.iter().map(|d| d * 10.0).collect();
            assert!(max_abs_diff(&fast, &scaled) < 1e-6 && slow.iter().any(|d| d.abs() > 1e-5), "{name}");
        } else {
            assert_eq!(fast, slow, "{name}");
        }
    }
    assert_eq!(routers, config.model.n_layers);
}

/// Evaluation measures each router's entropy per token: ln E for a router that cannot tell
/// its experts apart (zero weights: uniform probabilities), near 0 for one that is sure.
#[test]
fn router_entropy_is_ln_e_for_a_blind_router_and_near_zero_for_a_sure_one() {
    let device = cpu();
    let mut config = tiny_model(4, 2);
    config.moe = Some(MoeConfig::new(4, 2, Routing::TopK));
    let model = LanguageModel::seeded(&config, 3, &device);
    let tokens = random_tokens(2, 16, config.vocab_size, 4, &device);
    let entropies = |scale: f32| -> Vec<f64> {
        let mut tensors = module_to_tensors(&model);
        for (name, t) in tensors.iter_mut() {
            if btx::checkpoint::tensor_names::is_router(name) {
                // Scaled up, the random rows' logits lie far apart: one expert takes it all.
                t.values.iter_mut().for_each(|v| *v *= scale);
            }
        }
        let routed = module_from_tensors(model.clone(), &tensors, "test").unwrap();
        let (_, aux) = routed.forward_with_aux(tokens.clone(), btx::model::moe::RoutingContext::default());
        aux.iter().map(|a| a.router_entropy_sum.clone().unwrap().into_scalar::<f32>() as f64 / a.tokens as f64).collect()
    };
    let blind = entropies(0.0);
    assert!(blind.len() == 2 && blind.iter().all(|h| (h - 4f64.ln()).abs() < 1e-5), "{blind:?}");
    let sure = entropies(1e4);
    assert!(sure.iter().all(|h| *h < 0.05), "{sure:?}");
}
