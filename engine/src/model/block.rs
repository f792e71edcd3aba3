//! One pre-norm decoder block: x + attn(norm(x)), then h + ffn(norm(h)), where the FFN is
//! either the dense SwiGLU (`mlp`) or an MoE layer (`block_sparse_moe`), as in Mixtral.
//! Gemma's blocks norm each sublayer's output too ("sandwich" norms, `model::gemma`):
//! x + post_attn(attn(input(x))), then h + post_ffn(ffn(pre_ffn(h))).

use burn::prelude::*;

use super::attention::Attention;
use super::attention_experts::AttentionExperts;
use super::ffn::FeedForward;
use super::gemma::ScoreOptions;
use super::moe::{MoeAux, MoeLayer, RoutingContext};
use super::moe_config::Routing;
use super::norm::RmsNorm;
use super::projection_moe::ProjectionMoe;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    /// One attention, or (BAM) attention experts in its place.
    pub self_attn: Option<Attention>,
    pub attention_experts: Option<AttentionExperts>,
    /// Llama: the FFN's input norm. Gemma: the attention output's norm.
    pub post_attention_layernorm: RmsNorm,
    /// Gemma: the FFN's input norm and its output's norm.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
    pub mlp: Option<FeedForward>,
    pub block_sparse_moe: Option<MoeLayer>,
    /// MixtureKit's BTX: a router per FFN projection, in place of `block_sparse_moe`.
    pub projection_moe: Option<ProjectionMoe>,
    /// A local (sliding-window) layer: it rotates with the local RoPE tables.
    pub local: bool,
}

impl Block {
    pub fn new(config: &ModelConfig, layer: usize, device: &Device) -> Self {
        let gemma = config.gemma.as_ref();
        let norm = || RmsNorm::new(config.d_model, config.norm_eps, gemma.is_some(), device);
        let any_moe = config.moe.as_ref().filter(|m| m.is_moe_layer(layer));
        let moe = any_moe.filter(|m| m.routed_projections.is_empty());
        let projection_moe = any_moe.filter(|m| !m.routed_projections.is_empty());
        let first_moe_layer = (0..config.n_layers).find(|&l| moe.is_some_and(|m| m.is_moe_layer(l)));
        let scores = ScoreOptions::of_layer(gemma, layer);
        Self {
            input_layernorm: norm(),
            self_attn: config.attention_experts.is_none().then(|| Attention::new(config, device).with_scores(scores)),
            attention_experts: config.attention_experts.as_ref().map(|a| AttentionExperts::new(config, a, scores, device)),
            post_attention_layernorm: norm(),
            pre_feedforward_layernorm: gemma.map(|_| norm()),
            post_feedforward_layernorm: gemma.map(|_| norm()),
            mlp: any_moe.is_none().then(|| FeedForward::new(config.d_model, config.d_ff, device).with_geglu(gemma.is_some())),
            block_sparse_moe: moe.map(|m| {
                let first_soft = matches!(m.routing, Routing::SampleTop1 { first_layer_soft: true, .. })
                    && first_moe_layer == Some(layer);
                MoeLayer::new(config.d_model, config.d_ff, m, first_soft, device).with_geglu(gemma.is_some())
            }),
            projection_moe: projection_moe.map(|m| ProjectionMoe::new(config.d_model, config.d_ff, m, gemma.is_some(), device)),
            local: scores.window.is_some(),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, ctx: RoutingContext) -> (Tensor<3>, Option<MoeAux>) {
        self.feed_forward(self.attend(x, cos, sin), ctx)
    }

    /// The attention half: x + attn(norm(x)).
    pub fn attend(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<3> {
        self.attend_cached(x, cos, sin, &mut None)
    }

    /// The attention half over cached keys and values (see `Attention::forward_cached`).
    pub fn attend_cached(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, cache: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attended = match (&self.self_attn, &self.attention_experts) {
            (_, Some(experts)) => experts.forward_cached(normed, cos, sin, cache),
            (Some(attention), None) => attention.forward_cached(normed, cos, sin, cache),
            (None, None) => unreachable!("a block has an attention or attention experts"),
        };
        match self.pre_feedforward_layernorm {
            Some(_) => x + self.post_attention_layernorm.forward(attended),
            None => x + attended,
        }
    }

    /// The norm of the FFN's input (what a router sees): Gemma's pre-FFN norm, Llama's
    /// post-attention one.
    pub fn ffn_input_norm(&self) -> &RmsNorm {
        self.pre_feedforward_layernorm.as_ref().unwrap_or(&self.post_attention_layernorm)
    }

    /// The FFN half: h + ffn(norm(h)), with the MoE layer's auxiliary outputs.
    pub fn feed_forward(&self, h: Tensor<3>, ctx: RoutingContext) -> (Tensor<3>, Option<MoeAux>) {
        let normed = self.ffn_input_norm().forward(h.clone());
        let (y, aux) = match (&self.mlp, &self.block_sparse_moe, &self.projection_moe) {
            (_, Some(moe), _) => {
                let (y, aux) = moe.forward(normed, ctx);
                (y, Some(aux))
            }
            (_, None, Some(moe)) => {
                let (y, aux) = moe.forward(normed, ctx);
                (y, Some(aux))
            }
            (Some(mlp), None, None) => (mlp.forward(normed), None),
            (None, None, None) => unreachable!("a block has a dense FFN or an MoE layer"),
        };
        match &self.post_feedforward_layernorm {
            Some(norm) => (h + norm.forward(y), aux),
            None => (h + y, aux),
        }
    }
}
