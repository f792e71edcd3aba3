//! The Mixture-of-Experts layer: a router and E SwiGLU experts replacing one FFN.
//! Field names follow Hugging Face's Mixtral (`block_sparse_moe.gate`, `experts.N`).
//!
//! Dispatch computes only what is routed. The (token, expert) assignments are grouped by
//! expert on the device: a one-hot of the assignments and its cumulative sum give each
//! assignment's position within its expert, and the per-expert counts (E integers, the only
//! host read) give each expert's slice. Each expert then runs on its own rows only, and the
//! gate-weighted results are scatter-added back. Top-2 of E costs about 2 FFNs, not E.

use super::linear::Linear;
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::{log_softmax, softmax};

use super::ffn::FeedForward;
use super::init::linear;
use super::load_balance::{load_balancing_loss, router_z_loss};
use super::moe_config::{Balance, MoeConfig, Routing};
use super::router::{Selection, argmax_gates, gumbel_temperature, sample_top1_gates, soft_gates, switch_gates, topk_gates};

/// What the forward pass needs to know about the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutingContext {
    /// Training (sample-top-1 samples; otherwise it takes the argmax).
    pub training: bool,
    /// The optimizer step (the Gumbel temperature schedule).
    pub step: usize,
}

/// The auxiliary outputs of one MoE layer.
pub struct MoeAux {
    /// Load-balancing plus z-loss, already weighted.
    pub loss: Tensor<1>,
    /// Tokens processed by each expert (after capacity drops); read on the host anyway by
    /// the dispatch, so logging it costs nothing.
    pub expert_tokens: Vec<usize>,
    /// Token-expert assignments dropped for capacity.
    pub dropped: usize,
    /// All token-expert assignments.
    pub assignments: usize,
    /// Assignments each expert was chosen for, before capacity drops (Mixtral's balancing
    /// counts these).
    pub requested: Vec<usize>,
    /// `[E]`: the router probabilities softmax(W x) summed over this layer's tokens; computed
    /// only for Mixtral's pooled balancing.
    pub router_prob_sum: Option<Tensor<1>>,
    /// Tokens this layer routed.
    pub tokens: usize,
    /// `[1]`: the router's entropy H(softmax(W x)) summed over the tokens (nats; ln E when
    /// the router cannot tell experts apart, 0 when it is sure); evaluation only.
    pub router_entropy_sum: Option<Tensor<1>>,
    /// `[tokens, k]`: the experts each token was routed to (top-k: largest gate first; soft:
    /// every expert). A device tensor, read only by whoever shows routing per token.
    pub experts: Tensor<2, Int>,
}

#[derive(Module, Debug)]
pub struct MoeLayer {
    /// The router W (d_model -> E); Mixtral calls it `gate`.
    pub gate: Linear,
    pub experts: Vec<FeedForward>,
    /// The always-active shared expert (`MoeConfig::shared_expert`).
    pub shared_expert: Option<FeedForward>,
    #[module(skip)]
    pub config: MoeConfig,
    /// Soft routing in this layer whatever the config says (sample-top-1's first layer).
    pub force_soft: bool,
}

impl MoeLayer {
    pub fn new(d_model: usize, d_ff: usize, config: &MoeConfig, force_soft: bool, device: &Device) -> Self {
        let expert_d_ff = config.expert_d_ff.unwrap_or(d_ff);
        let mut experts: Vec<FeedForward> =
            (0..config.num_experts).map(|_| FeedForward::new(d_model, expert_d_ff, device)).collect();
        let mut shared_expert = config.shared_expert.then(|| FeedForward::new(d_model, d_ff, device));
        if config.freeze_experts {
            experts = experts.into_iter().map(|e| e.no_grad()).collect();
            shared_expert = shared_expert.map(|e| e.no_grad());
        }
        Self {
            gate: linear(d_model, config.num_experts, device),
            experts,
            shared_expert,
            config: config.clone(),
            force_soft,
        }
    }

