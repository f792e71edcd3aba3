//! Hugging Face interop against fixtures made by transformers itself
//! (tests/fixtures/hf/make_fixtures.py: transformers 5.24.0, torch 2.15.0).

use std::path::{Path, PathBuf};

use btx::burn::prelude::*;
use btx::checkpoint::load_model;
use btx::checkpoint::tensor_file::read_tensors;
use btx::hf::{export_hf, import_hf};
use btx::merge::MergeInput;
use btx::merge::mix::{MoeOptions, mix};
use btx::model::moe_config::Routing;

use crate::common::*;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/hf").join(name)
}

#[test]
fn imported_fixtures_give_the_logits_of_transformers() {
    for name in ["llama", "mixtral", "llama3", "qwen2", "qwen3"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ckpt");
        let config = import_hf(&fixture(name), &out).unwrap();
        assert_eq!(config.moe.is_some(), name == "mixtral");
        assert_eq!(config.rope_scaling.is_some(), name == "llama3");
        assert_eq!((config.attention_bias, config.qk_norm, config.head_dim), (name == "qwen2", name == "qwen3", (name == "qwen3").then_some(16)));
        let (tokens, want) = recorded_logits(&fixture(name));
        let got = checkpoint_logits(&out, &tokens);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&got, &want);
        eprintln!("{name}: largest logit difference to transformers {diff:.2e} (logit scale {scale:.2})");
        assert!(diff <= 1e-4 * scale, "{name}: max difference {diff} at logit scale {scale}");
        if name == "llama3" {
            // Without its RoPE scaling the same weights give other logits: the test sees it.
            let plain = dir.path().join("plain");
            std::fs::create_dir_all(&plain).unwrap();
            std::fs::copy(fixture(name).join("model.safetensors"), plain.join("model.safetensors")).unwrap();
            let mut hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap();
            hf["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 10000.0});
            std::fs::write(plain.join("config.json"), hf.to_string()).unwrap();
            import_hf(&plain, &dir.path().join("plain-ckpt")).unwrap();
            let off = max_abs_diff(&checkpoint_logits(&dir.path().join("plain-ckpt"), &tokens), &want);
            assert!(off > 100.0 * diff.max(1e-6), "unscaled RoPE gave nearly the same logits: {off} vs {diff}");
        }
    }
}

#[test]
fn import_export_import_gives_identical_tensors() {
    for name in ["llama", "mixtral", "llama3", "qwen2", "qwen3"] {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        import_hf(&fixture(name), &a).unwrap();
        let tokenizer = repo_root().join("assets/tokenizer.json");
        export_hf(&a, &dir.path().join("hf"), Some(&tokenizer), false).unwrap();
        let b = dir.path().join("b");
        import_hf(&dir.path().join("hf"), &b).unwrap();
        assert_eq!(read_tensors(&a.join("model.safetensors")).unwrap(), read_tensors(&b.join("model.safetensors")).unwrap(), "{name}");
        // Exported as the fixture's own architecture.
        let arch = |dir: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()["architectures"].clone();
        assert_eq!(arch(&dir.path().join("hf")), arch(&fixture(name)), "{name}");
        assert!(dir.path().join("hf/tokenizer.json").is_file());
    }
}

#[test]
fn btx_merge_of_imported_experts_exports_what_mixtral_expects() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    import_hf(&fixture("llama"), &seed).unwrap();
    let experts: Vec<MergeInput> = (0..3).map(|_| MergeInput::load(&seed).unwrap()).collect();
    let generalist = MergeInput::load(&seed).unwrap();
    let (config, tensors) = mix(&experts, Some(&generalist), None, &MoeOptions { load_balance: 0.01, ..Default::default() }, None).unwrap().into_tensors().unwrap();
    let moe = dir.path().join("moe");
    btx::checkpoint::write_tensor_checkpoint(&moe, &config, &tensors, &[]).unwrap();
    let out = dir.path().join("hf");
    export_hf(&moe, &out, Some(&repo_root().join("assets/tokenizer.json")), false).unwrap();

    // Tensor names and shapes exactly those of the MixtralForCausalLM transformers saved.
    let ours = read_tensors(&out.join("model.safetensors")).unwrap();
    let theirs = read_tensors(&fixture("mixtral").join("model.safetensors")).unwrap();
    let shapes = |m: &btx::checkpoint::tensor_file::TensorMap| m.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&ours), shapes(&theirs));
    // The config fields Mixtral reads.
    let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("mixtral").join("config.json")).unwrap()).unwrap();
    for field in [
        "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "rms_norm_eps",
        "tie_word_embeddings", "sliding_window", "vocab_size", "max_position_embeddings", "hidden_act",
    ] {
        assert_eq!(ours[field], theirs[field], "config field {field}");
    }
    assert_eq!(ours["rope_parameters"]["rope_theta"], theirs["rope_parameters"]["rope_theta"]);
}

