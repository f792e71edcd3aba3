//! The methods after BTX, by their invariants: BAM's attention experts (identical experts give
//! the seed), the shared expert, Drop-Upcycling (r = 0 is upcycling; the same hidden units
//! dropped in an expert's three projections), removing and adding experts.

use btx::checkpoint::load_model;
use btx::checkpoint::tensor_file::{HostTensor, TensorMap};
use btx::merge::MergeInput;
use btx::merge::mix::{MoeOptions, Perturbation, SharedExpert, bam, mix};
use btx::merge::upcycle::upcycle;
use btx::model::lm::KvCache;

use crate::common::*;

/// For every attention family (Llama, Qwen2's biases, Qwen3's q/k norms and wide heads).
#[test]
fn bam_of_identical_experts_gives_the_seed_logits_with_or_without_shared_kv() {
    let dir = tempfile::tempdir().unwrap();
    for (family, model) in attention_families() {
        let seed = seed_checkpoint_of(dir.path(), &format!("{family}-seed"), 1, &model);
        let want = seed_logits(&seed);
        let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint_of(dir.path(), &format!("{family}-copy{i}"), 1, &model)).collect();
        for shared_kv in [false, true] {
            let (config, tensors) = bam(&experts, Some(&seed), None, &MoeOptions::default(), None, shared_kv).unwrap().into_tensors().unwrap();
            let attention = config.attention_experts.as_ref().unwrap();
            assert_eq!((attention.num_experts, attention.shared_kv), (4, shared_kv));
            assert!(!tensors.keys().any(|n| n.contains(".self_attn.")), "BAM keeps no single attention");
            let got = logits_of(dir.path(), &config, &tensors);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{family}, shared_kv {shared_kv}: max |diff| {diff}");
        }
    }
}

/// Decoding with the KV cache (one position at a time) gives the full forward's logits, with
/// each expert's own keys and values or shared ones, in every attention family.
#[test]
fn bam_decodes_with_the_kv_cache_as_the_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let device = cpu();
    for (family, model) in attention_families() {
        let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint_of(dir.path(), &format!("{family}-e{i}"), 10 + i, &model)).collect();
        for shared_kv in [false, true] {
            let out = dir.path().join(format!("{family}-bam-{shared_kv}"));
            bam(&experts, None, None, &MoeOptions::default(), None, shared_kv).unwrap().write(&out, &[]).unwrap();
            let (_, model) = load_model(&out, &device).unwrap();
            let tokens = random_tokens(1, 12, 4096, 5, &device);
            let full = to_vec(model.forward(tokens.clone()));
            let mut cache = KvCache::default();
            let mut stepped = Vec::new();
            for t in 0..12 {
                stepped.extend(to_vec(model.forward_cached(tokens.clone().narrow(1, t, 1), &mut cache).0));
            }
            let diff = max_abs_diff(&full, &stepped);
            assert!(diff < 1e-4, "{family}, shared_kv {shared_kv}: cached decoding differs by {diff}");
            let kv_heads = cache.layers[0].as_ref().unwrap().0.dims()[1];
            assert_eq!(kv_heads, if shared_kv { 2 } else { 3 * 2 }, "the cache holds shared heads once");
        }
    }
}

