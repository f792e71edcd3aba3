//! Merges on checkpoint tensors: identical experts reproduce the seed, BTX produces exactly
//! Mixtral's tensors, averaging is a weighted mean, mismatches are refused by name.

use btx::checkpoint::module_tensors::module_to_tensors;
use btx::checkpoint::{load_model, write_model_files, write_tensor_checkpoint};
use btx::merge::MergeInput;
use btx::merge::average::average;
use btx::merge::mix::{MoeOptions, mix};
use btx::merge::upcycle::upcycle;
use btx::model::LanguageModel;
use btx::model::moe_config::Routing;

use crate::common::*;

fn seed_checkpoint(dir: &std::path::Path, name: &str, seed: u64) -> MergeInput {
    let device = cpu();
    let config = tiny_model(4, 2);
    let model = LanguageModel::seeded(&config, seed, &device);
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    write_model_files(&path, &model, &config).unwrap();
    MergeInput::load(&path).unwrap()
}

/// Logits of a checkpoint written from `tensors`.
fn logits_of(dir: &std::path::Path, config: &btx::config::ModelConfig, tensors: &btx::checkpoint::tensor_file::TensorMap) -> Vec<f32> {
    let path = dir.join(format!("merged-{}", rand_name(tensors.len())));
    write_tensor_checkpoint(&path, config, tensors, &[]).unwrap();
    let device = cpu();
    let (_, model) = load_model(&path, &device).unwrap();
    to_vec(model.forward(random_tokens(2, 16, 4096, 77, &device)))
}

fn rand_name(n: usize) -> String {
    format!("{n}-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn seed_logits(input: &MergeInput) -> Vec<f32> {
    let device = cpu();
    let (_, model) = load_model(&input.path, &device).unwrap();
    to_vec(model.forward(random_tokens(2, 16, 4096, 77, &device)))
}

#[test]
fn mixing_identical_experts_gives_the_seed_logits_with_any_router() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 1);
    let want = seed_logits(&seed);
    let copies: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 1)).collect();
    let cases = [
        MoeOptions { seed: 5, ..Default::default() },
        MoeOptions { seed: 9, top_k: 1, ..Default::default() },
        MoeOptions { routing: Routing::Soft, ..Default::default() },
    ];
    for options in cases {
        let (config, tensors) = mix(&copies, Some(&seed), None, &options, None).unwrap();
        let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &want);
        assert!(diff < 1e-4, "{options:?}: max logit difference {diff}");
    }
}

#[test]
fn upcycling_without_noise_gives_the_seed_logits() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 2);
    let (config, tensors) = upcycle(&seed, 4, 0.0, &MoeOptions::default(), None).unwrap();
    assert_eq!(config.moe.as_ref().unwrap().num_experts, 4);
    let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
    assert!(diff < 1e-4, "max logit difference {diff}");
    let (_, noisy) = upcycle(&seed, 4, 0.01, &MoeOptions::default(), None).unwrap();
    let a = &noisy["model.layers.0.block_sparse_moe.experts.0.w1.weight"].values;
    let b = &noisy["model.layers.0.block_sparse_moe.experts.1.w1.weight"].values;
    assert!(max_abs_diff(a, b) > 0.0, "noise did not make the copies differ");
}

#[test]
fn btx_merge_has_exactly_the_mixtral_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 10 + i)).collect();
    let seed = seed_checkpoint(dir.path(), "seed", 3);
    let (config, tensors) = mix(&experts, Some(&seed), None, &MoeOptions::default(), None).unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.top_k), (4, 2));
    // What a freshly built MoE model of that config holds, name for name and shape for shape.
    let reference = module_to_tensors(&LanguageModel::new(&config, &cpu()));
    let shapes = |m: &btx::checkpoint::tensor_file::TensorMap| m.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&tensors), shapes(&reference));
    // Expert 1 of layer 1 is expert checkpoint 1's FFN; expert 3 is the seed's.
    assert_eq!(
        tensors["model.layers.1.block_sparse_moe.experts.1.w2.weight"],
        experts[1].tensors["model.layers.1.mlp.down_proj.weight"]
    );
    assert_eq!(tensors["model.layers.0.block_sparse_moe.experts.3.w3.weight"], seed.tensors["model.layers.0.mlp.up_proj.weight"]);
    // Attention is the mean of the four members.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let mean: Vec<f32> = (0..tensors[name].values.len())
        .map(|i| (experts.iter().chain([&seed]).map(|m| m.tensors[name].values[i] as f64).sum::<f64>() / 4.0) as f32)
        .collect();
    assert!(max_abs_diff(&tensors[name].values, &mean) < 1e-6);
}

#[test]
fn split_experts_are_the_ffn_cut_along_its_hidden_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..2).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 20 + i)).collect();
    let (config, tensors) = mix(&experts, None, None, &MoeOptions { split: 2, ..Default::default() }, None).unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.top_k, moe.expert_d_ff), (4, 4, Some(32)));
    // Expert checkpoint 1 becomes experts 2 and 3: gate/up rows 0..32 and 32..64, down columns.
    let full_gate = &experts[1].tensors["model.layers.0.mlp.gate_proj.weight"].values;
    let g2 = &tensors["model.layers.0.block_sparse_moe.experts.2.w1.weight"];
    let g3 = &tensors["model.layers.0.block_sparse_moe.experts.3.w1.weight"];
    assert_eq!((g2.shape.clone(), g3.shape.clone()), (vec![32, 32], vec![32, 32]));
    assert_eq!([g2.values.clone(), g3.values.clone()].concat(), *full_gate);
    let full_down = &experts[1].tensors["model.layers.0.mlp.down_proj.weight"];
    let d3 = &tensors["model.layers.0.block_sparse_moe.experts.3.w2.weight"];
    assert_eq!(d3.shape, vec![32, 32]);
    for r in 0..32 {
        assert_eq!(d3.values[r * 32..(r + 1) * 32], full_down.values[r * 64 + 32..(r + 1) * 64]);
    }
    LanguageModel::new(&config, &cpu()); // the config builds
    let reference = module_to_tensors(&LanguageModel::new(&config, &cpu()));
    assert_eq!(reference.keys().collect::<Vec<_>>(), tensors.keys().collect::<Vec<_>>());
}

