//! MixtureKit's BTX layer (Nile-Chat's MoE): a router per FFN projection instead of one per
//! FFN. Each routed projection P has E expert matrices and its own router W_P, and mixes on
//! its own input:
//!
//!   g = sum_{s in topk(x W_gate)} w_s x G_s,   u = sum_{s in topk(x W_up)} w'_s x U_s,
//!   h = act(g) * u,                            y = sum_{s in topk(h W_down)} w''_s h D_s,
//!
//! w = softmax over the k selected router logits (the engine's `TopK`, MixtureKit's
//! `_dispatch`). A projection that is not routed is one plain matrix (the experts' average
//! in a MixtureKit build). Routing is per token, without capacity.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::autocast::project;
use super::gemma::gelu_tanh;
use super::init::linear;
use super::linear::Linear;
use super::load_balance::load_balancing_loss;
use super::moe::{MoeAux, RoutingContext, dispatch};
use super::moe_config::{MoeConfig, RoutedProjection};
use super::router::topk_gates;
use crate::kernels::swiglu;

/// One FFN projection: routed experts behind their router, or one plain matrix.
#[derive(Module, Debug)]
pub struct ProjectionExperts {
    /// The router W_P (d_in -> E); None for a plain projection.
    pub gate: Option<Linear>,
    pub experts: Vec<Linear>,
    pub plain: Option<Linear>,
}

impl ProjectionExperts {
    fn new(d_in: usize, d_out: usize, routed: bool, num_experts: usize, device: &Device) -> Self {
        Self {
            gate: routed.then(|| linear(d_in, num_experts, device)),
            experts: if routed { (0..num_experts).map(|_| linear(d_in, d_out, device)).collect() } else { Vec::new() },
            plain: (!routed).then(|| linear(d_in, d_out, device)),
        }
    }

    /// # Shapes
    /// - x: `[N, d_in]` -> `[N, d_out]`, and the router's auxiliary outputs if routed
    fn forward(&self, x: Tensor<2>, config: &MoeConfig, routers: usize, ctx: RoutingContext) -> (Tensor<2>, Option<MoeAux>) {
        let (Some(gate), None) = (&self.gate, &self.plain) else {
            return (project(self.plain.as_ref().expect("a plain projection"), x), None);
        };
        let [tokens, _] = x.dims();
        let d_out = self.experts[0].weight.dims()[1];
        let logits = project(gate, x.clone());
        let selection = topk_gates(logits.clone(), config.top_k);
        let dispatched = dispatch(x, &selection, self.experts.len(), d_out, |e, rows| project(&self.experts[e], rows));
        // MixtureKit's alpha / routers per router: the layer's routers share one weight.
        let mut loss = Tensor::<1>::zeros([1], &logits.device());
        if config.load_balance > 0.0 {
            loss = loss + load_balancing_loss(logits.clone(), selection.dense_gates(self.experts.len()), config.load_balance / routers as f64);
        }
        let router_entropy_sum = (!ctx.training).then(|| {
            let p = softmax(logits, 1);
            (p.clone() * p.log()).sum().neg()
        });
        let aux = MoeAux {
            loss,
            expert_tokens: dispatched.expert_tokens,
            dropped: dispatched.dropped,
            assignments: dispatched.assignments,
            requested: dispatched.requested,
            router_prob_sum: None,
            tokens,
            router_entropy_sum,
            experts: selection.experts,
        };
        (dispatched.output, Some(aux))
    }
}

/// The FFN with routed projections (`MoeConfig::routed_projections`).
#[derive(Module, Debug)]
pub struct ProjectionMoe {
    pub gate_proj: ProjectionExperts,
    pub up_proj: ProjectionExperts,
    pub down_proj: ProjectionExperts,
    #[module(skip)]
    pub config: MoeConfig,
    /// GeGLU (Gemma) in place of SwiGLU.
    pub geglu: bool,
}

impl ProjectionMoe {
    pub fn new(d_model: usize, d_ff: usize, config: &MoeConfig, geglu: bool, device: &Device) -> Self {
        let part = |p: RoutedProjection, d_in, d_out| ProjectionExperts::new(d_in, d_out, config.routes(p.projection()), config.num_experts, device);
        Self {
            gate_proj: part(RoutedProjection::GateProj, d_model, d_ff),
            up_proj: part(RoutedProjection::UpProj, d_model, d_ff),
            down_proj: part(RoutedProjection::DownProj, d_ff, d_model),
            config: config.clone(),
            geglu,
        }
    }

    /// down(act(gate(x)) * up(x)), each projection mixed by its own router. The auxiliary
    /// outputs: the routers' losses summed, the first routed projection's routing (what the
    /// evaluation's routing statistics report).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, ctx: RoutingContext) -> (Tensor<3>, MoeAux) {
        let [batch, seq, d_model] = x.dims();
        let x = x.reshape([batch * seq, d_model]);
        let routers = self.config.routed_projections.len().max(1);
        let (g, gate_aux) = self.gate_proj.forward(x.clone(), &self.config, routers, ctx);
        let (u, up_aux) = self.up_proj.forward(x, &self.config, routers, ctx);
        let h = if self.geglu { gelu_tanh(g) * u } else { swiglu(g, u) };
        let (y, down_aux) = self.down_proj.forward(h, &self.config, routers, ctx);
        let mut auxes = [gate_aux, up_aux, down_aux].into_iter().flatten();
        let mut aux = auxes.next().expect("a projection MoE routes one projection or more");
        for other in auxes {
            aux.loss = aux.loss + other.loss;
        }
        (y.reshape([batch, seq, d_model]), aux)
    }
}