/// Every tensor of a member's attention (projections, Qwen2's biases, Qwen3's q/k norms) is
/// its attention expert's; shared keys and values (with their biases and norm) are averaged.
#[test]
fn bam_keeps_each_members_attention_and_averages_shared_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    for (family, model) in attention_families() {
        let experts: Vec<MergeInput> = (0..2).map(|i| seed_checkpoint_of(dir.path(), &format!("{family}-e{i}"), 20 + i, &model)).collect();
        let read = |m: &MergeInput, n: &str| m.read(n).unwrap();
        let (config, own) = bam(&experts, None, None, &MoeOptions::default(), None, false).unwrap().into_tensors().unwrap();
        let (shared_config, shared) = bam(&experts, None, None, &MoeOptions::default(), None, true).unwrap().into_tensors().unwrap();
        let parts = model.attention_parts();
        assert_eq!(parts.len(), match family { "Qwen2" => 4 + 3, "Qwen3" | "Gemma3" => 4 + 2, _ => 4 });
        let mut kv_params = 0;
        for (part, shape) in &parts {
            let theirs = format!("model.layers.1.self_attn.{part}");
            let key_or_value = part.starts_with("k_") || part.starts_with("v_");
            for e in 0..2 {
                let ours = format!("model.layers.1.attention_experts.experts.{e}.{part}");
                assert_eq!(&own[&ours], &read(&experts[e], &theirs), "{family}: expert {e} {part}");
                assert_eq!(shared.contains_key(&ours), !key_or_value, "{family}: {ours}");
            }
            if key_or_value {
                let (a, b) = (read(&experts[0], &theirs), read(&experts[1], &theirs));
                let mean: Vec<f32> = a.values.iter().zip(&b.values).map(|(x, y)| (x + y) / 2.0).collect();
                let ours = &shared[&format!("model.layers.1.attention_experts.{part}")];
                assert!(max_abs_diff(&ours.values, &mean) < 1e-6, "{family}: shared {part}");
                kv_params += shape.iter().product::<usize>();
            }
        }
        // Sharing keys and values saves (E - 1) of their tensors per layer.
        assert_eq!(config.num_params() - shared_config.num_params(), 2 * kv_params, "{family}");
    }
}

#[test]
fn a_shared_expert_is_the_seeds_ffn_beside_the_routed_experts() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 1);
    let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 30 + i)).collect();
    let options = MoeOptions { shared_expert: SharedExpert::Seed, ..Default::default() };
    let (config, tensors) = mix(&experts, Some(&seed), None, &options, None).unwrap().into_tensors().unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert!(moe.shared_expert);
    assert_eq!(moe.num_experts, 3, "the seed is the shared expert, not a fourth routed one");
    for proj in ["gate_proj", "up_proj", "down_proj"] {
        let shared = &tensors[&format!("model.layers.0.block_sparse_moe.shared_expert.{proj}.weight")];
        assert_eq!(shared, &seed.read(&format!("model.layers.0.mlp.{proj}.weight")).unwrap());
    }
    // Every token goes through the shared expert: with identical routed experts (upcycling) and
    // the seed's FFN shared, each MoE layer computes 2 x FFN(x). Removing the routed experts'
    // contribution by zeroing their down projections leaves exactly the shared FFN, so the
    // model is the seed.
    let (config, mut tensors) = upcycle(&seed, 4, Perturbation::default(), &options, None).unwrap().into_tensors().unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.contains(".experts.") && name.ends_with(".w2.weight") {
            *t = HostTensor::new(t.shape.clone(), vec![0.0; t.values.len()]);
        }
    }
    let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &seed_logits(&seed));
    assert!(diff < 1e-4, "max |diff| {diff}");
    // Average: the members' FFNs averaged (the seed stays a routed expert).
    let average = MoeOptions { shared_expert: SharedExpert::Average, ..Default::default() };
    let (config, tensors) = mix(&experts, Some(&seed), None, &average, None).unwrap().into_tensors().unwrap();
    assert_eq!(config.moe.as_ref().unwrap().num_experts, 4);
    let name = "model.layers.1.mlp.up_proj.weight";
    let members: Vec<HostTensor> = experts.iter().chain([&seed]).map(|m| m.read(name).unwrap()).collect();
    let mean: Vec<f32> = (0..members[0].values.len()).map(|i| members.iter().map(|m| m.values[i] as f64).sum::<f64>() as f32 / 4.0).collect();
    assert!(max_abs_diff(&tensors["model.layers.1.block_sparse_moe.shared_expert.up_proj.weight"].values, &mean) < 1e-6);
    // Without --seed, shared_expert Seed is an error naming what is missing.
    let err = format!("{:#}", mix(&experts, None, None, &options, None).err().unwrap());
    assert!(err.contains("no seed"), "{err}");
}

