//! Invariants of the dense model: causality, RoPE's relative positions, GQA against plain
//! multi-head attention, and checkpoint round trips.

use btx::burn::prelude::*;
use btx::burn::tensor::Distribution;
use btx::burn::tensor::activation::softmax;
use btx::checkpoint::{load_model, write_model_files};
use btx::model::LanguageModel;
use btx::model::attention::Attention;
use btx::model::rope::{apply_rope, rope_tables};

use crate::common::*;

#[test]
fn changing_token_t_changes_no_logit_before_t() {
    let device = cpu();
    let config = tiny_model(4, 2);
    device.seed(1);
    let model = LanguageModel::new(&config, &device);
    let tokens = random_tokens(1, 16, config.vocab_size, 3, &device);
    let mut changed = to_vec_int(tokens.clone());
    changed[9] = (changed[9] + 1) % config.vocab_size as i64;
    let changed = Tensor::<2, Int>::from_data(TensorData::new(changed, [1, 16]), &device);

    let a = to_vec(model.forward(tokens));
    let b = to_vec(model.forward(changed));
    let v = config.vocab_size;
    assert_eq!(max_abs_diff(&a[..9 * v], &b[..9 * v]), 0.0, "a logit before the changed token moved");
    assert!(max_abs_diff(&a[9 * v..10 * v], &b[9 * v..10 * v]) > 1e-4, "the changed position's logits did not move");
}

fn to_vec_int(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    let device = cpu();
    let (head_dim, len) = (16, 24);
    let (cos, sin) = rope_tables(len, head_dim, 10_000.0, &device);
    // The same q and k vector at every position.
    let q = Tensor::<1>::random([head_dim], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<1>::random([head_dim], Distribution::Normal(0.0, 1.0), &device);
    let at_all = |v: Tensor<1>| v.reshape([1, 1, 1, head_dim]).repeat_dim(2, len);
    let q = apply_rope(at_all(q), &cos, &sin).reshape([len, head_dim]);
    let k = apply_rope(at_all(k), &cos, &sin).reshape([len, head_dim]);
    let scores = to_vec(q.matmul(k.transpose())); // [len, len]
    let score = |m: usize, n: usize| scores[m * len + n];
    for (m, n) in [(3, 1), (10, 2), (7, 7), (2, 9)] {
        for shift in [1, 5, 12] {
            let (a, b) = (score(m, n), score(m + shift, n + shift));
            assert!((a - b).abs() < 1e-4, "score({m},{n}) = {a} but score shifted by {shift} = {b}");
        }
    }
    // And it does depend on the distance.
    assert!((score(5, 0) - score(5, 4)).abs() > 1e-3);
}

/// Plain causal multi-head attention written out: softmax(q k^T / sqrt(d) + mask) v, with
/// RoPE, one head at a time, key/value head `h / group` for query head `h`.
fn reference_attention(attn: &Attention, x: Tensor<3>) -> Tensor<3> {
    let [batch, seq, d_model] = x.dims();
    let hd = d_model / attn.n_heads;
    let group = attn.n_heads / attn.n_kv_heads;
    let device = x.device();
    let (cos, sin) = rope_tables(seq, hd, 10_000.0, &device);
    let split = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, hd]).swap_dims(1, 2);
    let q = apply_rope(split(attn.q_proj.forward(x.clone()), attn.n_heads), &cos, &sin);
    let k = apply_rope(split(attn.k_proj.forward(x.clone()), attn.n_kv_heads), &cos, &sin);
    let v = split(attn.v_proj.forward(x), attn.n_kv_heads);
    // True where key j > query i: the future, masked out.
    let mask = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &device);
    let mut heads = Vec::new();
    for h in 0..attn.n_heads {
        let qh = q.clone().narrow(1, h, 1).reshape([batch, seq, hd]);
        let kh = k.clone().narrow(1, h / group, 1).reshape([batch, seq, hd]);
        let vh = v.clone().narrow(1, h / group, 1).reshape([batch, seq, hd]);
        let scores = qh.matmul(kh.swap_dims(1, 2)) / (hd as f64).sqrt();
        let scores = scores.mask_fill(mask.clone().unsqueeze::<3>().expand([batch, seq, seq]), f32::NEG_INFINITY);
        heads.push(softmax(scores, 2).matmul(vh));
    }
    attn.o_proj.forward(Tensor::cat(heads, 2))
}

