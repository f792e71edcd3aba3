//! Auxiliary router losses, as pure functions of the router's outputs.

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// BTX's load-balancing loss for one layer (Sukhbaatar et al. 2024, after Switch Transformer,
/// Fedus et al. 2021):
/// L_LB = alpha * E * sum_i u_i p_i, where u_i is the mean over tokens of the routed gate
/// value g_i (zero where expert i was not selected) and p_i the mean of softmax(W x)_i.
///
/// # Shapes
/// - logits: `[tokens, E]`; gates: `[tokens, E]` (dense, zeros where not routed)
pub fn load_balancing_loss(logits: Tensor<2>, dense_gates: Tensor<2>, alpha: f64) -> Tensor<1> {
    let [_, experts] = logits.dims();
    let p = softmax(logits, 1).mean_dim(0);
    let u = dense_gates.mean_dim(0);
    (u * p).sum() * (alpha * experts as f64)
}

/// Router z-loss (ST-MoE, Zoph et al. 2022): coef * mean over tokens of logsumexp(logits)^2.
pub fn router_z_loss(logits: Tensor<2>, coef: f64) -> Tensor<1> {
    let max = logits.clone().max_dim(1).detach();
    let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
    lse.square().mean() * coef
}
