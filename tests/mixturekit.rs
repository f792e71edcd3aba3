//! MixtureKit's checkpoints against fixtures MixtureKit 1.1.1 built itself
//! (tests/fixtures/mixturekit/make_fixtures.py: BTX and traditional MoEs of tiny Llama, Qwen3
//! and Gemma 3 experts): import gives MixtureKit's logits, export writes its names and keys
//! back, and the per-projection MoE keeps the invariants of the per-FFN one.

use std::path::{Path, PathBuf};

use btx::checkpoint::tensor_file::{HostTensor, TensorMap, read_tensors, write_tensors};
use btx::config::ModelConfig;
use btx::hf::{ExportFormat, export_hf_as, import_hf};
use btx::model::moe_config::{MoeConfig, RoutedProjection, Routing};

use crate::common::*;

const CASES: [&str; 6] = ["llama_btx", "llama_traditional", "qwen3_btx", "qwen3_traditional", "gemma3_btx", "gemma3_traditional"];

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/mixturekit").join(name)
}

/// A copy of a fixture with its config.json and tensors edited.
fn edited(dir: &Path, name: &str, config: impl FnOnce(&mut serde_json::Value), tensors: impl FnOnce(&mut TensorMap)) -> PathBuf {
    let out = dir.join(format!("{name}-edited"));
    std::fs::create_dir_all(&out).unwrap();
    let mut json = read_json(&fixture(name).join("config.json"));
    config(&mut json);
    std::fs::write(out.join("config.json"), json.to_string()).unwrap();
    let mut map = read_tensors(&fixture(name).join("model.safetensors")).unwrap();
    tensors(&mut map);
    write_tensors(&out.join("model.safetensors"), &map, Default::default()).unwrap();
    out
}

#[test]
fn imported_mixturekit_models_give_its_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in CASES {
        let out = dir.path().join(name);
        let config = import_hf(&fixture(name), &out).unwrap();
        let moe = config.moe.as_ref().unwrap();
        assert_eq!((moe.num_experts, moe.top_k, config.gemma.is_some()), (3, 2, name.starts_with("gemma3")));
        let expected_routed = match name {
            "llama_btx" => vec![RoutedProjection::GateProj, RoutedProjection::DownProj],
            n if n.ends_with("_btx") => RoutedProjection::ALL.to_vec(),
            _ => vec![],
        };
        assert_eq!(moe.routed_projections, expected_routed, "{name}");
        assert_eq!(moe.layers, (name == "llama_btx").then(|| vec![1]), "{name}");
        let (tokens, want) = recorded_logits(&fixture(name));
        let diff = max_abs_diff(&checkpoint_logits(&out, &tokens), &want);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: largest logit difference to MixtureKit {diff:.2e} (logit scale {scale:.2})");
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: max difference {diff}");
    }
}

/// A fresh MixtureKit build stores no routers (its fixture lists the names it stored): they
/// are drawn, the same at every import, and the rest is the checkpoint's.
#[test]
fn a_fresh_build_without_routers_imports_with_drawn_routers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen3_btx", "gemma3_traditional"] {
        let fresh: Vec<String> = serde_json::from_value(read_json(&fixture(&format!("{name}_fresh_keys.json")))).unwrap();
        assert!(!fresh.iter().any(|n| n.ends_with(".gate.weight")), "{name}: MixtureKit's fresh build stored a router");
        let copy = edited(dir.path(), name, |_| {}, |t| t.retain(|n, _| !n.ends_with(".gate.weight")));
        let (a, b) = (dir.path().join(format!("{name}-a")), dir.path().join(format!("{name}-b")));
        import_hf(&copy, &a).unwrap();
        import_hf(&copy, &b).unwrap();
        let (tokens, want) = recorded_logits(&fixture(name));
        let (la, lb) = (checkpoint_logits(&a, &tokens), checkpoint_logits(&b, &tokens));
        assert_eq!(la, lb, "{name}: drawn routers differ between imports");
        assert!(max_abs_diff(&la, &want) > 1e-3, "{name}: drawn routers gave the stored routers' logits");
    }
}

