//! Rotary position embedding (RoPE, Su et al. 2021) in Hugging Face's "rotate half" layout:
//! each head's vector is split into two halves (x1, x2) and the pair (x1_i, x2_i) is rotated
//! by angle t * theta^(-2i/head_dim). Using HF's layout means q/k projection weights import
//! and export without permutation.

use burn::prelude::*;

/// Cosine and sine tables for positions `0..seq_len`, each `[seq_len, head_dim]`.
pub fn rope_tables(seq_len: usize, head_dim: usize, theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    rope_tables_from(0, seq_len, head_dim, theta, device)
}

/// Cosine and sine tables for positions `start..start + seq_len` (a decoding step needs only
/// its own position's rows).
pub fn rope_tables_from(start: usize, seq_len: usize, head_dim: usize, theta: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64) as f32)
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
