//! Gemma 2 and Gemma 3 against fixtures made by transformers itself
//! (tests/fixtures/hf/make_fixtures.py: transformers 5.25.0, torch 2.15.0): import, export,
//! the options each matter, cached decoding, merges, training, and bad configs refused.

use std::path::{Path, PathBuf};

use btx::checkpoint::load_model;
use btx::hf::config::from_hf_config;
use btx::hf::{export_hf, import_hf};
use btx::merge::MergeInput;
use btx::merge::mix::{MoeOptions, Perturbation};
use btx::merge::upcycle::upcycle;

use crate::common::*;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/hf").join(name)
}

/// A copy of a fixture whose config.json `edit` changed (the weights linked as they are).
fn edited_fixture(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let out = dir.join(format!("{name}-edited"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(fixture(name).join("model.safetensors"), out.join("model.safetensors")).unwrap();
    let mut config = read_json(&fixture(name).join("config.json"));
    edit(&mut config);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out
}

/// Each fixture's logits, and that the sliding window is honoured: without it (the same
/// weights, every layer global) the logits move far more than the engine's difference.
#[test]
fn imported_gemma_fixtures_give_the_logits_of_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gemma3", "gemma3_vision", "gemma2"] {
        let out = dir.path().join(name);
        let config = import_hf(&fixture(name), &out).unwrap();
        let gemma = config.gemma.as_ref().unwrap();
        assert_eq!((config.qk_norm, gemma.sliding_window, gemma.full_attention_layers.clone()), (name != "gemma2", Some(4), vec![1]));
        assert_eq!(gemma.attn_logit_softcap.is_some(), name == "gemma2");
        let (tokens, want) = recorded_logits(&fixture(name));
        let diff = max_abs_diff(&checkpoint_logits(&out, &tokens), &want);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: largest logit difference to transformers {diff:.2e} (logit scale {scale:.2})");
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: max difference {diff}");

        let unwindowed = edited_fixture(dir.path(), name, |c| {
            let text = if name == "gemma3_vision" { &mut c["text_config"] } else { c };
            text["sliding_window"] = serde_json::Value::Null;
        });
        import_hf(&unwindowed, &dir.path().join(format!("{name}-global"))).unwrap();
        let off = max_abs_diff(&checkpoint_logits(&dir.path().join(format!("{name}-global")), &tokens), &want);
        assert!(off > 100.0 * diff.max(1e-6), "{name}: the window changed nothing ({off} vs {diff})");
    }
    // The vision tower and its projector are left out.
    let tensors = btx::checkpoint::tensor_file::read_tensors(&dir.path().join("gemma3_vision/model.safetensors")).unwrap();
    assert!(tensors.keys().all(|n| n.starts_with("model.layers.") || n == "model.embed_tokens.weight" || n == "model.norm.weight"), "{:?}", tensors.keys());
}

/// Gemma3ForConditionalGeneration's tensors in transformers 5's in-memory names
/// (`model.language_model.*`, `model.vision_tower.*`) import as those 4.5x saves.
#[test]
fn gemma3_multimodal_names_of_transformers_5_import_too() {
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    std::fs::copy(fixture("gemma3_vision").join("config.json"), renamed.join("config.json")).unwrap();
    let tensors = btx::checkpoint::tensor_file::read_tensors(&fixture("gemma3_vision").join("model.safetensors")).unwrap();
    let rename = |n: &str| match n.strip_prefix("language_model.model.") {
        Some(rest) => format!("model.language_model.{rest}"),
        None => format!("model.{n}"),
    };
    let tensors = tensors.into_iter().map(|(n, t)| (rename(&n), t)).collect();
    btx::checkpoint::tensor_file::write_tensors(&renamed.join("model.safetensors"), &tensors, Default::default()).unwrap();
    import_hf(&renamed, &dir.path().join("ckpt")).unwrap();
    let (tokens, want) = recorded_logits(&fixture("gemma3_vision"));
    assert!(max_abs_diff(&checkpoint_logits(&dir.path().join("ckpt"), &tokens), &want) < 1e-4);
}

