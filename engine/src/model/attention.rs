//! Causal multi-head self-attention with RoPE and optional grouped-query heads (GQA):
//! `n_kv_heads` key/value heads are shared by groups of `n_heads / n_kv_heads` query heads.
//! Field names follow Hugging Face's Llama (`q_proj`, `k_proj`, `v_proj`, `o_proj`). Options
//! of the families built on it: biases on q, k and v (Qwen2), an RMSNorm of each query and
//! key head before RoPE (Qwen3's `q_norm`, `k_norm`), heads wider or narrower than
//! d_model / n_heads (Qwen3's `head_dim`); Gemma's score scale, soft cap and sliding window
//! (`gemma::ScoreOptions`).

use super::gemma::{ScoreOptions, soft_cap};
use burn::tensor::activation::softmax;
use super::norm::RmsNorm;
use burn::tensor::ops::AttentionModuleOptions;

use super::linear::Linear;
use burn::prelude::*;

use super::autocast::{in_compute_dtype, project};
use super::init::{INIT_STD, linear};
use super::rope::apply_rope;
use crate::config::ModelConfig;
use crate::kernels;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3: RMSNorm over each query / key head (gain of head_dim).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    #[module(skip)]
    pub scores: ScoreOptions,
}

impl Attention {
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let (d, q_dim) = (config.d_model, config.q_dim());
        let kv_dim = config.kv_heads() * config.head_dim();
        Self {
            q_proj: input_projection(config, q_dim, device),
            k_proj: input_projection(config, kv_dim, device),
            v_proj: input_projection(config, kv_dim, device),
            o_proj: linear(q_dim, d, device),
            q_norm: head_norm(config, device),
            k_norm: head_norm(config, device),
            n_heads: config.n_heads,
            n_kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
            scores: ScoreOptions::default(),
        }
    }

    /// The same attention forming its scores by `scores` (a Gemma layer's).
    pub fn with_scores(self, scores: ScoreOptions) -> Self {
        Self { scores, ..self }
    }

    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<3> {
        self.forward_cached(x, cos, sin, &mut None)
    }

    /// Attention over the cached keys and values of earlier positions and the new ones,
    /// which are appended to the cache (RoPE already applied). With an empty cache this is
    /// the causal forward over `seq` positions; with a filled one, each new position attends
    /// to every cached position and to the new ones up to itself.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]` (the new positions' rows)
    /// - cache: `[batch, kv_heads, cached, head_dim]` keys and values
    pub fn forward_cached(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let head_dim = self.head_dim;
        let normed = |t: Tensor<4>, norm: &Option<RmsNorm>| match norm {
            Some(norm) => norm.forward(t),
            None => t,
        };
        let q = apply_rope(normed(split_heads(project(&self.q_proj, x.clone()), head_dim), &self.q_norm), cos, sin);
        let k = apply_rope(normed(split_heads(project(&self.k_proj, x.clone()), head_dim), &self.k_norm), cos, sin);
        let v = split_heads(project(&self.v_proj, x), head_dim);
        let (k, v, causal) = append_to_cache(k, v, cache);
        let group = self.n_heads / self.n_kv_heads;
        let out = causal_attention(q, repeat_kv(k, group), repeat_kv(v, group), causal, &self.scores);
        project(&self.o_proj, out.swap_dims(1, 2).reshape([batch, seq, self.n_heads * head_dim]))
    }
}

/// A query, key or value projection (d_model -> `d_out`), with a bias where the model has
/// them (Qwen2).
pub(crate) fn input_projection(config: &ModelConfig, d_out: usize, device: &Device) -> Linear {
    Linear::new(config.d_model, d_out, config.attention_bias, INIT_STD, device)
}

