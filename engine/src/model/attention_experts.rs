//! Attention experts (BAM, Zhang et al. 2024, "BAM! Just Like That: Simple and Efficient
//! Parameter Upcycling for Mixture of Experts", §3): each dense expert's attention is kept as
//! one attention expert, and every token uses all of them, weighted by a per-layer router
//! (soft routing, the paper's choice for attention):
//!
//!   y = sum_i g_i(x) Attn_i(x),  g(x) = softmax(W_attn x).
//!
//! With `shared_kv` the experts keep their own query and output projections but share one
//! key and value projection (the members' average), which saves parameters and shrinks the
//! KV cache E-fold (the paper's "KV sharing" variant).
//!
//! All experts run as one attention call: their query heads are stacked (expert e's head j is
//! head e * n_heads + j), each against its own expert's key/value heads.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::attention::{append_to_cache, causal_attention, repeat_kv, split_heads};
use super::init::linear;
use super::rope::apply_rope;
pub use super::moe_config::AttentionExpertsConfig;
use crate::config::ModelConfig;

/// One attention expert: its own queries and output, and its own keys and values unless they
/// are shared.
#[derive(Module, Debug)]
pub struct AttentionExpert {
    pub q_proj: Linear,
    pub k_proj: Option<Linear>,
    pub v_proj: Option<Linear>,
    pub o_proj: Linear,
}

#[derive(Module, Debug)]
pub struct AttentionExperts {
    /// The attention router W_attn (d_model -> E).
    pub gate: Linear,
    pub experts: Vec<AttentionExpert>,
    /// The shared key and value projections (`shared_kv`).
    pub k_proj: Option<Linear>,
    pub v_proj: Option<Linear>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl AttentionExperts {
    pub fn new(config: &ModelConfig, experts: &AttentionExpertsConfig, device: &Device) -> Self {
        let d = config.d_model;
        let kv_dim = config.kv_heads() * config.head_dim();
        let own_kv = !experts.shared_kv;
        Self {
            gate: linear(d, experts.num_experts, device),
            experts: (0..experts.num_experts)
                .map(|_| AttentionExpert {
                    q_proj: linear(d, d, device),
                    k_proj: own_kv.then(|| linear(d, kv_dim, device)),
                    v_proj: own_kv.then(|| linear(d, kv_dim, device)),
                    o_proj: linear(d, d, device),
                })
                .collect(),
            k_proj: experts.shared_kv.then(|| linear(d, kv_dim, device)),
            v_proj: experts.shared_kv.then(|| linear(d, kv_dim, device)),
            n_heads: config.n_heads,
            n_kv_heads: config.kv_heads(),
        }
    }

    /// Keys or values of every expert, stacked as `[batch, heads, seq, head_dim]` (the shared
    /// projection's heads once, or each expert's in turn).
    fn project(&self, x: &Tensor<3>, shared: &Option<Linear>, own: impl Fn(&AttentionExpert) -> &Option<Linear>, head_dim: usize) -> Tensor<4> {
        let t = match shared {
            Some(p) => p.forward(x.clone()),
            None => Tensor::cat(self.experts.iter().map(|e| own(e).as_ref().expect("own projection").forward(x.clone())).collect(), 2),
        };
        split_heads(t, head_dim)
    }

    /// The soft mixture of attention experts, over cached keys and values as
    /// `Attention::forward_cached` (the cache holds the stacked, or shared, heads).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]` -> `[batch, seq, d_model]`
    pub fn forward_cached(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let [batch, seq, d_model] = x.dims();
        let num_experts = self.experts.len();
        let head_dim = d_model / self.n_heads;
        let gates = softmax(self.gate.forward(x.clone()), 2); // [b, s, E]
        let queries = Tensor::cat(self.experts.iter().map(|e| e.q_proj.forward(x.clone())).collect(), 2);
        let q = apply_rope(split_heads(queries, head_dim), cos, sin); // [b, E*h, s, hd]
        let k = apply_rope(self.project(&x, &self.k_proj, |e| &e.k_proj, head_dim), cos, sin);
        let v = self.project(&x, &self.v_proj, |e| &e.v_proj, head_dim);
        let (mut k, mut v, causal) = append_to_cache(k, v, cache);
        if self.k_proj.is_some() {
            // Every expert reads the same heads: tile them once per expert.
            (k, v) = (k.repeat_dim(1, num_experts), v.repeat_dim(1, num_experts));
        }
        let group = self.n_heads / self.n_kv_heads;
        let out = causal_attention(q, repeat_kv(k, group), repeat_kv(v, group), causal);
        let out = out.swap_dims(1, 2).reshape([batch, seq, num_experts, d_model]);
        let mut y = Tensor::<3>::zeros([batch, seq, d_model], &out.device());
        for (e, expert) in self.experts.iter().enumerate() {
            let weighted = out.clone().narrow(2, e, 1).reshape([batch, seq, d_model]) * gates.clone().narrow(2, e, 1);
            y = y + expert.o_proj.forward(weighted);
        }
        y
    }
}
