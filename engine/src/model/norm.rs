//! RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g, with Llama's gain g = weight
//! (starting at 1) or Gemma's g = 1 + weight (starting at 0, `unit_offset`). Its parameter is
//! `gamma`, as Burn's `RmsNorm` names it, so checkpoints store it as `...norm.weight` with the
//! value transformers stores (Gemma's weight, not 1 + weight).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub gamma: Param<Tensor<1>>,
    pub epsilon: f64,
    /// Gemma: the gain is 1 + gamma.
    pub unit_offset: bool,
}

impl RmsNorm {
    /// A norm over `width` features, its gain starting at 1 (gamma 1, or 0 with the offset).
    pub fn new(width: usize, epsilon: f64, unit_offset: bool, device: &Device) -> Self {
        let start = if unit_offset { 0.0 } else { 1.0 };
        Self { gamma: Param::from_tensor(Tensor::full([width], start, device)), epsilon, unit_offset }
    }

    /// # Shapes
    /// - x: `[..., width]` -> `[..., width]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + self.epsilon).sqrt();
        let gain = if self.unit_offset { self.gamma.val() + 1.0 } else { self.gamma.val() };
        (x / rms.cast(dtype)) * gain.unsqueeze()
    }
}