#[test]
fn averaging_is_the_weighted_mean_and_identical_models_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let a = seed_checkpoint(dir.path(), "a", 1);
    let b = seed_checkpoint(dir.path(), "b", 2);
    let a2 = seed_checkpoint(dir.path(), "a2", 1);
    let (_, same) = average(&[a, a2], None).unwrap();
    let a = MergeInput::load(&dir.path().join("a")).unwrap();
    assert_eq!(same, a.tensors);
    let (_, weighted) = average(&[MergeInput::load(&dir.path().join("a")).unwrap(), b], Some(&[3.0, 1.0])).unwrap();
    let b = MergeInput::load(&dir.path().join("b")).unwrap();
    let name = "model.norm.weight";
    let name2 = "model.layers.1.mlp.gate_proj.weight";
    for n in [name, name2] {
        let want: Vec<f32> = a.tensors[n].values.iter().zip(&b.tensors[n].values).map(|(x, y)| 0.75 * x + 0.25 * y).collect();
        assert!(max_abs_diff(&weighted[n].values, &want) < 1e-6);
    }
}

#[test]
fn experts_of_different_architectures_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let a = seed_checkpoint(dir.path(), "a", 1);
    let mut b = seed_checkpoint(dir.path(), "b", 2);
    let t = b.tensors.get_mut("model.layers.1.mlp.up_proj.weight").unwrap();
    t.shape = vec![32, 64];
    let err = format!("{:#}", mix(&[a, b], None, None, &MoeOptions::default(), None).unwrap_err());
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("shape"), "{err}");

    let a = seed_checkpoint(dir.path(), "a", 1);
    let mut c = seed_checkpoint(dir.path(), "c", 2);
    c.tensors.remove("model.layers.0.self_attn.o_proj.weight");
    let err = format!("{:#}", average(&[a, c], None).unwrap_err());
    assert!(err.contains("model.layers.0.self_attn.o_proj.weight") && err.contains("missing"), "{err}");
}

#[test]
fn merge_command_writes_a_loadable_moe() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        seed_checkpoint(dir.path(), &format!("e{i}"), i);
    }
    let (ok, stderr) = run_btx(
        &["merge", "--method", "btx", "--experts", "e0", "e1", "--moe", "(top_k: 1, routing: Switch(capacity_factor: 1.5))", "--out", "moe"],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    let (config, _) = load_model(&dir.path().join("moe"), &cpu()).unwrap();
    assert_eq!(config.moe.unwrap().routing, Routing::Switch { capacity_factor: 1.5 });
    let (ok, stderr) = run_btx(&["merge", "--method", "upcycle", "--experts", "e0", "e1", "--out", "up"], dir.path());
    assert!(!ok && stderr.contains("exactly one"), "{stderr}");
    assert!(!dir.path().join("up").exists());
}

#[test]
fn routers_initialised_from_hidden_states_tell_the_experts_apart() {
    let dir = tempfile::tempdir().unwrap();
    seed_checkpoint(dir.path(), "e0", 1);
    seed_checkpoint(dir.path(), "e1", 2);
    // Expert 0 reads English, expert 1 code.
    for (i, domain) in [(0, 0usize), (1, 1usize)] {
        let mut config = tiny_train_config(dir.path(), 1);
        for (j, d) in config.data.domains.iter_mut().enumerate() {
            d.weight = if j == domain { 1.0 } else { 0.0 };
        }
        std::fs::write(dir.path().join(format!("data{i}.ron")), btx::config::to_ron(&config).unwrap()).unwrap();
    }
    for mode in ["Hidden", "Embedding"] {
        let moe = format!("(top_k: 1, router_init: {mode})");
        let out = format!("moe-{mode}");
        let (ok, stderr) = run_btx(
            &["merge", "--method", "btx", "--experts", "e0", "e1", "--moe", &moe, "--router-data", "data0.ron", "data1.ron", "--out", &out],
            dir.path(),
        );
        assert!(ok, "{stderr}");
        let tensors = btx::checkpoint::tensor_file::read_tensors(&dir.path().join(&out).join("model.safetensors")).unwrap();
        let router = &tensors["model.layers.1.block_sparse_moe.gate.weight"];
        let (r0, r1) = router.values.split_at(32);
        // Centred rows: opposite directions, each with the norm of a random N(0, 0.02) row.
        let norm = |r: &[f32]| r.iter().map(|x| x * x).sum::<f32>().sqrt();
        let target = 0.02 * (32f32).sqrt();
        assert!((norm(r0) - target).abs() < 1e-4 && (norm(r1) - target).abs() < 1e-4, "{mode}");
        let cos: f32 = r0.iter().zip(r1).map(|(a, b)| a * b).sum::<f32>() / (norm(r0) * norm(r1));
        assert!((cos + 1.0).abs() < 1e-4, "{mode}: rows not opposite (cos {cos})");
    }
    let (ok, stderr) = run_btx(&["merge", "--method", "btx", "--experts", "e0", "e1", "--moe", "(router_init: Hidden)", "--out", "x"], dir.path());
    assert!(!ok && stderr.contains("--router-data"), "{stderr}");
}
