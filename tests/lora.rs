//! LoRA experts (engine/src/model/lora.rs): an adapter starts as no change, its merge equals
//! the adapted model, a LoRA run trains the adapters only (the base bit-identical, no
//! optimizer state for it), resumes exactly, and leaves a plain merged model.

use btx::burn::module::Param;
use btx::burn::prelude::*;
use btx::burn::tensor::Distribution;
use btx::checkpoint::{self, module_tensors::module_to_tensors, tensor_file::read_tensors};
use btx::model::LanguageModel;
use btx::model::lora::{self, LoraConfig};
use btx::train::{TrainOptions, train};

use crate::common::*;

fn lora_config(rank: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig { rank, alpha: Some(2.0 * rank as f64), dropout: 0.0, targets: targets.iter().map(|t| t.to_string()).collect() }
}

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[test]
fn an_adapter_starts_as_no_change_and_its_merge_equals_the_adapted_model() {
    let device = cpu();
    for config in [tiny_model(4, 2), btx::bench::bench_moe_config(&tiny_model(4, 2))] {
        let model = LanguageModel::seeded(&config, 3, &device);
        let tokens = random_tokens(2, 16, config.vocab_size, 5, &device);
        let before = to_vec(model.forward(tokens.clone()));
        let adapted = lora::attach(model, &lora_config(3, &ALL)).unwrap();
        assert!(lora::has_adapters(&adapted));
        let fresh = to_vec(adapted.forward(tokens.clone()));
        assert_eq!(max_abs_diff(&fresh, &before), 0.0, "a fresh adapter (B = 0) must change nothing");
        // Give every B a value, as training would.
        let mut adapted = adapted;
        for block in &mut adapted.layers {
            let layers = block.self_attn.iter_mut().flat_map(|a| [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let ffns = block.mlp.iter_mut().chain(block.block_sparse_moe.iter_mut().flat_map(|m| m.experts.iter_mut()));
            for layer in layers.chain(ffns.flat_map(|f| [&mut f.gate_proj, &mut f.up_proj, &mut f.down_proj])) {
                let dims = layer.lora_b.as_ref().unwrap().dims();
                layer.lora_b = Some(Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.05), &device)));
            }
        }
        let with_adapters = to_vec(adapted.forward(tokens.clone()));
        assert!(max_abs_diff(&with_adapters, &before) > 1e-3, "the adapters should change the logits");
        let merged = lora::merge(adapted);
        assert!(!lora::has_adapters(&merged));
        let diff = max_abs_diff(&to_vec(merged.forward(tokens)), &with_adapters);
        assert!(diff < 1e-4, "merged logits differ from the adapted model's by {diff}");
        // A merged model's tensors are a plain checkpoint's: no adapter names.
        assert!(module_to_tensors(&merged).keys().all(|name| !name.contains("lora")));
    }
}