    /// The same layer with GeGLU experts (`geglu` true: Gemma's) or SwiGLU ones.
    pub fn with_geglu(self, geglu: bool) -> Self {
        Self {
            experts: self.experts.into_iter().map(|e| e.with_geglu(geglu)).collect(),
            shared_expert: self.shared_expert.map(|e| e.with_geglu(geglu)),
            ..self
        }
    }

    fn routing(&self) -> Routing {
        if self.force_soft { Routing::Soft } else { self.config.routing.clone() }
    }

    /// y = sum_i g_i(x) FFN_i(x) over the experts the router selects (Sukhbaatar et al.
    /// 2024, §2), plus FFN_shared(x) with a shared expert. Every routing mode is a selection
    /// followed by the same dispatch.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, ctx: RoutingContext) -> (Tensor<3>, MoeAux) {
        let [batch, seq, d_model] = x.dims();
        let x = x.reshape([batch * seq, d_model]);
        let logits = self.gate.forward(x.clone()); // [N, E]
        let selection = self.select(logits.clone(), ctx);
        let mut dispatched = self.dispatch(x.clone(), &selection);
        if let Some(shared) = &self.shared_expert {
            dispatched.output = dispatched.output + shared.forward(x);
        }

        let mut loss = Tensor::<1>::zeros([1], &logits.device());
        // Mixtral's balancing pools every layer: the model adds it (LanguageModel::training_loss),
        // from these sums; nothing else needs them.
        let pooled = self.config.balance == Balance::Mixtral && self.config.load_balance > 0.0;
        let router_prob_sum = pooled.then(|| softmax(logits.clone(), 1).sum_dim(0).reshape([self.experts.len()]));
        let router_entropy_sum = (!ctx.training).then(|| {
            let log_p = log_softmax(logits.clone(), 1);
            (log_p.clone().exp() * log_p).sum().neg()
        });
        if self.config.load_balance > 0.0 && self.config.balance == Balance::PerLayer {
            loss = loss + load_balancing_loss(logits.clone(), selection.dense_gates(self.experts.len()), self.config.load_balance);
        }
        if self.config.router_z_loss > 0.0 {
            loss = loss + router_z_loss(logits, self.config.router_z_loss);
        }
        let aux = MoeAux {
            requested: dispatched.requested,
            router_prob_sum,
            router_entropy_sum,
            tokens: batch * seq,
            experts: selection.experts.clone(),
            loss,
            expert_tokens: dispatched.expert_tokens,
            dropped: dispatched.dropped,
            assignments: dispatched.assignments,
        };
        (dispatched.output.reshape([batch, seq, d_model]), aux)
    }

    /// The routing decision: which experts each token goes to, with which gates, and how many
    /// assignments each expert takes. Adding a routing mode means adding a case here.
    fn select(&self, logits: Tensor<2>, ctx: RoutingContext) -> Selection {
        let [tokens, num_experts] = logits.dims();
        match self.routing() {
            Routing::TopK => topk_gates(logits, self.config.top_k),
            Routing::Switch { capacity_factor } => {
                let capacity = (capacity_factor * tokens as f64 / num_experts as f64).ceil() as usize;
                Selection { capacity: Some(capacity.max(1)), ..switch_gates(logits) }
            }
            Routing::Soft => soft_gates(logits),
            Routing::SampleTop1 { tau_min, tau_decay, .. } if ctx.training => {
                sample_top1_gates(logits, gumbel_temperature(ctx.step, tau_min, tau_decay))
            }
            Routing::SampleTop1 { .. } => argmax_gates(logits),
        }
    }

    /// Runs each expert on its own tokens only and combines the gate-weighted results
    /// (`dispatch`).
    fn dispatch(&self, x: Tensor<2>, selection: &Selection) -> Dispatched {
        let d_model = x.dims()[1];
        dispatch(x, selection, self.experts.len(), d_model, |e, rows| self.experts[e].forward(rows))
    }
}

