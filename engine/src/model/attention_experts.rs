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

use super::gemma::ScoreOptions;
use super::norm::RmsNorm;

use super::linear::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::attention::{append_to_cache, causal_attention, head_norm, input_projection, repeat_kv, split_heads};
use super::autocast::project;
use super::init::linear;
use super::rope::apply_rope;
pub use super::moe_config::AttentionExpertsConfig;
use crate::config::ModelConfig;

/// One attention expert: its own queries (with their bias and per-head norm, where the model
/// has them) and output, and its own keys and values unless they are shared.
#[derive(Module, Debug)]
pub struct AttentionExpert {
    pub q_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_proj: Option<Linear>,
    pub k_norm: Option<RmsNorm>,
    pub v_proj: Option<Linear>,
    pub o_proj: Linear,
}

#[derive(Module, Debug)]
pub struct AttentionExperts {
    /// The attention router W_attn (d_model -> E).
    pub gate: Linear,
    pub experts: Vec<AttentionExpert>,
    /// The shared key and value projections (`shared_kv`), and the keys' norm (Qwen3).
    pub k_proj: Option<Linear>,
    pub k_norm: Option<RmsNorm>,
    pub v_proj: Option<Linear>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    #[module(skip)]
    pub scores: ScoreOptions,
}

/// An expert's own key or value projection (it has one when they are not shared).
fn own(projection: &Option<Linear>) -> &Linear {
    projection.as_ref().expect("an expert without shared keys and values has its own")
}

/// A projection and the head norm after it.
type Projected<'a> = (&'a Linear, Option<&'a RmsNorm>);

impl AttentionExperts {
    pub fn new(config: &ModelConfig, experts: &AttentionExpertsConfig, scores: ScoreOptions, device: &Device) -> Self {
        let (d, q_dim) = (config.d_model, config.q_dim());
        let kv_dim = config.kv_heads() * config.head_dim();
        let (own_kv, shared_kv) = (!experts.shared_kv, experts.shared_kv);
        Self {
            gate: linear(d, experts.num_experts, device),
            experts: (0..experts.num_experts)
                .map(|_| AttentionExpert {
                    q_proj: input_projection(config, q_dim, device),
                    q_norm: head_norm(config, device),
                    k_proj: own_kv.then(|| input_projection(config, kv_dim, device)),
                    k_norm: own_kv.then(|| head_norm(config, device)).flatten(),
                    v_proj: own_kv.then(|| input_projection(config, kv_dim, device)),
                    o_proj: linear(q_dim, d, device),
                })
                .collect(),
            k_proj: shared_kv.then(|| input_projection(config, kv_dim, device)),
            k_norm: shared_kv.then(|| head_norm(config, device)).flatten(),
            v_proj: shared_kv.then(|| input_projection(config, kv_dim, device)),
            n_heads: config.n_heads,
            n_kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
            scores,
        }
    }

    /// Queries, keys or values of every expert, stacked as `[batch, heads, seq, head_dim]`
    /// (the shared projection's heads once, or each expert's in turn), each through its head
    /// norm if it has one.
    fn heads<'a>(&'a self, x: &Tensor<3>, shared: Option<Projected<'a>>, own: impl Fn(&'a AttentionExpert) -> Projected<'a>) -> Tensor<4> {
        let heads = |(proj, norm): Projected| {
            let t = split_heads(project(proj, x.clone()), self.head_dim);
            match norm {
                Some(norm) => norm.forward(t),
                None => t,
            }
        };
        match shared {
            Some(shared) => heads(shared),
            None => Tensor::cat(self.experts.iter().map(|e| heads(own(e))).collect(), 1),
        }
    }

    /// The soft mixture of attention experts, over cached keys and values as
    /// `Attention::forward_cached` (the cache holds the stacked, or shared, heads).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; cos, sin: `[seq, head_dim]` -> `[batch, seq, d_model]`
    pub fn forward_cached(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let [batch, seq, d_model] = x.dims();
        let num_experts = self.experts.len();
        let q_dim = self.n_heads * self.head_dim;
        let gates = softmax(self.gate.forward(x.clone()), 2); // [b, s, E]
        let q = apply_rope(self.heads(&x, None, |e| (&e.q_proj, e.q_norm.as_ref())), cos, sin); // [b, E*h, s, hd]
        let shared_k = self.k_proj.as_ref().map(|k| (k, self.k_norm.as_ref()));
        let k = apply_rope(self.heads(&x, shared_k, |e| (own(&e.k_proj), e.k_norm.as_ref())), cos, sin);
        let v = self.heads(&x, self.v_proj.as_ref().map(|v| (v, None)), |e| (own(&e.v_proj), None));
        let (mut k, mut v, causal) = append_to_cache(k, v, cache);
        if self.k_proj.is_some() {
            // Every expert reads the same heads: tile them once per expert.
            (k, v) = (k.repeat_dim(1, num_experts), v.repeat_dim(1, num_experts));
        }
        let group = self.n_heads / self.n_kv_heads;
        let out = causal_attention(q, repeat_kv(k, group), repeat_kv(v, group), causal, &self.scores);
        let out = out.swap_dims(1, 2).reshape([batch, seq, num_experts, q_dim]);
        let mut y = Tensor::<3>::zeros([batch, seq, d_model], &out.device());
        for (e, expert) in self.experts.iter().enumerate() {
            let weighted = out.clone().narrow(2, e, 1).reshape([batch, seq, q_dim]) * gates.clone().narrow(2, e, 1);
            y = y + project(&expert.o_proj, weighted);
        }
        y
    }
}