#[test]
fn routing_mixtral_cannot_express_is_refused_unless_closest() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    import_hf(&fixture("mixtral"), &ckpt).unwrap();
    let mut config = btx::checkpoint::read_model_config(&ckpt).unwrap();
    config.moe.as_mut().unwrap().routing = Routing::Soft;
    std::fs::write(ckpt.join("model.ron"), btx::config::to_ron(&config).unwrap()).unwrap();
    btx::checkpoint::integrity::seal(&ckpt).unwrap(); // an edit the checkpoint's hashes accept
    let tokenizer = repo_root().join("assets/tokenizer.json");
    let err = format!("{:#}", export_hf(&ckpt, &dir.path().join("out"), Some(&tokenizer), false).unwrap_err());
    assert!(err.contains("Soft") && err.contains("--closest"), "{err}");
    assert!(!dir.path().join("out").exists());
    export_hf(&ckpt, &dir.path().join("out"), Some(&tokenizer), true).unwrap();
    let hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/config.json")).unwrap()).unwrap();
    assert_eq!(hf["num_experts_per_tok"], 4);
}

/// A copy of a fixture folder with its tensors rewritten by `edit`.
fn edited_fixture(dir: &Path, edit: impl FnOnce(&mut btx::checkpoint::tensor_file::TensorMap)) -> PathBuf {
    let out = dir.join("edited");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(fixture("mixtral").join("config.json"), out.join("config.json")).unwrap();
    let mut tensors = read_tensors(&fixture("mixtral").join("model.safetensors")).unwrap();
    edit(&mut tensors);
    btx::checkpoint::tensor_file::write_tensors(&out.join("model.safetensors"), &tensors, Default::default()).unwrap();
    out
}

#[test]
fn malformed_folders_are_errors_naming_the_tensor_or_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = edited_fixture(dir.path(), |t| {
        t.remove("model.layers.1.block_sparse_moe.experts.2.w3.weight");
    });
    let err = format!("{:#}", import_hf(&missing, &dir.path().join("a")).unwrap_err());
    assert!(err.contains("model.layers.1.block_sparse_moe.experts.2.w3.weight") && err.contains("missing"), "{err}");
    assert!(!dir.path().join("a").exists(), "a failed import left a folder");

    let dir = tempfile::tempdir().unwrap();
    let wrong = edited_fixture(dir.path(), |t| {
        let w = t.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        w.shape = vec![32, 16];
    });
    let err = format!("{:#}", import_hf(&wrong, &dir.path().join("a")).unwrap_err());
    assert!(err.contains("model.layers.0.self_attn.k_proj.weight") && err.contains("[32, 16]"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let other = edited_fixture(dir.path(), |_| {});
    let config = std::fs::read_to_string(other.join("config.json")).unwrap().replace("MixtralForCausalLM", "GPT2LMHeadModel");
    std::fs::write(other.join("config.json"), config).unwrap();
    let err = format!("{:#}", import_hf(&other, &dir.path().join("a")).unwrap_err());
    assert!(err.contains("architectures") && err.contains("GPT2LMHeadModel"), "{err}");
}

/// An imported Mixtral trains with the balancing it was trained with: transformers' pooled
/// loss, weighted by its router_aux_loss_coef (tests/fixtures/hf/record_greedy.py recorded
/// transformers' value for these tokens).
#[test]
fn imported_mixtral_balances_as_transformers_does() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("mixtral");
    import_hf(&fixture("mixtral"), &ckpt).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("mixtral").join("aux_loss.json")).unwrap()).unwrap();
    let (config, model) = load_model(&ckpt, &cpu()).unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!(moe.balance, btx::model::moe_config::Balance::Mixtral);
    let coef = reference["router_aux_loss_coef"].as_f64().unwrap();
    assert_eq!(moe.load_balance, coef);
    let tokens: Vec<i64> = serde_json::from_value(reference["tokens"].clone()).unwrap();
    let n = tokens.len();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, n]), &cpu());
    let loss = model.training_loss(inputs.clone(), inputs, btx::model::moe::RoutingContext::default());
    let ours = loss.aux.unwrap().into_scalar::<f32>() as f64 / coef;
    let theirs = reference["aux_loss"].as_f64().unwrap();
    assert!((ours - theirs).abs() < 1e-4 * theirs.abs(), "engine {ours}, transformers {theirs}");
}