/// Runs expert e (`run(e, rows)`, `[rows, d_in]` -> `[rows, d_out]`) on its own tokens only
/// and combines the gate-weighted results: sum_i g_i(x) E_i(x) per token. With `capacity`, an
/// expert takes at most that many assignments, in token order; the overflow is dropped (it
/// contributes nothing). Shared by the FFN experts and MixtureKit's routed projections.
///
/// # Shapes
/// - x: `[N, d_in]`; selection: `[N, k]` -> output `[N, d_out]`
pub(crate) fn dispatch(x: Tensor<2>, selection: &Selection, num_experts: usize, d_out: usize, run: impl Fn(usize, Tensor<2>) -> Tensor<2>) -> Dispatched {
    let capacity = selection.capacity;
    let device = x.device();
    let [tokens, _] = x.dims();
    let [_, k] = selection.experts.dims();
    let assignments = tokens * k;

    // Assignment a = token * k + slot, in token order.
    let expert_of = selection.experts.clone().reshape([assignments]);
    let gate_of = selection.gates.clone().reshape([assignments]);
    let one_hot: Tensor<2, Int> = if num_experts == 1 {
        Tensor::ones([assignments, 1], &device) // one_hot needs two classes or more
    } else {
        expert_of.clone().one_hot(num_experts) // [A, E]
    };
    // Position of each assignment within its expert: 0, 1, 2, ... in token order.
    let position = ((one_hot.clone().cumsum(0) - 1) * one_hot.clone()).sum_dim(1).reshape([assignments]);
    let wanted: Vec<i64> = one_hot.sum_dim(0).into_data().convert::<i64>().try_to_vec().expect("int counts");
    let counts: Vec<usize> = wanted.iter().map(|&c| capacity.map_or(c as usize, |cap| (c as usize).min(cap))).collect();
    let kept: usize = counts.iter().sum();
    let mut offsets = vec![0i64; num_experts];
    for e in 1..num_experts {
        offsets[e] = offsets[e - 1] + counts[e - 1] as i64;
    }

    // Destination row of each assignment in expert-sorted order; dropped ones go to an
    // extra trash row `kept`.
    let offsets = Tensor::<1, Int>::from_data(TensorData::new(offsets, [num_experts]), &device);
    let mut dest = offsets.select(0, expert_of) + position.clone();
    if let Some(cap) = capacity {
        let over = position.greater_equal_elem(cap as i64);
        dest = dest.mask_fill(over, kept as i64);
    }
    let token_of = Tensor::<1, Int>::arange(0..assignments as i64, &device).div_scalar(k as i64);
    let row_token = Tensor::<1, Int>::zeros([kept + 1], &device)
        .scatter(0, dest.clone(), token_of, IndexingUpdateOp::Add)
        .narrow(0, 0, kept);
    let row_gate = Tensor::<1>::zeros([kept + 1], &device)
        .scatter(0, dest, gate_of, IndexingUpdateOp::Add)
        .narrow(0, 0, kept);

    let sorted = x.select(0, row_token.clone()); // [kept, d_model]
    let mut outputs = Vec::with_capacity(num_experts);
    let mut start = 0;
    for (e, &count) in counts.iter().enumerate() {
        if count > 0 {
            outputs.push(run(e, sorted.clone().narrow(0, start, count)));
        }
        start += count;
    }
    let output = if outputs.is_empty() {
        Tensor::zeros([tokens, d_out], &device)
    } else {
        let weighted = Tensor::cat(outputs, 0) * row_gate.unsqueeze_dim(1);
        Tensor::<2>::zeros([tokens, d_out], &device).select_assign(0, row_token, weighted, IndexingUpdateOp::Add)
    };
    let requested = wanted.iter().map(|&c| c as usize).collect();
    Dispatched { output, expert_tokens: counts, requested, dropped: assignments - kept, assignments }
}

pub(crate) struct Dispatched {
    pub output: Tensor<2>,
    pub expert_tokens: Vec<usize>,
    pub requested: Vec<usize>,
    pub dropped: usize,
    pub assignments: usize,
}
