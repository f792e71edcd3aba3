//! The router: a linear map d_model -> E (no bias) and the gating functions of each routing
//! variant. BTX's MoE layer is y = sum_i g_i(W x) FFN_i(x) with g(Wx) = softmax(topk(Wx)):
//! logits outside the top k are -inf, which equals Mixtral's softmax-then-topk-renormalise.

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// The experts chosen for each token and their gate values.
pub struct Selection {
    /// `[tokens, k]` expert ids.
    pub experts: Tensor<2, Int>,
    /// `[tokens, k]` gate values g_i (differentiable).
    pub gates: Tensor<2>,
}

/// softmax over the k largest logits: `topk_gates(logits [N, E], k)`.
pub fn topk_gates(logits: Tensor<2>, k: usize) -> Selection {
    let (top, experts) = logits.topk_with_indices(k, 1);
    Selection { experts, gates: softmax(top, 1) }
}

/// Gumbel-softmax sample of one expert with a straight-through gate: the forward value is 1,
/// the gradient that of softmax((logits + gumbel) / tau) at the sampled expert.
pub fn sample_top1_gates(logits: Tensor<2>, tau: f64) -> Selection {
    let uniform = logits.random_like(burn::tensor::Distribution::Uniform(1e-9, 1.0));
    let gumbel = uniform.log().neg().log().neg();
    let soft = softmax((logits + gumbel) / tau, 1);
    let experts = soft.clone().argmax(1);
    let picked = soft.gather(1, experts.clone());
    Selection { experts, gates: picked.clone() - picked.detach() + 1.0 }
}

/// Hard argmax with gate 1: sample-top-1 routing at inference.
pub fn argmax_gates(logits: Tensor<2>) -> Selection {
    let device = logits.device();
    let experts = logits.argmax(1);
    let [n, _] = experts.dims();
    Selection { experts, gates: Tensor::ones([n, 1], &device) }
}

/// The temperature of sample-top-1 routing at a training step: max(tau_min, exp(-decay t)).
pub fn gumbel_temperature(step: usize, tau_min: f64, tau_decay: f64) -> f64 {
    (-tau_decay * step as f64).exp().max(tau_min)
}
