//! The MoE layer: invariants against the dense FFN, the routed-only dispatch against a
//! compute-everything reference, gates, load balancing, capacity and gradients.

use btx::burn::prelude::*;
use btx::burn::tensor::Distribution;
use btx::burn::tensor::activation::softmax;
use btx::burn::optim::GradientsParams;
use btx::model::ffn::FeedForward;
use btx::model::load_balance::load_balancing_loss;
use btx::model::moe::{MoeLayer, RoutingContext};
use btx::model::moe_config::{MoeConfig, Routing};
use btx::model::router::topk_gates;

use crate::common::*;

/// An MoE layer whose every expert is a copy of `ffn`.
fn copies_of(ffn: &FeedForward, config: &MoeConfig, device: &Device) -> MoeLayer {
    let mut layer = MoeLayer::new(32, 64, config, false, device);
    layer.experts = (0..config.num_experts).map(|_| ffn.clone()).collect();
    layer
}

const TRAIN: RoutingContext = RoutingContext { training: true, step: 10 };
const INFER: RoutingContext = RoutingContext { training: false, step: 0 };

/// Under every routing mode but Switch, an MoE of copies of one FFN is that FFN: the gates of
/// a token sum to 1. Switch gives the chosen expert p_i(x) = softmax(router logits)_i.
#[test]
fn identical_experts_equal_the_dense_ffn_in_every_routing_mode() {
    let device = cpu();
    device.seed(1);
    let ffn = FeedForward::new(32, 64, &device);
    let x = Tensor::<3>::random([2, 8, 32], Distribution::Normal(0.0, 1.0), &device);
    let dense = to_vec(ffn.forward(x.clone()));
    let modes = [
        (4, 2, Routing::TopK),
        (4, 1, Routing::TopK),
        (1, 1, Routing::TopK),
        (4, 1, Routing::Switch { capacity_factor: 4.0 }), // capacity = all tokens: no drops
        (4, 1, Routing::Soft),
        (4, 1, Routing::SampleTop1 { tau_min: 0.5, tau_decay: 1e-3, first_layer_soft: false }),
    ];
    for (e, k, routing) in modes {
        let layer = copies_of(&ffn, &MoeConfig::new(e, k, routing.clone()), &device);
        for ctx in [TRAIN, INFER] {
            let (y, aux) = layer.forward(x.clone(), ctx);
            assert_eq!(aux.dropped, 0);
            let want = match routing {
                Routing::Switch { .. } => {
                    let p = softmax(layer.gate.forward(x.clone().reshape([16, 32])), 1).max_dim(1).reshape([2, 8, 1]);
                    to_vec(ffn.forward(x.clone()) * p)
                }
                _ => dense.clone(),
            };
            let diff = max_abs_diff(&to_vec(y), &want);
            assert!(diff < 1e-5, "{routing:?} E={e} k={k} training={}: max difference {diff}", ctx.training);
        }
    }
}

/// y = sum_i g_i FFN_i(x) with every expert computed on every token and the dense gates.
fn compute_everything(layer: &MoeLayer, x: Tensor<2>, gates: Tensor<2>) -> Tensor<2> {
    let mut y = x.zeros_like();
    for (i, expert) in layer.experts.iter().enumerate() {
        y = y + expert.forward(x.clone()) * gates.clone().narrow(1, i, 1);
    }
    y
}

#[test]
fn routed_dispatch_equals_computing_every_expert() {
    let device = cpu();
    device.seed(2);
    for k in [1, 2, 3] {
        let layer = MoeLayer::new(32, 64, &MoeConfig::new(4, k, Routing::TopK), false, &device);
        let x = Tensor::<2>::random([24, 32], Distribution::Normal(0.0, 1.0), &device);
        let sel = topk_gates(layer.gate.forward(x.clone()), k);
        let gates = Tensor::<2>::zeros([24, 4], &device).scatter(1, sel.experts, sel.gates, btx::burn::tensor::IndexingUpdateOp::Add);
        let want = to_vec(compute_everything(&layer, x.clone(), gates));
        let (got, _) = layer.forward(x.reshape([1, 24, 32]), INFER);
        let diff = max_abs_diff(&to_vec(got), &want);
        assert!(diff < 1e-5, "k={k}: max difference {diff}");
    }
}

