//! The training precision, and dynamic loss scaling for f16 (Micikevicius et al. 2018, §3.2):
//! f16's smallest normal number is 6e-5, so small gradients of activations would flush to
//! zero; the loss is multiplied by a scale S before the backward pass and the gradients
//! divided by S (in f32) before the update. When a gradient overflows (inf or NaN) the update
//! is skipped and S halves; after `GROWTH_INTERVAL` finite steps in a row S doubles. The
//! constants are PyTorch's `GradScaler` defaults.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// How a training run computes: `F32` everywhere, or `F16`: the projections and attention in
/// f16, the rest, the weights and the optimizer in f32 (`model::autocast`), with dynamic loss
/// scaling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn is_default(&self) -> bool {
        *self == Precision::F32
    }

    /// The dtype the autocast scope computes in (`None`: nothing is cast).
    pub fn compute_dtype(&self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(DType::F16),
        }
    }

    /// Refuses f16 on a device whose backend cannot compute in it, naming the device.
    pub fn check_device(&self, device: &Device, description: &str) -> Result<()> {
        if let Some(dtype) = self.compute_dtype()
            && !device.supports_dtype(dtype)
        {
            bail!(
                "precision F16 needs f16 arithmetic, which {description} does not offer (on WGPU: the \
                 adapter's SHADER_F16 feature); train with precision F32 on it"
            );
        }
        Ok(())
    }
}

/// How a run holds the weights it does not train (`frozen_precision`): `F32` (the default),
/// `F16` or `BF16`, half the bytes. Only the frozen projections (every `Linear` weight outside
/// the trainable set but the routers, which stay f32 as in `Precision`) are held so: the
/// embedding and the LM head stay f32 for the fused head's kernel, norms and biases are small.
/// On the CPU backend a half weight is read back to f32 one matrix product at a time (the
/// arithmetic stays f32; only the weight's rounding differs); elsewhere the product runs in the
/// weight's dtype, as PyTorch computes on a half-precision base model, with dynamic loss
/// scaling for f16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum FrozenPrecision {
    #[default]
    F32,
    F16,
    BF16,
}

impl FrozenPrecision {
    pub fn is_default(&self) -> bool {
        *self == FrozenPrecision::F32
    }

    /// The dtype frozen projections are held in (`None`: as trained, f32).
    pub fn dtype(&self) -> Option<DType> {
        match self {
            FrozenPrecision::F32 => None,
            FrozenPrecision::F16 => Some(DType::F16),
            FrozenPrecision::BF16 => Some(DType::BF16),
        }
    }

    /// Whether the frozen weight of checkpoint name `name` (a projection's) is one this holds
    /// in half precision: not a router (routing in low precision is unstable: Fedus et al.
    /// 2021, §2.4), not the LM head or the embedding (the fused head's kernel reads f32).
    pub fn holds(name: &str) -> bool {
        !crate::train::trainable::Trainable::Routers.trains(name) && !name.starts_with("lm_head.") && name != "model.embed_tokens.weight"
    }

    /// Bytes a frozen projection weight takes.
    pub fn bytes(&self) -> f64 {
        if self.is_default() { 4.0 } else { 2.0 }
    }

    /// Whether the step's backward pass runs through f16 arithmetic on `device` (then the loss
    /// is scaled): the frozen products compute in f16 off the CPU backend.
    pub fn computes_in_f16(&self, device: &Device) -> bool {
        *self == FrozenPrecision::F16 && !crate::device::is_cpu(device)
    }

    /// Refuses a dtype the device cannot hold and compute in, naming the device and what to use.
    pub fn check_device(&self, device: &Device, description: &str) -> Result<()> {
        if let Some(dtype) = self.dtype()
            && !crate::device::is_cpu(device)
            && !device.supports_dtype(dtype)
        {
            bail!(
                "frozen_precision {self:?} needs {dtype:?} arithmetic, which {description} does not offer (on WGPU: \
                 f16 needs the adapter's SHADER_F16 feature, and bf16 is not offered); use `frozen_precision: {}` on it",
                if dtype == DType::BF16 && device.supports_dtype(DType::F16) { "F16" } else { "F32" }
            );
        }
        Ok(())
    }
}

pub const INITIAL_SCALE: f64 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;

/// The loss scale and its memory, saved with each checkpoint so a resumed run scales as an
/// uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub finite_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale { scale: INITIAL_SCALE, finite_steps: 0 }
    }
}

impl LossScale {
    /// Records one step's gradients: `Ok` if they are finite (the update may be applied),
    /// else the reason the update is skipped. The scale halves on an overflow and doubles
    /// after `GROWTH_INTERVAL` finite steps.
    pub fn update(&mut self, grad_norm: f64) -> std::result::Result<(), String> {
        if grad_norm.is_finite() {
            self.finite_steps += 1;
            if self.finite_steps >= GROWTH_INTERVAL {
                self.scale *= GROWTH;
                self.finite_steps = 0;
            }
            return Ok(());
        }
        let overflowed = self.scale;
        self.scale = (self.scale * BACKOFF).max(1.0);
        self.finite_steps = 0;
        Err(format!("f16 gradients overflowed at loss scale {overflowed}; the scale is now {}", self.scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_a_run_of_finite_steps() {
        let mut s = LossScale::default();
        assert!(s.update(f64::INFINITY).is_err());
        assert!(s.update(f64::NAN).is_err());
        assert_eq!(s.scale, INITIAL_SCALE / 4.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(1.0).is_ok());
        }
        assert_eq!(s.scale, INITIAL_SCALE / 4.0);
        assert!(s.update(1.0).is_ok());
        assert_eq!((s.scale, s.finite_steps), (INITIAL_SCALE / 2.0, 0));
    }
}
