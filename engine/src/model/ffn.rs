//! The SwiGLU feed-forward network (Shazeer 2020): down(silu(gate(x)) * up(x)).
//! Its own module so that the MoE layer can use it as an expert and replace it per layer.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::init::linear;

#[derive(Module, Debug)]
pub struct FeedForward {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl FeedForward {
    pub fn new(d_model: usize, d_ff: usize, device: &Device) -> Self {
        let linear = |d_in, d_out| linear(d_in, d_out, device);
        Self {
            gate_proj: linear(d_model, d_ff),
            up_proj: linear(d_model, d_ff),
            down_proj: linear(d_ff, d_model),
        }
    }

    /// # Shapes
    /// - x: `[..., d_model]` -> `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