/// transformers 4.5x's keys (`sliding_window_pattern`, `rope_theta` + `rope_local_base_freq`,
/// `rope_scaling`, no `layer_types`) describe the same model as 5.x's.
#[test]
fn gemma3_configs_of_transformers_4_read_as_those_of_5() {
    let dir = tempfile::tempdir().unwrap();
    let old = edited_fixture(dir.path(), "gemma3", |c| {
        let o = c.as_object_mut().unwrap();
        for key in ["layer_types", "rope_parameters", "_sliding_window_pattern"] {
            o.remove(key);
        }
        o.insert("sliding_window_pattern".into(), 2.into());
        o.insert("rope_theta".into(), 100000.0.into());
        o.insert("rope_local_base_freq".into(), 10000.0.into());
        o.insert("rope_scaling".into(), serde_json::json!({"rope_type": "linear", "factor": 8.0}));
    });
    let new = import_hf(&fixture("gemma3"), &dir.path().join("new")).unwrap();
    assert_eq!(import_hf(&old, &dir.path().join("old")).unwrap(), new);

    // google/gemma-3-4b-pt's text_config names six keys; the rest are Gemma3TextConfig's
    // defaults.
    let hub = serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": {
        "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}});
    let config = from_hf_config(&hub, "config.json").unwrap();
    let gemma = config.gemma.as_ref().unwrap();
    assert_eq!((config.vocab_size, config.n_heads, config.kv_heads(), config.head_dim(), config.tie_embeddings), (262_208, 8, 4, 256, true));
    assert_eq!((gemma.query_pre_attn_scalar, gemma.sliding_window, gemma.full_attention_layers.clone()), (256.0, Some(1024), vec![5, 11, 17, 23, 29]));
    assert_eq!((config.rope_theta, gemma.local_rope_theta), (1_000_000.0, Some(10_000.0)));
    assert_eq!(config.rope_scaling, Some(btx::model::rope::RopeScaling::Linear { factor: 8.0 }));
    assert!((config.num_params() as f64 / 1e9 - 3.88).abs() < 0.01, "Gemma 3 4B's language model: {}", config.num_params());
}

/// Export writes Gemma3ForCausalLM / Gemma2ForCausalLM: all of the model's tensors and none
/// else, a config that imports back as the same model (so transformers reads what the engine
/// computes: tests/fixtures/hf/check_export.py runs it there).
#[test]
fn exported_gemma_imports_back_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gemma3", "gemma2"] {
        let ckpt = dir.path().join(name);
        let config = import_hf(&fixture(name), &ckpt).unwrap();
        let out = dir.path().join(format!("{name}-hf"));
        export_hf(&ckpt, &out, Some(&repo_root().join("assets/tokenizer.json")), false).unwrap();
        let ours = read_json(&out.join("config.json"));
        let theirs = read_json(&fixture(name).join("config.json"));
        for field in ["architectures", "model_type", "layer_types", "sliding_window", "query_pre_attn_scalar", "head_dim", "final_logit_softcapping", "attn_logit_softcapping", "hidden_activation", "tie_word_embeddings"] {
            assert_eq!(ours[field], theirs[field], "{name}: config field {field}");
        }
        let names = |p: &Path| btx::checkpoint::tensor_file::read_tensors(p).unwrap().into_keys().collect::<Vec<_>>();
        assert_eq!(names(&out.join("model.safetensors")), names(&fixture(name).join("model.safetensors")));
        assert_eq!(import_hf(&out, &dir.path().join(format!("{name}-back"))).unwrap(), config);
        let (tokens, _) = recorded_logits(&fixture(name));
        assert_eq!(checkpoint_logits(&dir.path().join(format!("{name}-back")), &tokens), checkpoint_logits(&ckpt, &tokens));
    }
}

