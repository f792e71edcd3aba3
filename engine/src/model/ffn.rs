//! The gated feed-forward network (Shazeer 2020, "GLU Variants Improve Transformer"):
//! SwiGLU, down(silu(gate(x)) * up(x)), or Gemma's GeGLU, down(gelu_tanh(gate(x)) * up(x)).
//! Its own module so that the MoE layer can use it as an expert and replace it per layer.

use super::linear::Linear;
use burn::prelude::*;

use super::init::linear;
use super::autocast::project;
use crate::kernels::swiglu;
use super::gemma::gelu_tanh;

#[derive(Module, Debug)]
pub struct FeedForward {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// GeGLU with GELU's tanh approximation (Gemma's `gelu_pytorch_tanh`) in place of SwiGLU.
    pub geglu: bool,
}

impl FeedForward {
    pub fn new(d_model: usize, d_ff: usize, device: &Device) -> Self {
        let linear = |d_in, d_out| linear(d_in, d_out, device);
        Self {
            gate_proj: linear(d_model, d_ff),
            up_proj: linear(d_model, d_ff),
            down_proj: linear(d_ff, d_model),
            geglu: false,
        }
    }

    /// The same network with GeGLU (`geglu` true) or SwiGLU.
    pub fn with_geglu(self, geglu: bool) -> Self {
        Self { geglu, ..self }
    }

    /// # Shapes
    /// - x: `[..., d_model]` -> `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (gate, up) = (project(&self.gate_proj, x.clone()), project(&self.up_proj, x));
        let gated = if self.geglu { gelu_tanh(gate) * up } else { swiglu(gate, up) };
        project(&self.down_proj, gated)
    }
}