#[test]
fn a_lora_run_trains_the_adapters_only_resumes_exactly_and_leaves_a_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 6);
    config.checkpoint_every = 3;
    config.keep_last = 5;
    config.lora = Some(lora_config(2, &["q_proj", "v_proj", "down_proj"]));
    let opts = |out: &std::path::Path, resume, stop_after| TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after };
    let initial = module_to_tensors(&LanguageModel::seeded(&config.model, config.seed, &cpu()));

    let whole = dir.path().join("whole");
    train(&config, "test", &cpu_selected(), &opts(&whole, false, None)).unwrap();
    // Step 3's checkpoint: adapters beside a base that has not moved, and optimizer state for
    // the adapters alone.
    let midway = checkpoint::checkpoint_steps(&whole).into_iter().find(|(s, _)| *s == 3).unwrap().1;
    let tensors = read_tensors(&midway.join(checkpoint::MODEL_FILE)).unwrap();
    let adapters: Vec<&String> = tensors.keys().filter(|n| n.contains("lora_")).collect();
    assert_eq!(adapters.len(), 2 * 3 * config.model.n_layers, "{adapters:?}");
    for (name, host) in &initial {
        assert_eq!(host.values, tensors[name].values, "frozen `{name}` changed");
    }
    let moments = read_tensors(&midway.join(checkpoint::OPTIMIZER_FILE)).unwrap();
    assert!(!moments.is_empty() && moments.keys().all(|n| n.contains("lora_")), "{:?}", moments.keys().collect::<Vec<_>>());

    // The final checkpoint: merged, loadable as a plain model; only the targeted projections moved.
    let (last, merged) = last_checkpoint(&whole);
    assert_eq!(merged.len(), initial.len(), "the merged model has the plain model's tensors");
    for (name, host) in &initial {
        let moved = merged[name].values != host.values;
        let targeted = ["q_proj", "v_proj", "down_proj"].iter().any(|t| name.contains(t));
        assert_eq!(moved, targeted, "`{name}`: moved {moved}, targeted {targeted}");
    }
    checkpoint::load_model(&last, &cpu()).unwrap();

    // The adapters in PEFT's format: W_final = W_base + (alpha / r) B A in PyTorch's layout.
    let adapter = whole.join(btx::train::ADAPTER_DIR);
    let peft_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((peft_config["peft_type"].as_str(), peft_config["r"].as_u64(), peft_config["lora_alpha"].as_f64()), (Some("LORA"), Some(2), Some(4.0)));
    let peft = read_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    assert_eq!(peft.len(), 2 * 3 * config.model.n_layers);
    let base_name = "model.layers.1.self_attn.v_proj.weight";
    let a = &peft["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"];
    let b = &peft["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"];
    let (out_dim, in_dim) = (initial[base_name].shape[0], initial[base_name].shape[1]);
    assert_eq!((a.shape.clone(), b.shape.clone()), (vec![2, in_dim], vec![out_dim, 2]));
    let mut worst = 0.0f32;
    for o in 0..out_dim {
        for i in 0..in_dim {
            let update: f32 = (0..2).map(|r| b.values[o * 2 + r] * a.values[r * in_dim + i]).sum::<f32>() * 2.0;
            let expected = initial[base_name].values[o * in_dim + i] + update;
            worst = worst.max((expected - merged[base_name].values[o * in_dim + i]).abs());
        }
    }
    assert!(worst < 1e-6, "base + scale B A differs from the merged weight by {worst}");

    // Stopped after 4 steps (past the adapter checkpoint of step 3), then resumed: the same.
    assert_a_resumed_run_ends_with(&config, dir.path(), 4, &merged);
}

#[test]
fn lora_settings_are_checked_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 2);
    for (lora, expected) in [
        (LoraConfig { rank: 0, ..lora_config(1, &ALL) }, "`lora.rank`"),
        (lora_config(2, &["qkv_proj"]), "unknown projection `qkv_proj`"),
        (LoraConfig { dropout: 1.0, ..lora_config(2, &ALL) }, "`lora.dropout`"),
    ] {
        config.lora = Some(lora);
        let err = config.validate("x.ron").unwrap_err().to_string();
        assert!(err.contains("x.ron") && err.contains(expected), "{err}");
    }
    config.lora = Some(lora_config(2, &ALL));
    config.trainable = Some(btx::train::trainable::Trainable::Patterns(vec!["mlp".into()]));
    let err = config.validate("x.ron").unwrap_err().to_string();
    assert!(err.contains("`lora` and `trainable`"), "{err}");
}

#[test]
fn a_lora_run_counts_the_flops_it_does() {
    // Per token: 2 (forward) + 2 (input gradients) per base weight, 6 per adapter parameter.
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 2);
    let full = config.train_flops_per_token();
    config.lora = Some(lora_config(2, &["q_proj", "down_proj"]));
    let m = &config.model;
    // q_proj d -> d and down_proj d_ff -> d in each layer, rank 2.
    let adapters = m.n_layers * 2 * ((m.d_model + m.d_model) + (m.d_ff + m.d_model));
    assert_eq!(config.lora.as_ref().unwrap().active_adapter_params(m), adapters);
    let expected = full - 2.0 * m.matmul_params() as f64 + 6.0 * adapters as f64;
    assert!((config.train_flops_per_token() - expected).abs() < 1e-6 * expected);
    assert!(config.train_flops_per_token() < full);
    // The run's state records them.
    let summary = train(&config, "test", &cpu_selected(), &TrainOptions { out: dir.path().join("run"), resume: false, progress: false, stop_after: None }).unwrap();
    let tokens = summary.state.tokens_seen as f64;
    assert!((summary.state.train_flops - expected * tokens).abs() < 1e-6 * expected * tokens);
}

