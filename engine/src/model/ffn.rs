//! The SwiGLU feed-forward network (Shazeer 2020): down(silu(gate(x)) * up(x)).
//! Its own module so that the MoE layer can use it as an expert and replace it per layer.

use super::linear::Linear;
use burn::prelude::*;

use super::init::linear;
use super::autocast::project;
use crate::kernels::swiglu;

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
        let gated = swiglu(project(&self.gate_proj, x.clone()), project(&self.up_proj, x));
        project(&self.down_proj, gated)
    }
}
