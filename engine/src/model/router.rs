//! The router: a linear map d_model -> E (no bias) and the gating functions of each routing
//! variant. BTX's MoE layer (Sukhbaatar et al. 2024, §2) is y = sum_i g_i(W x) FFN_i(x)
//! with g(Wx) = softmax(topk(Wx)): logits outside the top k are -inf, which equals Mixtral's
//! softmax-then-topk-renormalise.
//!
//! With k = 1 that rule gives every token the gate 1.0, so the language-model loss cannot
//! reach the router (only the load-balancing and z-losses train it). Switch routing uses
//! Switch Transformer's gate instead (Fedus et al. 2021): p_i(x), the softmax over all
//! E logits at the chosen expert, which the LM loss does train.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::softmax;

/// The experts chosen for each token, their gate values, and how many assignments an
/// expert may take (Switch's capacity; None = unlimited).
pub struct Selection {
    /// `[tokens, k]` expert ids.
    pub experts: Tensor<2, Int>,
    /// `[tokens, k]` gate values g_i (differentiable).
    pub gates: Tensor<2>,
    pub capacity: Option<usize>,
}

impl Selection {
    /// The gates as a dense `[tokens, E]` matrix (0 where an expert is not selected).
    pub fn dense_gates(&self, num_experts: usize) -> Tensor<2> {
        let [tokens, _] = self.gates.dims();
        Tensor::<2>::zeros([tokens, num_experts], &self.gates.device()).scatter(
            1,
            self.experts.clone(),
            self.gates.clone(),
            IndexingUpdateOp::Add,
        )
    }
}

/// softmax over the k largest logits: `topk_gates(logits [N, E], k)`.
pub fn topk_gates(logits: Tensor<2>, k: usize) -> Selection {
    let (top, experts) = logits.topk_with_indices(k, 1);
    Selection { experts, gates: softmax(top, 1), capacity: None }
}

/// Switch Transformer's top-1: the expert with the largest logit, gated by its probability
/// p_i(x) = softmax(logits)_i.
pub fn switch_gates(logits: Tensor<2>) -> Selection {
    let (gates, experts) = softmax(logits, 1).topk_with_indices(1, 1);
    Selection { experts, gates, capacity: None }
}

/// Every expert on every token, gated by softmax over all logits: top-E.
pub fn soft_gates(logits: Tensor<2>) -> Selection {
    let [tokens, num_experts] = logits.dims();
    let experts = Tensor::<1, Int>::arange(0..num_experts as i64, &logits.device()).unsqueeze_dim::<2>(0).repeat_dim(0, tokens);
    Selection { experts, gates: softmax(logits, 1), capacity: None }
}

/// Gumbel-softmax sample of one expert with a straight-through gate: the forward value is 1,
/// the gradient that of softmax((logits + gumbel) / tau) at the sampled expert.
pub fn sample_top1_gates(logits: Tensor<2>, tau: f64) -> Selection {
    let uniform = logits.random_like(burn::tensor::Distribution::Uniform(1e-9, 1.0));
    let gumbel = uniform.log().neg().log().neg();
    let soft = softmax((logits + gumbel) / tau, 1);
    let experts = soft.clone().argmax(1);
    let picked = soft.gather(1, experts.clone());
    Selection { experts, gates: picked.clone() - picked.detach() + 1.0, capacity: None }
}

/// Hard argmax with gate 1: sample-top-1 routing at inference.
pub fn argmax_gates(logits: Tensor<2>) -> Selection {
    let device = logits.device();
    let experts = logits.argmax(1);
    let [n, _] = experts.dims();
    Selection { experts, gates: Tensor::ones([n, 1], &device), capacity: None }
}

/// The temperature of sample-top-1 routing at a training step: max(tau_min, exp(-decay t)).
pub fn gumbel_temperature(step: usize, tau_min: f64, tau_decay: f64) -> f64 {
    (-tau_decay * step as f64).exp().max(tau_min)
}
