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

fn copies(dir: &std::path::Path, n: usize, seed: u64) -> Vec<MergeInput> {
    (0..n).map(|i| seed_checkpoint(dir, &format!("copy{seed}-{i}"), seed)).collect()
}

#[test]
fn bam_of_identical_experts_gives_the_seed_logits_with_or_without_shared_kv() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_checkpoint(dir.path(), "seed", 1);
    let want = seed_logits(&seed);
    let experts = copies(dir.path(), 3, 1);
    for shared_kv in [false, true] {
        let (config, tensors) = bam(&experts, Some(&seed), None, &MoeOptions::default(), None, shared_kv).unwrap().into_tensors().unwrap();
        let attention = config.attention_experts.as_ref().unwrap();
        assert_eq!((attention.num_experts, attention.shared_kv), (4, shared_kv));
        assert!(!tensors.keys().any(|n| n.contains(".self_attn.")), "BAM keeps no single attention");
        let got = logits_of(dir.path(), &config, &tensors);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "shared_kv {shared_kv}: max |diff| {diff}");
    }
}

/// Decoding with the KV cache (one position at a time) gives the full forward's logits, with
/// each expert's own keys and values or shared ones.
#[test]
fn bam_decodes_with_the_kv_cache_as_the_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..3).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 10 + i)).collect();
    let device = cpu();
    for shared_kv in [false, true] {
        let out = dir.path().join(format!("bam-{shared_kv}"));
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
        assert!(diff < 1e-4, "shared_kv {shared_kv}: cached decoding differs by {diff}");
        let kv_heads = cache.layers[0].as_ref().unwrap().0.dims()[1];
        assert_eq!(kv_heads, if shared_kv { 2 } else { 3 * 2 }, "the cache holds shared heads once");
    }
}

#[test]
fn bam_keeps_each_members_attention_and_averages_shared_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let experts: Vec<MergeInput> = (0..2).map(|i| seed_checkpoint(dir.path(), &format!("e{i}"), 20 + i)).collect();
    let read = |m: &MergeInput, n: &str| m.read(n).unwrap();
    let (config, own) = bam(&experts, None, None, &MoeOptions::default(), None, false).unwrap().into_tensors().unwrap();
    let (shared_config, shared) = bam(&experts, None, None, &MoeOptions::default(), None, true).unwrap().into_tensors().unwrap();
    for e in 0..2 {
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let ours = &own[&format!("model.layers.1.attention_experts.experts.{e}.{proj}.weight")];
            assert_eq!(ours, &read(&experts[e], &format!("model.layers.1.self_attn.{proj}.weight")), "expert {e} {proj}");
        }
        assert!(!shared.contains_key(&format!("model.layers.1.attention_experts.experts.{e}.k_proj.weight")));
    }
    let name = "model.layers.1.self_attn.v_proj.weight";
    let (a, b) = (read(&experts[0], name), read(&experts[1], name));
    let mean: Vec<f32> = a.values.iter().zip(&b.values).map(|(x, y)| (x + y) / 2.0).collect();
    assert!(max_abs_diff(&shared["model.layers.1.attention_experts.v_proj.weight"].values, &mean) < 1e-6);
    // Sharing keys and values saves (E - 1) key and value projections per layer.
    let kv = 2 * 32 * 16; // k and v: [kv_heads * head_dim, d_model] = [16, 32]
    assert_eq!(config.num_params() - shared_config.num_params(), 2 * kv);
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