/// An MoE with a shared expert exports as transformers' Qwen2-MoE: the tensor names and shapes
/// of the Qwen2MoeForCausalLM transformers saved, the config fields it reads, the shared gate
/// zero and the shared down projection doubled (sigmoid(0) = 1/2 halves it back). An MoE with
/// attention experts is refused: no transformers architecture has them.
#[test]
fn a_shared_expert_exports_as_qwen2_moe_and_attention_experts_are_refused() {
    use btx::merge::mix::{Perturbation, SharedExpert, bam};
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    import_hf(&fixture("llama"), &seed).unwrap();
    let input = MergeInput::load(&seed).unwrap();
    let options = MoeOptions { shared_expert: SharedExpert::Seed, load_balance: 0.01, ..Default::default() };
    let (config, tensors) = btx::merge::upcycle::upcycle(&input, 4, Perturbation::default(), &options, None).unwrap().into_tensors().unwrap();
    let moe = dir.path().join("moe");
    btx::checkpoint::write_tensor_checkpoint(&moe, &config, &tensors, &[]).unwrap();
    let out = dir.path().join("hf");
    export_hf(&moe, &out, Some(&repo_root().join("assets/tokenizer.json")), false).unwrap();

    let ours = read_tensors(&out.join("model.safetensors")).unwrap();
    let theirs = read_tensors(&fixture("qwen2_moe").join("model.safetensors")).unwrap();
    let shapes = |m: &btx::checkpoint::tensor_file::TensorMap| m.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&ours), shapes(&theirs));
    assert!(ours["model.layers.1.mlp.shared_expert_gate.weight"].values.iter().all(|&v| v == 0.0));
    let down = &tensors["model.layers.1.block_sparse_moe.shared_expert.down_proj.weight"].values;
    let doubled: Vec<f32> = down.iter().map(|v| 2.0 * v).collect();
    assert_eq!(ours["model.layers.1.mlp.shared_expert.down_proj.weight"].values, doubled);

    let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("qwen2_moe").join("config.json")).unwrap()).unwrap();
    for field in [
        "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob",
        "qkv_bias", "decoder_sparse_step", "mlp_only_layers", "use_sliding_window", "router_aux_loss_coef", "vocab_size",
    ] {
        assert_eq!(ours[field], theirs[field], "config field {field}");
    }

    let experts: Vec<MergeInput> = (0..2).map(|_| MergeInput::load(&seed).unwrap()).collect();
    let (config, tensors) = bam(&experts, None, None, &MoeOptions::default(), None, true).unwrap().into_tensors().unwrap();
    let bam_dir = dir.path().join("bam");
    btx::checkpoint::write_tensor_checkpoint(&bam_dir, &config, &tensors, &[]).unwrap();
    let err = format!("{:#}", export_hf(&bam_dir, &dir.path().join("bam-hf"), Some(&repo_root().join("assets/tokenizer.json")), false).unwrap_err());
    assert!(err.contains("attention experts") && err.contains("own checkpoint"), "{err}");
}

