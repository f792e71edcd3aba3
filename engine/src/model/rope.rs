//! Rotary position embedding (RoPE, Su et al. 2021) in Hugging Face's "rotate half" layout:
//! each head's vector is split into two halves (x1, x2) and the pair (x1_i, x2_i) is rotated
//! by angle t * theta^(-2i/head_dim). Using HF's layout means q/k projection weights import
//! and export without permutation. Optionally the inverse frequencies are rescaled to stretch
//! the context (`RopeScaling`, as transformers' `rope_parameters` name them).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// How the inverse frequencies theta^(-2i/d) are rescaled (absent: not at all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (positions stretched by it).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent rescaling (transformers' `rope_type: "llama3"`):
    /// wavelengths 2 pi / f longer than `original_max_position_embeddings / low_freq_factor`
    /// are divided by `factor`, those shorter than `... / high_freq_factor` kept, and those
    /// between interpolated smoothly: with s = (L / wavelength - low) / (high - low),
    /// f' = (1 - s) f / factor + s f.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

impl RopeScaling {
    /// The rescaled inverse frequency of `inv_freq`.
    pub fn rescale(&self, inv_freq: f64) -> f64 {
        match *self {
            Self::Linear { factor } => inv_freq / factor,
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let context = original_max_position_embeddings as f64;
                let wavelength = 2.0 * std::f64::consts::PI / inv_freq;
                if wavelength < context / high_freq_factor {
                    inv_freq
                } else if wavelength > context / low_freq_factor {
                    inv_freq / factor
                } else {
                    let s = (context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - s) * inv_freq / factor + s * inv_freq
                }
            }
        }
    }

    /// Checks the factors (the error says which and why).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Linear { factor } if !(factor > 0.0 && factor.is_finite()) => Err(format!("`factor` must be > 0, found {factor}")),
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                if !(factor > 0.0 && low_freq_factor > 0.0 && high_freq_factor > low_freq_factor && original_max_position_embeddings > 0) {
                    return Err(format!(
                        "needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0; found factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original_max_position_embeddings {original_max_position_embeddings}"
                    ));
                }
                Ok(())
            }
            Self::Linear { .. } => Ok(()),
        }
    }
}

/// Cosine and sine tables for positions `0..seq_len`, each `[seq_len, head_dim]`.
pub fn rope_tables(seq_len: usize, head_dim: usize, theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    rope_tables_from(0, seq_len, head_dim, theta, None, device)
}

/// Cosine and sine tables for positions `start..start + seq_len` (a decoding step needs only
/// its own position's rows).
pub fn rope_tables_from(start: usize, seq_len: usize, head_dim: usize, theta: f64, scaling: Option<&RopeScaling>, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
        .map(|f| scaling.map_or(f, |s| s.rescale(f)) as f32)
        .collect();
    let mut angles = Vec::with_capacity(seq_len * head_dim);
    for t in start..start + seq_len {
        // [freqs, freqs]: both halves of a pair share one angle.
        for _ in 0..2 {
            angles.extend(inv_freq.iter().map(|f| t as f32 * f));
        }
    }
    let angles = Tensor::<2>::from_data(TensorData::new(angles, [seq_len, head_dim]), device);
    (angles.clone().cos(), angles.sin())
}

/// Applies RoPE to `x`.
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`
/// - cos, sin: `[seq, head_dim]`
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [_, _, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.clone().unsqueeze::<4>();
    let sin = sin.clone().unsqueeze::<4>();
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::RopeScaling;

    /// Llama 3.1's settings (head_dim 128, theta 500000): inverse frequencies i = 20 (short
    /// wavelength: kept), 30 and 33 (between: interpolated) and 40 (long: divided by 8),
    /// against transformers' `_compute_llama3_parameters` evaluated in Python.
    #[test]
    fn llama3_scaling_matches_transformers() {
        let scaling = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
        let inv_freq = |i: usize| 500_000f64.powf(-((2 * i) as f64) / 128.0);
        for (i, expected) in [(20, 0.016560440080994446), (30, 0.0013718935677611381), (33, 0.00031269375038406517), (40, 3.428102195952591e-05)] {
            let got = scaling.rescale(inv_freq(i));
            assert!((got - expected).abs() <= 1e-12 * expected, "i = {i}: {got} vs {expected}");
        }
        // Continuous where the interpolation meets the kept and the divided frequencies.
        let boundary = |wavelength: f64| 2.0 * std::f64::consts::PI / wavelength;
        for (f, kept) in [(boundary(2048.0), true), (boundary(8192.0), false)] {
            let expected = if kept { f } else { f / 8.0 };
            assert!((scaling.rescale(f) - expected).abs() < 1e-12 * f, "{f}");
        }
        assert_eq!(RopeScaling::Linear { factor: 4.0 }.rescale(0.5), 0.125);
        assert!(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 4.0, high_freq_factor: 1.0, original_max_position_embeddings: 8192 }.validate().is_err());
    }
}