/// Upcycling a Gemma seed into an MoE of identical experts computes the seed (every Gemma
/// option is carried into the MoE's blocks).
#[test]
fn an_moe_of_identical_gemma_experts_equals_the_dense_gemma() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [("gemma3", gemma3_model()), ("gemma2", gemma2_model())] {
        let seed = seed_checkpoint_of(dir.path(), name, 3, &model);
        let (config, tensors) = upcycle(&seed, 4, Perturbation::default(), &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
        assert!(tensors.contains_key("model.layers.0.pre_feedforward_layernorm.weight"));
        let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
        assert!(diff < 1e-4, "{name}: MoE of copies differs from the seed by {diff}");
    }
}

/// A Gemma 2 (soft caps on scores and logits, a window shorter than the sequence) trains:
/// the loss falls, and every norm (unit offset: starting at 0) and projection moves.
#[test]
fn a_gemma_model_trains() {
    let dir = tempfile::tempdir().unwrap();
    let config = btx::train::TrainConfig { model: gemma2_model(), ..tiny_train_config(dir.path(), 12) };
    let options = btx::train::trainer::TrainOptions { out: dir.path().join("run"), resume: false, progress: false, stop_after: None };
    let summary = btx::train::trainer::train(&config, "test", &cpu_selected(), &options).unwrap();
    let losses: Vec<f64> = btx::train::metrics::read_steps(&dir.path().join("run/metrics.jsonl")).unwrap().iter().map(|s| s.loss).collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses.last().unwrap() < &(losses[0] - 0.5), "losses {losses:?}");
    let (_, trained) = load_model(&summary.checkpoint, &cpu()).unwrap();
    let trained = btx::checkpoint::module_tensors::module_to_tensors(&trained);
    assert!(trained["model.layers.0.post_feedforward_layernorm.weight"].values.iter().any(|&v| v != 0.0));
    assert!(trained["model.norm.weight"].values.iter().any(|&v| v != 0.0));
}

/// What the engine cannot compute is refused, naming the field; a checkpoint missing one of
/// Gemma's four norms names the tensor.
#[test]
fn gemma_configs_the_engine_cannot_compute_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Box<dyn Fn(&mut serde_json::Value)>, &str); 5] = [
        ("bidirectional", Box::new(|c| c["use_bidirectional_attention"] = true.into()), "use_bidirectional_attention"),
        ("chunked", Box::new(|c| c["layer_types"][0] = "chunked_attention".into()), "chunked_attention"),
        ("gelu", Box::new(|c| c["hidden_activation"] = "gelu".into()), "hidden_activation"),
        ("yarn", Box::new(|c| c["rope_parameters"]["full_attention"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})), "yarn"),
        ("local-scaled", Box::new(|c| c["rope_parameters"]["sliding_attention"]["rope_type"] = "linear".into()), "sliding_attention"),
    ];
    for (label, edit, named) in cases {
        let bad = edited_fixture(&dir.path().join(label), "gemma3", edit);
        let err = import_hf(&bad, &dir.path().join(format!("{label}-out"))).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains(named), "{label}: {err}");
        assert!(!dir.path().join(format!("{label}-out")).exists(), "{label}: a refused import leaves nothing");
    }
    // The weights of a Llama under a Gemma config: the missing norm is named.
    let llama_weights = dir.path().join("mixed");
    std::fs::create_dir_all(&llama_weights).unwrap();
    let mut config = read_json(&fixture("gemma3").join("config.json"));
    let llama = read_json(&fixture("llama").join("config.json"));
    for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "tie_word_embeddings"] {
        config[key] = llama[key].clone();
    }
    config["head_dim"] = 8.into();
    config["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
    std::fs::write(llama_weights.join("config.json"), config.to_string()).unwrap();
    let single = MergeInput::load(&{
        let ckpt = dir.path().join("llama-ckpt");
        import_hf(&fixture("llama"), &ckpt).unwrap();
        ckpt
    })
    .unwrap();
    std::fs::copy(single.path.join("model.safetensors"), llama_weights.join("model.safetensors")).unwrap();
    let err = format!("{:#}", import_hf(&llama_weights, &dir.path().join("mixed-out")).unwrap_err());
    assert!(err.contains("missing tensor") && err.contains("norm.weight"), "{err}");
}