#[test]
fn soft_routing_is_the_gate_weighted_sum_of_all_experts() {
    let device = cpu();
    device.seed(3);
    let layer = MoeLayer::new(32, 64, &MoeConfig::new(3, 1, Routing::Soft), false, &device);
    let x = Tensor::<2>::random([10, 32], Distribution::Normal(0.0, 1.0), &device);
    let gates = btx::burn::tensor::activation::softmax(layer.gate.forward(x.clone()), 1);
    let want = to_vec(compute_everything(&layer, x.clone(), gates));
    let (got, _) = layer.forward(x.reshape([1, 10, 32]), TRAIN);
    assert!(max_abs_diff(&to_vec(got), &want) < 1e-5);
}

#[test]
fn topk_gates_have_k_non_zeros_summing_to_one() {
    let device = cpu();
    let logits = Tensor::<2>::random([50, 6], Distribution::Normal(0.0, 2.0), &device);
    for k in [1, 2, 4] {
        let sel = topk_gates(logits.clone(), k);
        assert_eq!(sel.experts.dims(), [50, k]);
        let gates = to_vec(sel.gates);
        for row in gates.chunks(k) {
            assert!(row.iter().all(|&g| g > 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let experts: Vec<i64> = sel.experts.into_data().convert::<i64>().try_to_vec().unwrap();
        for row in experts.chunks(k) {
            let mut r = row.to_vec();
            r.dedup();
            assert_eq!(r.len(), k, "an expert chosen twice: {row:?}");
        }
    }
}

#[test]
fn load_balancing_loss_matches_a_hand_computed_example() {
    let device = cpu();
    // Two tokens, two experts. Router logits [0, ln 3] and [0, 0]:
    // softmax rows [1/4, 3/4] and [1/2, 1/2] -> p = [3/8, 5/8].
    // Top-1 gates: token 0 -> expert 1 with g = 1; token 1 -> expert 0 with g = 1 (tie: first).
    // u = [1/2, 1/2]; L = alpha * E * (1/2 * 3/8 + 1/2 * 5/8) = 0.01 * 2 * 0.5 = 0.01.
    let logits = Tensor::<2>::from_data([[0.0, 3.0f32.ln()], [0.0, 0.0]], &device);
    let gates = Tensor::<2>::from_data([[0.0, 1.0], [1.0, 0.0]], &device);
    let loss = load_balancing_loss(logits.clone(), gates, 0.01).into_scalar::<f32>();
    assert!((loss - 0.01).abs() < 1e-7, "{loss}");
    // Unbalanced: both tokens to expert 1 with g = 1: u = [0, 1] -> L = 0.01 * 2 * 5/8.
    let gates = Tensor::<2>::from_data([[0.0, 1.0], [0.0, 1.0]], &device);
    let loss = load_balancing_loss(logits, gates, 0.01).into_scalar::<f32>();
    assert!((loss - 0.0125).abs() < 1e-7, "{loss}");
}

#[test]
fn capacity_drops_exactly_the_overflow_in_token_order() {
    let device = cpu();
    device.seed(4);
    let mut layer = MoeLayer::new(32, 64, &MoeConfig::new(2, 1, Routing::Switch { capacity_factor: 1.0 }), false, &device);
    // A router that sends every token to expert 0 except those with x[0] < 0 to expert 1:
    // weight column 1 = e_0 * -100 so logits = [0, -100 x_0].
    let mut w = vec![0.0f32; 32 * 2];
    w[1] = -100.0;
    layer.gate.weight = layer.gate.weight.clone().map(|_| Tensor::from_data(TensorData::new(w, [32, 2]), &device));
    // 6 tokens; capacity = ceil(1.0 * 6 / 2) = 3. Tokens 0,1,2,4,5 want expert 1 (x_0 < 0)
    // except where noted: signs of x_0 = [+, -, -, -, +, -] -> expert 1 for 1,2,3,5.
    let signs = [1.0f32, -1.0, -1.0, -1.0, 1.0, -1.0];
    let mut xs = Tensor::<2>::random([6, 32], Distribution::Uniform(0.5, 1.0), &device);
    xs = xs.clone().slice_assign([0..6, 0..1], Tensor::from_data(TensorData::new(signs.to_vec(), [6, 1]), &device));
    let (y, aux) = layer.forward(xs.clone().reshape([1, 6, 32]), INFER);
    assert_eq!(aux.dropped, 1);
    assert_eq!(aux.expert_tokens, vec![2, 3]);
    let y = to_vec(y);
    // Expert 1 took tokens 1, 2, 3 (first in token order); token 5 is the overflow.
    assert!(y[5 * 32..6 * 32].iter().all(|&v| v == 0.0), "the dropped token got an output");
    for t in [0, 1, 2, 3, 4] {
        assert!(y[t * 32..(t + 1) * 32].iter().any(|&v| v != 0.0), "token {t} was dropped");
    }
}

#[test]
fn gradients_reach_the_router_and_selected_experts_and_frozen_experts_stay() {
    let device = cpu().autodiff();
    device.seed(5);
    for freeze in [false, true] {
        let mut config = MoeConfig::new(4, 2, Routing::TopK);
        config.freeze_experts = freeze;
        let layer = MoeLayer::new(32, 64, &config, false, &device);
        let x = Tensor::<3>::random([2, 16, 32], Distribution::Normal(0.0, 1.0), &device);
        let (y, aux) = layer.forward(x, TRAIN);
        let used = aux.expert_tokens.clone();
        let loss = y.square().mean() + aux.loss;
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        let norm = |id| grads.get::<2>(id).map(|g| g.abs().sum().into_scalar::<f32>()).unwrap_or(0.0);
        assert!(norm(layer.gate.weight.id) > 0.0, "no gradient reached the router");
        for (e, expert) in layer.experts.iter().enumerate() {
            let g = norm(expert.gate_proj.weight.id) + norm(expert.down_proj.weight.id);
            if freeze {
                assert_eq!(g, 0.0, "frozen expert {e} got a gradient");
            } else if used[e] > 0 {
                assert!(g > 0.0, "selected expert {e} got no gradient");
            }
        }
        if freeze {
            assert!(layer.experts.iter().all(|e| !e.up_proj.weight.val().is_require_grad()));
        }
    }
}

/// Switch gates each token by p_i(x) (Switch Transformer), so the output's loss alone, with
/// no load-balancing or z-loss, trains the router; top-1 of Mixtral's rule (softmax over the
/// one chosen logit) gives a constant gate of 1 and no such gradient.
#[test]
fn under_switch_the_lm_loss_alone_reaches_the_router() {
    let device = cpu().autodiff();
    device.seed(6);
    for (routing, k, reaches) in [(Routing::Switch { capacity_factor: 2.0 }, 1, true), (Routing::TopK, 1, false)] {
        let mut config = MoeConfig::new(4, k, routing.clone());
        config.load_balance = 0.0;
        let layer = MoeLayer::new(32, 64, &config, false, &device);
        let x = Tensor::<3>::random([2, 16, 32], Distribution::Normal(0.0, 1.0), &device);
        let (y, _) = layer.forward(x, TRAIN);
        let grads = GradientsParams::from_grads(y.square().mean().backward(), &layer);
        let router = grads.get::<2>(layer.gate.weight.id).map_or(0.0, |g| g.abs().sum().into_scalar::<f32>());
        assert_eq!(router > 0.0, reaches, "{routing:?} top-{k}: router gradient {router}");
    }
}