/// The RMSNorm over each query or key head, where the model has them (Qwen3).
pub(crate) fn head_norm(config: &ModelConfig, device: &Device) -> Option<RmsNorm> {
    config.qk_norm.then(|| RmsNorm::new(config.head_dim(), config.norm_eps, config.gemma.is_some(), device))
}

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`.
pub(crate) fn split_heads(t: Tensor<3>, head_dim: usize) -> Tensor<4> {
    let [batch, seq, width] = t.dims();
    t.reshape([batch, seq, width / head_dim, head_dim]).swap_dims(1, 2)
}

/// Keys and values of the cached positions followed by the new ones (which are stored in
/// the cache), and whether the attention is causal: with an empty cache it is the causal
/// forward over `seq` positions; with a filled one, one new position (a decoding step) attends
/// to every key, and several (a block after a shared context) causally, offset by the cached
/// positions.
pub(crate) fn append_to_cache(k: Tensor<4>, v: Tensor<4>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> (Tensor<4>, Tensor<4>, bool) {
    let new_positions = k.dims()[2];
    let (k, v, causal) = match cache.take() {
        Some((past_k, past_v)) => (Tensor::cat(vec![past_k, k], 2), Tensor::cat(vec![past_v, v], 2), new_positions > 1),
        None => (k, v, true),
    };
    *cache = Some((k.clone(), v.clone()));
    (k, v, causal)
}

/// softmax(q k^T / sqrt(head_dim)) v per head, causal or over every key (in f16 inside an
/// f16 autocast scope), with a Gemma layer's score options. The engine's kernel takes the
/// plain case and a scale (folded into q); a window shorter than the keys goes through
/// Burn's attention with an explicit mask; a soft cap is written out as tensor operations.
pub(crate) fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool, scores: &ScoreOptions) -> Tensor<4> {
    let [_, _, seq_q, head_dim] = q.dims();
    let seq_k = k.dims()[2];
    let (mut k, mut v) = (k, v);
    let window = scores.window.filter(|&w| w < seq_k);
    if let (Some(w), false) = (window, causal) {
        // A decoding step (one query, the newest position) sees the last `w` keys.
        assert_eq!(seq_q, 1, "a cached forward takes one position at a time");
        (k, v) = (k.narrow(2, seq_k - w, w), v.narrow(2, seq_k - w, w));
    }
    // Causal queries that follow cached keys: the engine's CPU kernel offsets its mask by the
    // cached positions; Burn's attention elsewhere gets the offset mask written out.
    let offset = causal && seq_q != seq_k && !kernels::handles_offset_causal(&q);
    let needs_mask = causal && (window.is_some() || offset);
    if scores.softcap.is_none() && !needs_mask {
        let q = match scores.scale {
            Some(scale) => q * (scale * (head_dim as f64).sqrt()),
            None => q,
        };
        return in_compute_dtype(q, k, v, |q, k, v| kernels::attention(q, k, v, causal));
    }
    let mask = causal.then(|| sliding_window_mask(q.dims(), seq_k, window.unwrap_or(seq_k), &q.device()));
    if let Some(cap) = scores.softcap {
        // transformers' eager order: scale, cap, mask, softmax.
        let scale = scores.scale.unwrap_or((head_dim as f64).powf(-0.5));
        let mut logits = soft_cap(q.matmul(k.swap_dims(2, 3)) * scale, cap);
        if let Some(mask) = mask {
            logits = logits.mask_fill(mask, f32::NEG_INFINITY);
        }
        return softmax(logits, 3).matmul(v);
    }
    let options = AttentionModuleOptions { scale: scores.scale, softcap: None, is_causal: false };
    in_compute_dtype(q, k, v, |q, k, v| burn::tensor::module::attention(q, k, v, mask, None, options))
}

/// The mask (true: not attended) of causal attention over a window of `window` positions:
/// query i (at position i + seq_k - seq_q) sees key j when 0 <= pos(i) - j < window, as
/// transformers' `sliding_window_overlay` on its causal mask.
fn sliding_window_mask([batch, heads, seq_q, _]: [usize; 4], seq_k: usize, window: usize, device: &Device) -> Tensor<4, Bool> {
    let offset = seq_k - seq_q;
    let masked: Vec<bool> = (0..seq_q)
        .flat_map(|i| (0..seq_k).map(move |j| j > i + offset || i + offset - j >= window))
        .collect();
    Tensor::<2, Bool>::from_data(TensorData::new(masked, [seq_q, seq_k]), device)
        .unsqueeze::<4>()
        .expand([batch, heads, seq_q, seq_k])
}

/// Repeats each key/value head for its group of query heads:
/// `[b, kv_heads, s, hd]` -> `[b, kv_heads * group, s, hd]`.
pub(crate) fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, kv, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, group, s, hd]).reshape([b, kv * group, s, hd])
}