/// The rows (hidden in rows) or columns where two 2-D tensors differ.
fn changed_units(a: &HostTensor, b: &HostTensor, hidden_in_rows: bool) -> Vec<usize> {
    let (rows, cols) = (a.shape[0], a.shape[1]);
    let differs = |r: usize, c: usize| a.values[r * cols + c] != b.values[r * cols + c];
    if hidden_in_rows {
        (0..rows).filter(|&r| (0..cols).any(|c| differs(r, c))).collect()
    } else {
        (0..cols).filter(|&c| (0..rows).any(|r| differs(r, c))).collect()
    }
}

#[test]
fn drop_upcycling_reinitialises_the_same_hidden_units_of_each_projection() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 1);
    let options = MoeOptions::default();
    let plain = |p: Perturbation| -> TensorMap { upcycle(&seed, 4, p, &options, None).unwrap().into_tensors().unwrap().1 };
    assert_eq!(plain(Perturbation { drop_ratio: 0.0, ..Default::default() }), plain(Perturbation::default()), "r = 0 is upcycling");

    let dropped = plain(Perturbation { drop_ratio: 0.5, ..Default::default() });
    let mut sets = Vec::new();
    for layer in 0..2 {
        let original = |proj: &str| seed.read(&format!("model.layers.{layer}.mlp.{proj}.weight")).unwrap();
        for e in 0..4 {
            let expert = |w: &str| &dropped[&format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight")];
            let gate = changed_units(expert("w1"), &original("gate_proj"), true);
            let up = changed_units(expert("w3"), &original("up_proj"), true);
            let down = changed_units(expert("w2"), &original("down_proj"), false);
            assert_eq!(gate.len(), 32, "half of d_ff = 64 hidden units");
            assert_eq!((&gate, &gate), (&up, &down), "layer {layer} expert {e}: one set of units for all three");
            // The new values follow the original matrix's statistics.
            let seed_gate = original("gate_proj");
            let std = |v: &[f32]| {
                let m = v.iter().sum::<f32>() / v.len() as f32;
                (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt()
            };
            let new: Vec<f32> = gate.iter().flat_map(|&r| expert("w1").values[r * 32..(r + 1) * 32].to_vec()).collect();
            let ratio = std(&new) / std(&seed_gate.values);
            assert!((0.85..1.15).contains(&ratio), "re-initialised std is {ratio} x the original's");
            sets.push(gate);
        }
    }
    sets.sort();
    sets.dedup();
    assert_eq!(sets.len(), 8, "every expert of every layer drops its own units");
}

/// An MoE of five distinct experts whose expert 4 no token can choose: in every layer, router
/// rows w, -w, v, -v and 0, so with top-2 the two positive logits of |w.x| and |v.x| always
/// beat expert 4's zero.
fn moe_with_an_unroutable_expert(dir: &std::path::Path) -> std::path::PathBuf {
    let experts: Vec<MergeInput> = (0..5).map(|i| seed_checkpoint(dir, &format!("m{i}"), 40 + i)).collect();
    let (config, mut tensors) = mix(&experts, None, None, &MoeOptions::default(), None).unwrap().into_tensors().unwrap();
    for layer in 0..2 {
        let router = tensors.get_mut(&btx::checkpoint::tensor_names::router(layer)).unwrap();
        let d = router.shape[1];
        let (w, v) = (router.values[..d].to_vec(), router.values[d..2 * d].to_vec());
        let neg = |x: &[f32]| x.iter().map(|a| -a).collect::<Vec<f32>>();
        router.values = [w.clone(), neg(&w), v.clone(), neg(&v), vec![0.0; d]].concat();
    }
    let path = dir.join("moe5");
    btx::checkpoint::write_tensor_checkpoint(&path, &config, &tensors, &[]).unwrap();
    path
}

#[test]
fn removing_an_expert_no_token_routed_to_leaves_the_logits_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_with_an_unroutable_expert(dir.path());
    let device = cpu();
    let (_, model) = load_model(&path, &device).unwrap();
    let tokens = random_tokens(2, 16, 4096, 77, &device);
    let (logits, aux) = model.forward_with_aux(tokens.clone(), Default::default());
    assert!(aux.iter().all(|a| a.expert_tokens[4] == 0), "the premise: expert 4 is never chosen");
    let want = to_vec(logits);

    let moe = MergeInput::load(&path).unwrap();
    let (plan, names) = btx::merge::experts::remove_expert(&moe, "4").unwrap();
    assert_eq!(names, ["0", "1", "2", "3"]);
    let (config, tensors) = plan.into_tensors().unwrap();
    assert_eq!(config.moe.as_ref().unwrap().num_experts, 4);
    let diff = max_abs_diff(&logits_of(dir.path(), &config, &tensors), &want);
    assert!(diff < 1e-5, "removing an unrouted expert changed the logits by {diff}");
    // Removing one that tokens do choose changes them (the comparison can fail).
    let (plan, _) = btx::merge::experts::remove_expert(&moe, "0").unwrap();
    let (config, tensors) = plan.into_tensors().unwrap();
    assert!(max_abs_diff(&logits_of(dir.path(), &config, &tensors), &want) > 1e-3);
    let err = format!("{:#}", btx::merge::experts::remove_expert(&moe, "nine").err().unwrap());
    assert!(err.contains("no expert named `nine`"), "{err}");
}

