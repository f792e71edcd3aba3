//! Merges on checkpoint tensors: identical experts reproduce the seed, BTX produces exactly
//! Mixtral's tensors, averaging is a weighted mean, mismatches are refused by name.

use btx::checkpoint::module_tensors::module_to_tensors;
use btx::checkpoint::load_model;
use btx::merge::MergeInput;
use btx::merge::average::average;
use btx::merge::mix::{MoeOptions, Perturbation, mix};
use btx::merge::upcycle::upcycle;
use btx::model::LanguageModel;
use btx::model::moe_config::Routing;

use crate::common::*;

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
        let (config, tensors) = mix(&copies, Some(&seed), None, &options, None).unwrap().into_tensors().unwrap();
        let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &want);
        assert!(diff < 1e-4, "{options:?}: max logit difference {diff}");
    }
}

#[test]
fn upcycling_without_noise_gives_the_seed_logits() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 2);
    let (config, tensors) = upcycle(&seed, 4, Perturbation::default(), &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
    assert_eq!(config.moe.as_ref().unwrap().num_experts, 4);
    let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
    assert!(diff < 1e-4, "max logit difference {diff}");
    let (_, noisy) = upcycle(&seed, 4, Perturbation { noise_std: 0.01, ..Default::default() }, &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
    let a = &noisy["model.layers.0.block_sparse_moe.experts.0.w1.weight"].values;
    let b = &noisy["model.layers.0.block_sparse_moe.experts.1.w1.weight"].values;
    assert!(max_abs_diff(a, b) > 0.0, "noise did not make the copies differ");
}

#[test]
fn btx_merge_has_exactly_the_mixtral_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 10 + i)).collect();
    let seed = seed_checkpoint(dir.path(), "seed", 3);
    let (config, tensors) = mix(&experts, Some(&seed), None, &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.top_k), (4, 2));
    // What a freshly built MoE model of that config holds, name for name and shape for shape.
    let reference = module_to_tensors(&LanguageModel::new(&config, &cpu()));
    let shapes = |m: &btx::checkpoint::tensor_file::TensorMap| m.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&tensors), shapes(&reference));
    // Expert 1 of layer 1 is expert checkpoint 1's FFN; expert 3 is the seed's.
    assert_eq!(
        tensors["model.layers.1.block_sparse_moe.experts.1.w2.weight"],
        experts[1].read("model.layers.1.mlp.down_proj.weight").unwrap()
    );
    assert_eq!(tensors["model.layers.0.block_sparse_moe.experts.3.w3.weight"], seed.read("model.layers.0.mlp.up_proj.weight").unwrap());
    // Attention is the mean of the four members.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let members: Vec<_> = experts.iter().chain([&seed]).map(|m| m.read(name).unwrap()).collect();
    let mean: Vec<f32> = (0..tensors[name].values.len())
        .map(|i| (members.iter().map(|m| m.values[i] as f64).sum::<f64>() / 4.0) as f32)
        .collect();
    assert!(max_abs_diff(&tensors[name].values, &mean) < 1e-6);
}

#[test]
fn split_experts_are_the_ffn_cut_along_its_hidden_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..2).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 20 + i)).collect();
    let (config, tensors) = mix(&experts, None, None, &MoeOptions { split: 2, ..Default::default() }, None).unwrap().into_tensors().unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.top_k, moe.expert_d_ff), (4, 4, Some(32)));
    // Expert checkpoint 1 becomes experts 2 and 3: gate/up rows 0..32 and 32..64, down columns.
    let full_gate = &experts[1].read("model.layers.0.mlp.gate_proj.weight").unwrap().values;
    let g2 = &tensors["model.layers.0.block_sparse_moe.experts.2.w1.weight"];
    let g3 = &tensors["model.layers.0.block_sparse_moe.experts.3.w1.weight"];
    assert_eq!((g2.shape.clone(), g3.shape.clone()), (vec![32, 32], vec![32, 32]));
    assert_eq!([g2.values.clone(), g3.values.clone()].concat(), *full_gate);
    let full_down = &experts[1].read("model.layers.0.mlp.down_proj.weight").unwrap();
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
    let pair = [a, a2];
    let (_, same) = average(&pair, None).unwrap().into_tensors().unwrap();
    let a_tensors = btx::checkpoint::tensor_file::read_tensors(&dir.path().join("a/model.safetensors")).unwrap();
    assert_eq!(same, a_tensors);
    let pair = [MergeInput::load(&dir.path().join("a")).unwrap(), b];
    let (_, weighted) = average(&pair, Some(&[3.0, 1.0])).unwrap().into_tensors().unwrap();
    let name = "model.norm.weight";
    let name2 = "model.layers.1.mlp.gate_proj.weight";
    for n in [name, name2] {
        let (a, b) = (pair[0].read(n).unwrap(), pair[1].read(n).unwrap());
        let want: Vec<f32> = a.values.iter().zip(&b.values).map(|(x, y)| 0.75 * x + 0.25 * y).collect();
        assert!(max_abs_diff(&weighted[n].values, &want) < 1e-6);
    }
}