/// Export writes MixtureKit's tensor names (exactly the fixture's), its config keys, and the
/// engine's modeling code; importing it back gives the same model.
#[test]
fn exported_mixturekit_checkpoints_have_its_names_and_import_back() {
    let dir = tempfile::tempdir().unwrap();
    for name in CASES {
        let ckpt = dir.path().join(name);
        let config = import_hf(&fixture(name), &ckpt).unwrap();
        let out = dir.path().join(format!("{name}-mk"));
        export_hf_as(&ckpt, &out, Some(&repo_root().join("assets/tokenizer.json")), false, ExportFormat::Mixturekit).unwrap();
        let names = |p: &Path| read_tensors(&p.join("model.safetensors")).unwrap().into_keys().collect::<Vec<_>>();
        assert_eq!(names(&out), names(&fixture(name)), "{name}");
        let (ours, theirs) = (read_json(&out.join("config.json")), read_json(&fixture(name).join("config.json")));
        for key in ["moe_method", "base_model_class", "num_experts", "num_experts_per_tok", "router_layers_index", "alpha"] {
            assert_eq!(ours[key], theirs[key], "{name}: config key {key}");
        }
        if name.ends_with("_btx") {
            assert_eq!(ours["router_layers"], theirs["router_layers"], "{name}");
        }
        assert_eq!(ours["auto_map"]["AutoModelForCausalLM"], "modeling_btx_moe.MixtureKitForCausalLM");
        let modeling = std::fs::read_to_string(out.join("modeling_btx_moe.py")).unwrap();
        assert!(modeling.contains(&format!("getattr(transformers, \"{}\")", theirs["base_model_class"].as_str().unwrap())), "{name}");
        assert_eq!(import_hf(&out, &dir.path().join(format!("{name}-back"))).unwrap(), config);
        let (tokens, _) = recorded_logits(&fixture(name));
        assert_eq!(checkpoint_logits(&dir.path().join(format!("{name}-back")), &tokens), checkpoint_logits(&ckpt, &tokens), "{name}");
    }
}

/// Stitch layers, routed attention projections, an unknown method and experts of different
/// shapes are refused, each by name; nothing is left behind.
#[test]
fn mixturekit_models_the_engine_lacks_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Box<dyn FnOnce(&mut serde_json::Value)>, Box<dyn FnOnce(&mut TensorMap)>, &str); 4] = [
        ("bts", Box::new(|c| c["moe_method"] = "bts".into()), Box::new(|_| {}), "Branch-Train-Stitch"),
        ("attention", Box::new(|c| c["router_layers"] = serde_json::json!(["self_attn.q_proj", "mlp.up_proj"])), Box::new(|_| {}), "self_attn.q_proj"),
        ("unknown", Box::new(|c| c["moe_method"] = "soup".into()), Box::new(|_| {}), "soup"),
        (
            "shapes",
            Box::new(|_| {}),
            Box::new(|t| {
                t.insert("model.layers.0.mlp.up_proj.experts.expert_1.weight".into(), HostTensor::new(vec![48, 32], vec![0.0; 48 * 32]));
            }),
            "model.layers.0.mlp.up_proj.experts.expert_1.weight",
        ),
    ];
    for (label, config, tensors, named) in cases {
        let bad = edited(&dir.path().join(label), "qwen3_btx", config, tensors);
        let out = dir.path().join(format!("{label}-out"));
        let err = format!("{:#}", import_hf(&bad, &out).unwrap_err());
        assert!(err.contains(named), "{label}: {err}");
        assert!(!out.exists(), "{label}: a refused import leaves nothing");
    }
}

/// A per-projection MoE whose experts are copies of a dense model's projections computes the
/// dense model, whatever its routers, in every family (and decodes with the KV cache as its
/// full forward).
#[test]
fn a_projection_moe_of_identical_experts_equals_the_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    for (family, dense) in attention_families().into_iter().filter(|(f, _)| ["Llama", "Qwen3", "Gemma3"].contains(f)) {
        let seed = seed_checkpoint_of(dir.path(), &format!("{family}-dense"), 5, &dense);
        let dense_tensors = read_tensors(&seed.path.join("model.safetensors")).unwrap();
        let moe = MoeConfig { routed_projections: vec![RoutedProjection::UpProj, RoutedProjection::DownProj], ..MoeConfig::new(3, 2, Routing::TopK) };
        let config = ModelConfig { moe: Some(moe), ..dense.clone() };
        let mut tensors = TensorMap::new();
        for (name, shape) in btx::hf::config::expected_tensors(&config) {
            let projection = |n: &str| ["gate_proj", "up_proj", "down_proj"].into_iter().find(|p| n.contains(&format!(".projection_moe.{p}.")));
            let tensor = match projection(&name) {
                Some(_) if name.ends_with(".gate.weight") => HostTensor::new(shape.clone(), (0..shape.iter().product::<usize>()).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect()),
                Some(p) => {
                    let layer = name.split('.').nth(2).unwrap();
                    dense_tensors[&format!("model.layers.{layer}.mlp.{p}.weight")].clone()
                }
                None => dense_tensors[&name].clone(),
            };
            tensors.insert(name, tensor);
        }
        let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
        assert!(diff < 1e-4, "{family}: a projection MoE of copies differs from the dense model by {diff}");
    }
}