#[test]
fn attention_equals_plain_multi_head_attention() {
    let device = cpu();
    for (heads, kv_heads) in [(4, 4), (4, 2), (4, 1)] {
        device.seed(heads as u64 * 10 + kv_heads as u64);
        let attn = Attention::new(&tiny_model(heads, kv_heads), &device);
        let x = Tensor::<3>::random([2, 12, 32], Distribution::Normal(0.0, 1.0), &device);
        let (cos, sin) = rope_tables(12, 32 / heads, 10_000.0, &device);
        let got = to_vec(attn.forward(x.clone(), &cos, &sin));
        let want = to_vec(reference_attention(&attn, x));
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "heads {heads}, kv_heads {kv_heads}: max difference {diff}");
    }
}

#[test]
fn grouped_query_attention_equals_mha_with_repeated_kv_weights() {
    let device = cpu();
    device.seed(5);
    let gqa = Attention::new(&tiny_model(4, 2), &device);
    // An MHA whose key/value projections repeat each GQA head for its group of 2 queries.
    let mut mha = Attention::new(&tiny_model(4, 4), &device);
    let repeat = |w: Tensor<2>| {
        let [d, kv_dim] = w.dims();
        let hd = kv_dim / 2;
        w.reshape([d, 2, 1, hd]).repeat_dim(2, 2).reshape([d, 4 * hd])
    };
    mha.q_proj = gqa.q_proj.clone();
    mha.o_proj = gqa.o_proj.clone();
    mha.k_proj.weight = mha.k_proj.weight.clone().map(|_| repeat(gqa.k_proj.weight.val()));
    mha.v_proj.weight = mha.v_proj.weight.clone().map(|_| repeat(gqa.v_proj.weight.val()));
    let x = Tensor::<3>::random([2, 10, 32], Distribution::Normal(0.0, 1.0), &device);
    let (cos, sin) = rope_tables(10, 8, 10_000.0, &device);
    let diff = max_abs_diff(&to_vec(gqa.forward(x.clone(), &cos, &sin)), &to_vec(mha.forward(x, &cos, &sin)));
    assert!(diff < 1e-5, "max difference {diff}");
}

#[test]
fn save_then_load_gives_identical_logits() {
    let device = cpu();
    for tie in [false, true] {
        let mut config = tiny_model(4, 2);
        config.tie_embeddings = tie;
        device.seed(11);
        let model = LanguageModel::new(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        write_model_files(dir.path(), &model, &config).unwrap();
        let (loaded_config, loaded) = load_model(dir.path(), &device).unwrap();
        assert_eq!(loaded_config, config);
        let tokens = random_tokens(2, 16, config.vocab_size, 4, &device);
        let a = to_vec(model.forward(tokens.clone()));
        let b = to_vec(loaded.forward(tokens));
        assert_eq!(a, b, "tie_embeddings = {tie}");
    }
}

#[test]
fn checkpoint_uses_hugging_face_llama_names_and_layout() {
    let device = cpu();
    let config = tiny_model(4, 2);
    let model = LanguageModel::new(&config, &device);
    let tensors = btx::checkpoint::module_tensors::module_to_tensors(&model);
    let shape = |name: &str| tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}")).shape.clone();
    assert_eq!(shape("model.embed_tokens.weight"), vec![4096, 32]);
    assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), vec![32, 32]);
    assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), vec![16, 32]); // [out, in]
    assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), vec![64, 32]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), vec![32, 64]);
    assert_eq!(shape("model.layers.0.input_layernorm.weight"), vec![32]);
    assert_eq!(shape("model.layers.0.post_attention_layernorm.weight"), vec![32]);
    assert_eq!(shape("model.norm.weight"), vec![32]);
    assert_eq!(shape("lm_head.weight"), vec![4096, 32]);
    assert_eq!(tensors.len(), 1 + 2 * 9 + 1 + 1);
}