#[test]
fn experts_of_different_architectures_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let a = seed_checkpoint(dir.path(), "a", 1);
    let b = edited_checkpoint(dir.path(), "b", |t| t.get_mut("model.layers.1.mlp.up_proj.weight").unwrap().shape = vec![32, 64]);
    let err = format!("{:#}", mix(&[a, b], None, None, &MoeOptions::default(), None).err().unwrap());
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("shape"), "{err}");

    let a = seed_checkpoint(dir.path(), "a", 1);
    let c = edited_checkpoint(dir.path(), "c", |t| {
        t.remove("model.layers.0.self_attn.o_proj.weight");
    });
    let err = format!("{:#}", average(&[a, c], None).err().unwrap());
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

/// A dense checkpoint of `config` with random weights, written tensor by tensor (the test
/// never holds it whole).
fn streamed_random_checkpoint(dir: &std::path::Path, config: &btx::config::ModelConfig, seed: u64) {
    use btx::checkpoint::stream::StreamWriter;
    let layout = btx::hf::config::expected_tensors(config);
    btx::checkpoint::write_weights_checkpoint(dir, config, &[], |tmp| {
        let mut writer = StreamWriter::create(&tmp.join("model.safetensors"), layout.clone())?;
        let mut rng = btx::data::rng::Rng::new(seed);
        for (name, shape) in &layout {
            let values = (0..shape.iter().product::<usize>()).map(|_| (rng.unit() as f32 - 0.5) * 0.04).collect();
            writer.write(name, &btx::checkpoint::tensor_file::HostTensor::new(shape.clone(), values))?;
        }
        writer.finish()
    })
    .unwrap();
}

/// Merging four ~54M-parameter checkpoints (864 MB of f32) streams: `btx merge` peaks below a
/// third of the inputs' size in resident memory, and writes exactly the tensors of the
/// in-memory merge.
#[test]
fn merges_stream_in_bounded_memory_and_equal_the_in_memory_merge() {
    let dir = tempfile::tempdir().unwrap();
    let config = btx::config::ModelConfig {
        vocab_size: 4096,
        d_model: 512,
        n_layers: 12,
        n_heads: 8,
        n_kv_heads: Some(8),
        d_ff: 2048,
        max_seq_len: 256,
        rope_theta: 10_000.0,
        rope_scaling: None,
        head_dim: None,
        attention_bias: false,
        qk_norm: false,
        norm_eps: 1e-5,
        tie_embeddings: false,
        attention_experts: None,
        moe: None,
        gemma: None,
    };
    let names: Vec<String> = (0..4).map(|i| format!("e{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        streamed_random_checkpoint(&dir.path().join(name), &config, 100 + i as u64);
    }
    let input_mb = 4.0 * config.num_params() as f64 * 4.0 / 1e6;
    let mut args = vec!["merge", "--method", "btx", "--moe", "(top_k: 2)", "--out", "moe", "--experts"];
    args.extend(names.iter().map(String::as_str));
    let (ok, stderr) = run_btx(&args, dir.path());
    assert!(ok, "{stderr}");
    let peak_mb: f64 = stderr
        .split("peak resident memory ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in: {stderr}"));
    eprintln!("btx merge of 4 x {:.1}M parameters ({input_mb:.0} MB): peak resident memory {peak_mb:.0} MB", config.num_params() as f64 / 1e6);
    assert!(peak_mb < input_mb / 3.0, "peak {peak_mb:.0} MB for {input_mb:.0} MB of inputs");

    let streamed = btx::checkpoint::tensor_file::read_tensors(&dir.path().join("moe/model.safetensors")).unwrap();
    let inputs: Vec<MergeInput> = names.iter().map(|n| MergeInput::load_in_memory(&dir.path().join(n)).unwrap()).collect();
    let (_, in_memory) = mix(&inputs, None, None, &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
    assert_eq!(streamed.keys().collect::<Vec<_>>(), in_memory.keys().collect::<Vec<_>>());
    for (name, t) in &in_memory {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&streamed[name].values) == bits(&t.values), "tensor `{name}` differs");
    }
}

