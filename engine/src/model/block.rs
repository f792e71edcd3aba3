//! One pre-norm decoder block: x + attn(norm(x)), then h + ffn(norm(h)).

use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::attention::Attention;
use super::ffn::FeedForward;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: FeedForward,
}

impl Block {
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let norm = || RmsNormConfig::new(config.d_model).with_epsilon(config.norm_eps).init(device);
        Self {
            input_layernorm: norm(),
            self_attn: Attention::new(config, device),
            post_attention_layernorm: norm(),
            mlp: FeedForward::new(config.d_model, config.d_ff, device),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), cos, sin);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}
