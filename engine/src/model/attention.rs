//! Causal multi-head self-attention with RoPE and optional grouped-query heads (GQA):
//! `n_kv_heads` key/value heads are shared by groups of `n_heads / n_kv_heads` query heads.
//! Field names follow Hugging Face's Llama (`q_proj`, `k_proj`, `v_proj`, `o_proj`).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::init::linear;
use super::rope::apply_rope;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl Attention {
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let d = config.d_model;
        let kv_dim = config.kv_heads() * config.head_dim();
        let linear = |d_in, d_out| linear(d_in, d_out, device);
        Self {
            q_proj: linear(d, d),
            k_proj: linear(d, kv_dim),
            v_proj: linear(d, kv_dim),
            o_proj: linear(d, d),
            n_heads: config.n_heads,
            n_kv_heads: config.kv_heads(),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<3> {
        self.forward_cached(x, cos, sin, &mut None)
    }

    /// Attention over the cached keys and values of earlier positions and the new ones,
    /// which are appended to the cache (RoPE already applied). With an empty cache this is
    /// the causal forward over `seq` positions; with a filled one, `seq` must be 1 (one
    /// decoding step, which attends to every cached position).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]` (the new positions' rows)
    /// - cache: `[batch, kv_heads, cached, head_dim]` keys and values
    pub fn forward_cached(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let [batch, seq, d_model] = x.dims();
        let head_dim = d_model / self.n_heads;
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2);

        let q = apply_rope(heads(self.q_proj.forward(x.clone()), self.n_heads), cos, sin);
        let mut k = apply_rope(heads(self.k_proj.forward(x.clone()), self.n_kv_heads), cos, sin);
        let mut v = heads(self.v_proj.forward(x), self.n_kv_heads);
        let causal = match cache.take() {
            Some((past_k, past_v)) => {
                assert_eq!(seq, 1, "a cached forward takes one position at a time");
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
                false
            }
            None => true,
        };
        *cache = Some((k.clone(), v.clone()));
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
        let out = attention(q, k, v, None, None, options);
        self.o_proj.forward(out.swap_dims(1, 2).reshape([batch, seq, d_model]))
    }

    /// Repeats each key/value head for its group of query heads:
    /// `[b, kv_heads, s, hd]` -> `[b, heads, s, hd]`.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let group = self.n_heads / self.n_kv_heads;
        if group == 1 {
            return x;
        }
        let [b, kv, s, hd] = x.dims();
        x.unsqueeze_dim::<5>(2).expand([b, kv, group, s, hd]).reshape([b, kv * group, s, hd])
    }
}
