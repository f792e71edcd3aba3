//! One pre-norm decoder block: x + attn(norm(x)), then h + ffn(norm(h)), where the FFN is
//! either the dense SwiGLU (`mlp`) or an MoE layer (`block_sparse_moe`), as in Mixtral.

use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::attention::Attention;
use super::attention_experts::AttentionExperts;
use super::ffn::FeedForward;
use super::moe::{MoeAux, MoeLayer, RoutingContext};
use super::moe_config::Routing;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    /// One attention, or (BAM) attention experts in its place.
    pub self_attn: Option<Attention>,
    pub attention_experts: Option<AttentionExperts>,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Option<FeedForward>,
    pub block_sparse_moe: Option<MoeLayer>,
}

impl Block {
    pub fn new(config: &ModelConfig, layer: usize, device: &Device) -> Self {
        let norm = || RmsNormConfig::new(config.d_model).with_epsilon(config.norm_eps).init(device);
        let moe = config.moe.as_ref().filter(|m| m.is_moe_layer(layer));
        let first_moe_layer = (0..config.n_layers).find(|&l| moe.is_some_and(|m| m.is_moe_layer(l)));
        Self {
            input_layernorm: norm(),
            self_attn: config.attention_experts.is_none().then(|| Attention::new(config, device)),
            attention_experts: config.attention_experts.as_ref().map(|a| AttentionExperts::new(config, a, device)),
            post_attention_layernorm: norm(),
            mlp: moe.is_none().then(|| FeedForward::new(config.d_model, config.d_ff, device)),
            block_sparse_moe: moe.map(|m| {
                let first_soft = matches!(m.routing, Routing::SampleTop1 { first_layer_soft: true, .. })
                    && first_moe_layer == Some(layer);
                MoeLayer::new(config.d_model, config.d_ff, m, first_soft, device)
            }),
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
        x + match (&self.self_attn, &self.attention_experts) {
            (_, Some(experts)) => experts.forward_cached(normed, cos, sin, cache),
            (Some(attention), None) => attention.forward_cached(normed, cos, sin, cache),
            (None, None) => unreachable!("a block has an attention or attention experts"),
        }
    }

    /// The FFN half: h + ffn(norm(h)), with the MoE layer's auxiliary outputs.
    pub fn feed_forward(&self, h: Tensor<3>, ctx: RoutingContext) -> (Tensor<3>, Option<MoeAux>) {
        let normed = self.post_attention_layernorm.forward(h.clone());
        match (&self.mlp, &self.block_sparse_moe) {
            (_, Some(moe)) => {
                let (y, aux) = moe.forward(normed, ctx);
                (h + y, Some(aux))
            }
            (Some(mlp), None) => (h + mlp.forward(normed), None),
            (None, None) => unreachable!("a block has a dense FFN or an MoE layer"),
        }
    }
}