/// RoPE scaling in a config.json: Llama 3.1's (`llama3`) and linear, as transformers 5
/// nests them in `rope_parameters` and as 4.x writes them in `rope_scaling`, import to the
/// engine's `RopeScaling` and export back to the same fields; other types are refused by name.
#[test]
fn rope_scaling_imports_and_exports_and_unknown_types_are_refused() {
    use btx::hf::config::{from_hf_config, to_hf_config};
    use btx::model::rope::RopeScaling;
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("llama").join("config.json")).unwrap()).unwrap();
    let llama3 = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    let expected = RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16 };
    let mut v5 = base.clone();
    v5["rope_parameters"] = llama3.clone();
    let mut v4 = base.clone();
    v4.as_object_mut().unwrap().remove("rope_parameters");
    v4["rope_theta"] = serde_json::json!(500000.0);
    v4["rope_scaling"] = llama3.clone();
    for hf in [&v5, &v4] {
        let config = from_hf_config(hf, "config.json").unwrap();
        assert_eq!((config.rope_scaling.as_ref(), config.rope_theta), (Some(&expected), 500000.0));
        let exported = to_hf_config(&config, false).unwrap();
        assert_eq!(exported["rope_parameters"], llama3);
        assert_eq!(from_hf_config(&exported, "exported").unwrap(), config);
    }
    let mut linear = base.clone();
    linear["rope_parameters"] = serde_json::json!({"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0});
    assert_eq!(from_hf_config(&linear, "c").unwrap().rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    let mut yarn = base.clone();
    yarn["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0});
    let err = format!("{:#}", from_hf_config(&yarn, "c").unwrap_err());
    assert!(err.contains("rope_parameters") && err.contains("yarn") && err.contains("llama3"), "{err}");
    let mut incomplete = base.clone();
    incomplete["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0});
    let err = format!("{:#}", from_hf_config(&incomplete, "c").unwrap_err());
    assert!(err.contains("rope_parameters.low_freq_factor"), "{err}");
}

/// Qwen2's config carries a `sliding_window` that acts only when `use_sliding_window` (or
/// transformers 5's `layer_types`) turns it on: imported then, refused when it would act
/// within the context; attention experts (BAM) are refused for the Qwen attention options.
#[test]
fn qwen_sliding_window_is_refused_only_when_it_acts() {
    use btx::hf::config::from_hf_config;
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("qwen2").join("config.json")).unwrap()).unwrap();
    let mut off = base.clone();
    off["sliding_window"] = serde_json::json!(16);
    assert!(from_hf_config(&off, "c").unwrap().attention_bias);
    for (field, value) in [("use_sliding_window", serde_json::json!(true)), ("layer_types", serde_json::json!(["sliding_attention", "full_attention"]))] {
        let mut on = off.clone();
        on[field] = value;
        let err = format!("{:#}", from_hf_config(&on, "c").unwrap_err());
        assert!(err.contains("sliding_window") && err.contains("16"), "{err}");
    }
}

/// MoEs of Qwen experts export to transformers' Qwen MoEs: of Qwen3 experts as
/// Qwen3MoeForCausalLM (tensor names and shapes those of the Qwen3-MoE transformers saved,
/// q/k norms and the wide heads included); of Qwen2 experts as Qwen2MoeForCausalLM with q/k/v
/// biases and a shared expert of zeros (it adds exactly 0); a Qwen3 MoE with a shared expert
/// has no architecture and is refused.
#[test]
fn moes_of_qwen_experts_export_as_the_qwen_moes() {
    use btx::merge::mix::{Perturbation, SharedExpert};
    let root = tempfile::tempdir().unwrap();
    let calls = std::cell::Cell::new(0);
    let export = |family: &str, options: MoeOptions| -> Result<PathBuf, String> {
        calls.set(calls.get() + 1);
        let dir = root.path().join(calls.get().to_string());
        let seed = dir.join("seed");
        import_hf(&fixture(family), &seed).unwrap();
        let input = MergeInput::load(&seed).unwrap();
        let (config, tensors) = btx::merge::upcycle::upcycle(&input, 4, Perturbation::default(), &options, None).unwrap().into_tensors().unwrap();
        btx::checkpoint::write_tensor_checkpoint(&dir.join("moe"), &config, &tensors, &[]).unwrap();
        export_hf(&dir.join("moe"), &dir.join("hf"), Some(&repo_root().join("assets/tokenizer.json")), false).map_err(|e| format!("{e:#}"))?;
        Ok(dir.join("hf"))
    };
    let shapes = |dir: &Path| read_tensors(&dir.join("model.safetensors")).unwrap().iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect::<Vec<_>>();
    let config = |dir: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let options = MoeOptions { load_balance: 0.01, ..Default::default() };

    let qwen3 = export("qwen3", options.clone()).unwrap();
    assert_eq!(shapes(&qwen3), shapes(&fixture("qwen3_moe")));
    let (ours, theirs) = (config(&qwen3), config(&fixture("qwen3_moe")));
    for field in ["architectures", "model_type", "head_dim", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "attention_bias", "router_aux_loss_coef"] {
        assert_eq!(ours[field], theirs[field], "config field {field}");
    }

    let qwen2 = export("qwen2", options.clone()).unwrap();
    let tensors = read_tensors(&qwen2.join("model.safetensors")).unwrap();
    assert_eq!(config(&qwen2)["architectures"][0], "Qwen2MoeForCausalLM");
    assert_eq!(config(&qwen2)["qkv_bias"], true);
    assert!(tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    assert!(tensors["model.layers.1.mlp.shared_expert.down_proj.weight"].values.iter().all(|&v| v == 0.0));

    let err = export("qwen3", MoeOptions { shared_expert: SharedExpert::Seed, ..options }).unwrap_err();
    assert!(err.contains("Qwen3-MoE has no shared expert"), "{err}");
}