/// `btx import-peft`: a dense LoRA run's adapter in PEFT's format, merged into the run's base
/// saved as a checkpoint, gives the run's own merged weights; a DoRA adapter or one that does
/// not fit the base is refused naming the key or the tensor.
#[test]
fn a_peft_adapter_merged_into_its_base_equals_the_runs_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 4);
    config.lora = Some(lora_config(2, &["q_proj", "up_proj"]));
    let run = dir.path().join("run");
    train(&config, "test", &cpu_selected(), &TrainOptions { out: run.clone(), resume: false, progress: false, stop_after: None }).unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    checkpoint::write_model_files(&base, &LanguageModel::seeded(&config.model, config.seed, &cpu()), &config.model).unwrap();
    let adapter = run.join(btx::train::ADAPTER_DIR);
    let (ok, stderr) = run_btx(&["import-peft", "--base", "base", "--adapter", adapter.to_str().unwrap(), "--out", "merged"], dir.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains(&format!("merged {} adapted modules", 2 * config.model.n_layers)), "{stderr}");
    let (want, got) = (last_checkpoint(&run).1, read_tensors(&dir.path().join("merged").join(checkpoint::MODEL_FILE)).unwrap());
    assert_eq!(want.len(), got.len());
    let worst = want.iter().map(|(n, t)| max_abs_diff(&t.values, &got[n].values)).fold(0.0, f32::max);
    assert!(worst < 1e-6, "the imported adapter's merge differs from the run's by {worst}");
    checkpoint::load_model(&dir.path().join("merged"), &cpu()).unwrap();

    // DoRA is refused by its key; an adapter for another shape by its tensor.
    let dora = dir.path().join("dora");
    std::fs::create_dir_all(&dora).unwrap();
    let mut peft_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    peft_config["use_dora"] = serde_json::json!(true);
    std::fs::write(dora.join("adapter_config.json"), peft_config.to_string()).unwrap();
    std::fs::copy(adapter.join("adapter_model.safetensors"), dora.join("adapter_model.safetensors")).unwrap();
    let (ok, stderr) = run_btx(&["import-peft", "--base", "base", "--adapter", "dora", "--out", "bad"], dir.path());
    assert!(!ok && stderr.contains("adapter_config.json: field `use_dora` is true"), "{stderr}");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let wide = btx::config::ModelConfig { d_model: 64, ..config.model.clone() };
    checkpoint::write_model_files(&other, &LanguageModel::seeded(&wide, 1, &cpu()), &wide).unwrap();
    let (ok, stderr) = run_btx(&["import-peft", "--base", "other", "--adapter", adapter.to_str().unwrap(), "--out", "bad"], dir.path());
    assert!(!ok && stderr.contains("do not fit the weight"), "{stderr}");
    assert!(!dir.path().join("bad").exists(), "a refused import wrote its output");
}

/// `btx import-peft` against peft itself: adapters made and merged by peft 0.21.2
/// (tests/fixtures/peft/make_fixtures.py: rank 4 on all seven projections, and rank 2 with
/// rsLoRA's alpha / sqrt(r) on three) on the tiny Qwen2 of tests/fixtures/hf, imported onto
/// that base imported with `btx import-hf`, give the logits of peft's `merge_and_unload()`.
#[test]
fn peft_adapters_import_to_the_logits_of_peft_merge_and_unload() {
    let dir = tempfile::tempdir().unwrap();
    btx::hf::import_hf(&repo_root().join("tests/fixtures/hf/qwen2"), &dir.path().join("base")).unwrap();
    let (tokens, base_logits) = recorded_logits(&repo_root().join("tests/fixtures/hf/qwen2"));
    for (name, modules) in [("lora", 7), ("rslora", 3)] {
        let fixture = repo_root().join("tests/fixtures/peft").join(name);
        let out = format!("merged-{name}");
        let (ok, stderr) = run_btx(&["import-peft", "--base", "base", "--adapter", fixture.to_str().unwrap(), "--out", &out], dir.path());
        assert!(ok, "{name}: {stderr}");
        assert!(stderr.contains(&format!("merged {} adapted modules", modules * 2)), "{name}: {stderr}");
        let (fixture_tokens, want) = recorded_logits(&fixture);
        assert_eq!(fixture_tokens, tokens);
        let got = checkpoint_logits(&dir.path().join(&out), &tokens);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (diff, effect) = (max_abs_diff(&got, &want), max_abs_diff(&want, &base_logits));
        eprintln!("{name}: largest logit difference to peft {diff:.2e}; the adapter's own effect {effect:.2}");
        assert!(effect > 0.1, "{name}: the adapter changes the logits by {effect} only");
        assert!(diff <= 1e-4 * scale, "{name}: max difference {diff} at logit scale {scale}");
    }
}