/// One set of rules for every merge request, whatever asks: the command line, a recipe.
#[test]
fn merge_requests_are_checked_by_one_set_of_rules() {
    use btx::merge::{MergeMethod, MergeRequest, router_init::RouterInit};
    let request = |method, experts: &[&str], seed: Option<&str>, router_init| MergeRequest {
        seed: seed.map(std::path::PathBuf::from),
        options: MoeOptions { router_init, ..Default::default() },
        ..MergeRequest::new(method, experts.iter().map(std::path::PathBuf::from).collect())
    };
    let upcycle = MergeMethod::Upcycle { experts: 4, drop_ratio: 0.0 };
    let err = |r: MergeRequest| format!("{:#}", r.check().unwrap_err());
    assert!(err(request(upcycle.clone(), &["s"], None, RouterInit::Hidden)).contains("cannot tell them apart"));
    assert!(err(request(upcycle, &["a", "b"], None, RouterInit::Random)).contains("exactly one"));
    assert!(err(request(MergeMethod::Average, &["a", "b"], Some("s"), RouterInit::Random)).contains("--seed"));
    assert!(err(request(MergeMethod::Btx, &["a", "b"], None, RouterInit::Embedding)).contains("--router-data"));
    let top_k = MergeRequest { options: MoeOptions { top_k: 3, ..Default::default() }, ..request(MergeMethod::Btx, &["a", "b"], None, RouterInit::Random) };
    assert_eq!(top_k.check().unwrap_err().field, "moe.top_k");
    assert!(request(MergeMethod::Btx, &["a", "b"], Some("s"), RouterInit::Random).check().is_ok());
    // A recipe asking for the same upcycling gets the same rule, with the field named.
    let recipe = std::fs::read_to_string(repo_root().join("recipes/compare-tiny.ron")).unwrap();
    let upcycling = recipe.replace("method: Upcycle(experts: 4)", "method: Upcycle(experts: 4), moe: Some((router_init: Hidden))");
    assert_ne!(upcycling, recipe, "compare-tiny.ron has no Upcycle(experts: 4) merge to edit");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.ron"), upcycling).unwrap();
    let e = format!("{:#}", btx::recipe::Recipe::load(&dir.path().join("r.ron")).unwrap_err());
    assert!(e.contains("merges[") && e.contains("cannot tell them apart"), "{e}");
}

/// A merge carries the tokenizer its members share, so its export needs no --tokenizer.
#[test]
fn a_merge_carries_its_members_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        seed_checkpoint(dir.path(), &format!("e{i}"), i);
        std::fs::copy(repo_root().join("assets/tokenizer.json"), dir.path().join(format!("e{i}/tokenizer.json"))).unwrap();
    }
    let (ok, stderr) = run_btx(&["merge", "--method", "btx", "--experts", "e0", "e1", "--out", "moe"], dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("moe/tokenizer.json")).unwrap(), std::fs::read(repo_root().join("assets/tokenizer.json")).unwrap());
    let (ok, stderr) = run_btx(&["export-hf", "moe", "--out", "hf"], dir.path());
    assert!(ok, "{stderr}");
    let names: Vec<String> = btx::merge::expert_names(&dir.path().join("moe")).unwrap();
    assert_eq!(names, ["e0", "e1"]);
}

/// The merge diagnosis: a member's FFN in the averaged shared weights is that member when
/// the members are identical; its FFN is the member's own; drift is zero from itself.
#[test]
fn transplant_keeps_one_ffn_and_averages_the_rest() {
    use btx::merge::diagnosis::{drift, transplant};
    let dir = tempfile::tempdir().unwrap();
    let a = seed_checkpoint(dir.path(), "a", 1);
    let same = [seed_checkpoint(dir.path(), "a1", 1), seed_checkpoint(dir.path(), "a2", 1)];
    let (_, tensors) = transplant(&same, 1, None).unwrap().into_tensors().unwrap();
    assert_eq!(tensors, btx::checkpoint::tensor_file::read_tensors(&a.path.join("model.safetensors")).unwrap());
    let mixed = [seed_checkpoint(dir.path(), "b", 2), seed_checkpoint(dir.path(), "c", 3)];
    let (_, tensors) = transplant(&mixed, 1, None).unwrap().into_tensors().unwrap();
    let ffn = "model.layers.1.mlp.down_proj.weight";
    assert_eq!(tensors[ffn], mixed[1].read(ffn).unwrap());
    let attn = "model.layers.0.self_attn.k_proj.weight";
    let (x, y) = (mixed[0].read(attn).unwrap(), mixed[1].read(attn).unwrap());
    let mean: Vec<f32> = x.values.iter().zip(&y.values).map(|(p, q)| ((*p as f64 + *q as f64) / 2.0) as f32).collect();
    assert!(max_abs_diff(&tensors[attn].values, &mean) < 1e-7);
    let d = drift(&[&same[0], &mixed[0]], &a, None).unwrap();
    assert_eq!(d[0].from_seed, 0.0);
    assert!(d[1].from_seed > 0.1 && d[0].from_average > 0.0 && (d[0].from_average - d[1].from_average).abs() < 0.05, "{d:?}");
}