/// Adding an expert and removing it again gives back the MoE bit for bit, with attention
/// experts (BAM, own or shared keys and values) or without; the added FFNs are the new
/// expert's own.
#[test]
fn adding_then_removing_an_expert_gives_back_the_moe() {
    use btx::merge::experts::{AddedRouterRows, add_expert, remove_expert};
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..2).map(|i| seed_checkpoint(dir.path(), &format!("a{i}"), 50 + i)).collect();
    let seed = seed_checkpoint(dir.path(), "seed", 1);
    let later = seed_checkpoint(dir.path(), "later", 60);
    let split = MoeOptions { split: 2, ..Default::default() };
    let shared = MoeOptions { shared_expert: SharedExpert::Seed, ..Default::default() };
    let plans = [
        ("btx", mix(&experts, Some(&seed), None, &MoeOptions::default(), None).unwrap()),
        ("split", mix(&experts, None, None, &split, None).unwrap()),
        ("bam", bam(&experts, Some(&seed), None, &shared, None, false).unwrap()),
        ("bam-shared-kv", bam(&experts, None, None, &MoeOptions::default(), None, true).unwrap()),
    ];
    for (label, plan) in plans {
        let path = dir.path().join(label);
        plan.write(&path, &[]).unwrap();
        let original = btx::checkpoint::tensor_file::read_tensors(&path.join("model.safetensors")).unwrap();
        let moe = MergeInput::load(&path).unwrap();
        let (grown, names) = add_expert(&moe, &later, "later", &AddedRouterRows::Random { seed: 3 }).unwrap();
        let grown_path = dir.path().join(format!("{label}-grown"));
        btx::merge::experts::write_edited(&grown, &moe, &grown_path, "AddExpert", "later", &names).unwrap();
        let (config, _) = load_model(&grown_path, &cpu()).unwrap(); // it loads as a model
        let tensors = btx::checkpoint::tensor_file::read_tensors(&grown_path.join("model.safetensors")).unwrap();
        let e = config.moe.as_ref().unwrap().num_experts - 1;
        assert_eq!(tensors[&format!("model.layers.1.block_sparse_moe.experts.{e}.w2.weight")].shape[0], 32, "{label}");
        if label == "btx" {
            assert_eq!(tensors[&format!("model.layers.1.block_sparse_moe.experts.{e}.w1.weight")], later.read("model.layers.1.mlp.gate_proj.weight").unwrap());
        }
        let grown_moe = MergeInput::load(&grown_path).unwrap();
        let (shrunk, _) = remove_expert(&grown_moe, "later").unwrap();
        let (_, back) = shrunk.into_tensors().unwrap();
        assert_eq!(back, original, "{label}: add then remove");
    }
}