/// A router-only finetune of a per-projection MoE moves its routers and nothing else.
#[test]
fn a_router_only_finetune_of_a_projection_moe_trains_only_its_routers() {
    let dir = tempfile::tempdir().unwrap();
    let moe = MoeConfig { routed_projections: RoutedProjection::ALL.to_vec(), ..MoeConfig::new(3, 2, Routing::TopK) };
    let base = tiny_train_config(dir.path(), 3);
    let config = btx::train::TrainConfig {
        model: ModelConfig { moe: Some(moe), ..base.model.clone() },
        trainable: Some(btx::train::trainable::Trainable::Routers),
        ..base
    };
    let start = dir.path().join("start");
    let model = btx::model::LanguageModel::seeded(&config.model, 4, &cpu());
    std::fs::create_dir_all(&start).unwrap();
    btx::checkpoint::write_model_files(&start, &model, &config.model).unwrap();
    let config = btx::train::TrainConfig { init_from: Some(start.clone()), ..config };
    let options = btx::train::trainer::TrainOptions { out: dir.path().join("run"), resume: false, progress: false, stop_after: None };
    let summary = btx::train::trainer::train(&config, "test", &cpu_selected(), &options).unwrap();
    let before = read_tensors(&start.join("model.safetensors")).unwrap();
    let after = read_tensors(&summary.checkpoint.join("model.safetensors")).unwrap();
    let mut routers = 0;
    for (name, tensor) in &after {
        let moved = tensor.values != before[name].values;
        assert_eq!(moved, name.contains(".projection_moe.") && name.ends_with(".gate.weight"), "{name} moved: {moved}");
        routers += moved as usize;
    }
    assert_eq!(routers, 2 * 3, "every layer's three routers train");
}

/// BTX's MiX with a router per projection: identical members give the dense model; distinct
/// members' projections become the routed projections' experts, in member order, the
/// unrouted projection their average.
#[test]
fn btx_mix_with_a_router_per_projection() {
    use btx::merge::mix::{MoeOptions, mix};
    let dir = tempfile::tempdir().unwrap();
    let options = MoeOptions { routed_projections: vec![RoutedProjection::GateProj, RoutedProjection::DownProj], ..Default::default() };
    let seed = seed_checkpoint_of(dir.path(), "seed", 1, &gemma3_model());
    let copies: Vec<_> = (0..2).map(|i| seed_checkpoint_of(dir.path(), &format!("copy{i}"), 1, &gemma3_model())).collect();
    let (config, tensors) = mix(&copies, Some(&seed), None, &options, None).unwrap().into_tensors().unwrap();
    assert_eq!(config.moe.as_ref().unwrap().num_experts, 3);
    let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
    assert!(diff < 1e-4, "a per-projection MoE of copies differs from the seed by {diff}");

    let experts: Vec<_> = (0..2).map(|i| seed_checkpoint_of(dir.path(), &format!("e{i}"), 10 + i, &gemma3_model())).collect();
    let (_, tensors) = mix(&experts, None, None, &options, None).unwrap().into_tensors().unwrap();
    for (e, expert) in experts.iter().enumerate() {
        let theirs = expert.read("model.layers.1.mlp.down_proj.weight").unwrap();
        assert_eq!(tensors[&format!("model.layers.1.projection_moe.down_proj.experts.{e}.weight")], theirs);
    }
    let up: Vec<f32> = {
        let (a, b) = (experts[0].read("model.layers.0.mlp.up_proj.weight").unwrap(), experts[1].read("model.layers.0.mlp.up_proj.weight").unwrap());
        a.values.iter().zip(&b.values).map(|(x, y)| (x + y) / 2.0).collect()
    };
    assert!(max_abs_diff(&tensors["model.layers.0.projection_moe.up_proj.plain.weight"].values, &up) < 1e-6);
    assert_eq!(tensors["model.layers.0.projection_moe.down_proj.gate.weight"].shape, vec![2, 64], "down's router reads d_ff");
}
