//! The engine's own CPU kernels (engine/src/kernels) give Burn's values and gradients:
//! SwiGLU's gated product, exp, attention and the matrix product (with linear layers), on
//! contiguous tensors and on views, with autodiff and without.

use btx::burn::prelude::*;
use btx::burn::tensor::Distribution;
use btx::burn::tensor::activation::silu;
use btx::kernels;

use crate::common::*;

fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    max_abs_diff(a, b) / scale.max(1e-30)
}

#[test]
fn swiglu_and_exp_kernels_equal_burns_operations() {
    let device = cpu();
    // 5 x 7 x 3001 elements: several parallel chunks and a tail that is no whole SIMD vector.
    let gate = Tensor::<3>::random([5, 7, 3001], Distribution::Normal(0.0, 4.0), &device);
    let up = Tensor::<3>::random([5, 7, 3001], Distribution::Normal(0.0, 1.0), &device);
    let expected = to_vec(silu(gate.clone()) * up.clone());
    let diff = relative_diff(&to_vec(kernels::swiglu(gate.clone(), up.clone())), &expected);
    assert!(diff < 1e-6, "swiglu differs from silu(gate) * up by {diff:e}");

    // A transposed view (not contiguous) gives the same as its contiguous copy.
    let (gate_t, up_t) = (gate.clone().swap_dims(0, 2), up.clone().swap_dims(0, 2));
    let expected_t = to_vec(silu(gate_t.clone()) * up_t.clone());
    let diff = relative_diff(&to_vec(kernels::swiglu(gate_t, up_t)), &expected_t);
    assert!(diff < 1e-6, "swiglu of a view differs by {diff:e}");

    let x = gate.clone().clamp(-80.0, 80.0);
    let diff = relative_diff(&to_vec(kernels::exp(x.clone())), &to_vec(x.exp()));
    assert!(diff < 1e-6, "exp differs by {diff:e}");
}

#[test]
fn swiglu_and_exp_kernels_give_burns_gradients() {
    let device = cpu().autodiff();
    let gate = Tensor::<2>::random([64, 257], Distribution::Normal(0.0, 3.0), &device).require_grad();
    let up = Tensor::<2>::random([64, 257], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weights = Tensor::<2>::random([64, 257], Distribution::Normal(0.0, 1.0), &device);
    let grads_of = |swiglu: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>, exp: &dyn Fn(Tensor<2>) -> Tensor<2>| {
        // A loss that uses both outputs and weights every element differently.
        let loss = (swiglu(gate.clone(), up.clone()) * weights.clone()).sum() + exp(gate.clone() * 0.1).sum();
        let grads = loss.backward();
        (to_vec(gate.grad(&grads).unwrap()), to_vec(up.grad(&grads).unwrap()))
    };
    let (burn_gate, burn_up) = grads_of(&|g, u| silu(g) * u, &|x| x.exp());
    let (own_gate, own_up) = grads_of(&kernels::swiglu, &kernels::exp);
    let (d_gate, d_up) = (relative_diff(&own_gate, &burn_gate), relative_diff(&own_up, &burn_up));
    assert!(d_gate < 1e-5 && d_up < 1e-5, "gradients differ: gate {d_gate:e}, up {d_up:e}");
    // A tensor that needs no gradient gets none, and the other still gets its own.
    let frozen_up = Tensor::<2>::from_data(up.to_data(), &device);
    let gate_grad = |swiglu: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
        let grads = (swiglu(gate.clone(), frozen_up.clone()) * weights.clone()).sum().backward();
        assert!(frozen_up.grad(&grads).is_none());
        to_vec(gate.grad(&grads).unwrap())
    };
    let diff = relative_diff(&gate_grad(&kernels::swiglu), &gate_grad(&|g, u| silu(g) * u));
    assert!(diff < 1e-5, "gate gradient with a frozen up differs by {diff:e}");
}

#[test]
fn attention_kernel_equals_burns_attention_with_its_gradients() {
    use btx::burn::tensor::module::attention;
    use btx::burn::tensor::ops::AttentionModuleOptions;
    let device = cpu().autodiff();
    // Full causal attention, attention over every key, and new queries after cached keys
    // (seq_q < seq_k: the causal boundary shifts by seq_k - seq_q); the last as the model
    // makes them, [batch, seq, heads, head_dim] with heads and seq swapped (a view).
    for (seq_q, seq_k, causal, as_views) in [(9, 9, true, false), (9, 9, false, false), (3, 11, true, true)] {
        let shape = |seq: usize| if as_views { [2, seq, 3, 8] } else { [2, 3, seq, 8] };
        let view = |x: Tensor<4>| if as_views { x.swap_dims(1, 2) } else { x };
        let q = Tensor::<4>::random(shape(seq_q), Distribution::Normal(0.0, 1.0), &device).require_grad();
        let k = Tensor::<4>::random(shape(seq_k), Distribution::Normal(0.0, 1.0), &device).require_grad();
        let v = Tensor::<4>::random(shape(seq_k), Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weights = Tensor::<4>::random([2, 3, seq_q, 8], Distribution::Normal(0.0, 1.0), &device);
        let run = |attend: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let out = attend(view(q.clone()), view(k.clone()), view(v.clone()));
            let grads = (out.clone() * weights.clone()).sum().backward();
            [to_vec(out), to_vec(q.grad(&grads).unwrap()), to_vec(k.grad(&grads).unwrap()), to_vec(v.grad(&grads).unwrap())]
        };
        let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
        let burn = run(&|q, k, v| attention(q, k, v, None, None, options));
        let own = run(&|q, k, v| kernels::attention(q, k, v, causal));
        for (what, (a, b)) in ["output", "d q", "d k", "d v"].iter().zip(own.iter().zip(&burn)) {
            let diff = relative_diff(a, b);
            assert!(diff < 1e-5, "{what} differs by {diff:e} (seq_q {seq_q}, seq_k {seq_k}, causal {causal})");
        }
        // Without autodiff too.
        let plain = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &cpu());
        let out = kernels::attention(view(plain(&q)), view(plain(&k)), view(plain(&v)), causal);
        assert!(relative_diff(&to_vec(out), &burn[0]) < 1e-5);
    }
}

#[test]
fn matmul_and_linear_kernels_equal_burns_with_their_gradients() {
    use btx::burn::tensor::module::linear;
    let device = cpu().autodiff();
    // Shapes on both sides of the one-thread threshold (192^3 multiply-adds), a transposed
    // right operand (the tied LM head's embedding^T), and a frozen weight.
    for (m, k, n) in [(7, 5, 3), (256, 200, 300)] {
        let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let b_t = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weights = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
        let run = |product: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
            let out = product(a.clone(), b.clone()) + product(a.clone(), b_t.clone().transpose());
            let grads = (out.clone() * weights.clone()).sum().backward();
            [to_vec(out), to_vec(a.grad(&grads).unwrap()), to_vec(b.grad(&grads).unwrap()), to_vec(b_t.grad(&grads).unwrap())]
        };
        let burn = run(&|x, y| x.matmul(y));
        let own = run(&kernels::matmul);
        for (what, (x, y)) in ["output", "d a", "d b", "d b^T"].iter().zip(own.iter().zip(&burn)) {
            let diff = relative_diff(x, y);
            assert!(diff < 1e-5, "{what} differs by {diff:e} ({m}x{k} by {k}x{n})");
        }
    }

    // A linear layer over [batch, seq, d_in] with a bias, and with a frozen weight.
    let x = Tensor::<3>::random([3, 5, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weight = Tensor::<2>::random([16, 24], Distribution::Normal(0.0, 0.3), &device).require_grad();
    let bias = Tensor::<1>::random([24], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weights = Tensor::<3>::random([3, 5, 24], Distribution::Normal(0.0, 1.0), &device);
    let run = |layer: &dyn Fn(Tensor<3>, Tensor<2>, Option<Tensor<1>>) -> Tensor<3>| {
        let out = layer(x.clone(), weight.clone(), Some(bias.clone()));
        let grads = (out.clone() * weights.clone()).sum().backward();
        [to_vec(out), to_vec(x.grad(&grads).unwrap()), to_vec(weight.grad(&grads).unwrap()), to_vec(bias.grad(&grads).unwrap())]
    };
    let (burn, own) = (run(&|x, w, b| linear(x, w, b)), run(&kernels::linear));
    for (what, (a, b)) in ["output", "d x", "d weight", "d bias"].iter().zip(own.iter().zip(&burn)) {
        let diff = relative_diff(a, b);
        assert!(diff < 1e-5, "linear: {what} differs by {diff:e}");
    }
    let frozen = Tensor::<2>::from_data(weight.to_data(), &device);
    let grads = (kernels::linear(x.clone(), frozen.clone(), None) * weights.clone()).sum().backward();
    assert!(frozen.grad(&grads).is_none());
    let expected = (linear(x.clone(), frozen.clone(), None) * weights.clone()).sum().backward();
    assert!(relative_diff(&to_vec(x.grad(&grads).unwrap()), &to_vec(x.grad(&expected).unwrap())) < 1e-5);

    // Without autodiff too.
    let plain = |t: &Tensor<3>| Tensor::<3>::from_data(t.to_data(), &cpu());
    let plain_w = Tensor::<2>::from_data(weight.to_data(), &cpu());
    let out = kernels::linear(plain(&x), plain_w.clone(), None);
    assert!(relative_diff(&to_vec(out), &to_vec(linear(plain(&x), plain_w, None))) < 1e-6);
}

#[test]
fn fused_lm_head_cross_entropy_equals_logits_then_log_softmax_with_gradients() {
    use btx::burn::tensor::activation::log_softmax;
    let device = cpu().autodiff();
    let (tokens, d_model, vocab) = (29, 12, 203);
    let hidden_leaf = Tensor::<2>::random([tokens, d_model], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let head = Tensor::<2>::random([d_model, vocab], Distribution::Normal(0.0, 0.5), &device).require_grad();
    // A tied head: the embedding [vocab, d_model] read as its transpose (a view).
    let embedding = Tensor::<2>::random([vocab, d_model], Distribution::Normal(0.0, 0.5), &device).require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new((0..tokens as i64).map(|t| (t * 37 + 5) % vocab as i64).collect::<Vec<_>>(), [tokens]), &device);
    // Unequal weights, two tokens not counted.
    let weights: Vec<f32> = (0..tokens).map(|t| if t % 13 == 2 { 0.0 } else { 1.0 / (t as f32 + 3.0) }).collect();
    let token_weights = Tensor::<1>::from_data(TensorData::new(weights, [tokens]), &device);
    let reference = |hidden: Tensor<2>, weight: Tensor<2>| {
        let log_probs = log_softmax(hidden.matmul(weight), 1).gather(1, targets.clone().unsqueeze_dim(1)).squeeze_dim(1);
        (log_probs * token_weights.clone()).sum().neg()
    };
    let fused = |hidden: Tensor<2>, weight: Tensor<2>| kernels::linear_cross_entropy(hidden, weight, targets.clone(), token_weights.clone(), true);
    for tied in [false, true] {
        let weight_param = if tied { embedding.clone() } else { head.clone() };
        let weight = || if tied { embedding.clone().transpose() } else { head.clone() };
        // The hidden states as the model gives them: the output of an operation, not a leaf.
        let run = |loss_of: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>| {
            let loss = loss_of(hidden_leaf.clone() * 1.5, weight()) * 3.0;
            let grads = loss.backward();
            [to_vec(loss), to_vec(hidden_leaf.grad(&grads).unwrap()), to_vec(weight_param.grad(&grads).unwrap())]
        };
        let (burn, own) = (run(&reference), run(&fused));
        for (what, (a, b)) in ["loss", "d hidden", "d weight"].iter().zip(own.iter().zip(&burn)) {
            let diff = relative_diff(a, b);
            assert!(diff < 1e-5, "tied {tied}: {what} differs by {diff:e}");
        }
    }
    // A frozen head: no gradient for it, the hidden states' unchanged.
    let frozen = Tensor::<2>::from_data(head.to_data(), &device);
    let loss = kernels::linear_cross_entropy(hidden_leaf.clone() * 1.5, frozen.clone(), targets.clone(), token_weights.clone(), false);
    let grads = loss.backward();
    assert!(frozen.grad(&grads).is_none());
    let expected = reference(hidden_leaf.clone() * 1.5, frozen.clone()).backward();
    let diff = relative_diff(&to_vec(hidden_leaf.grad(&grads).unwrap()), &to_vec(hidden_leaf.grad(&expected).unwrap()));
    assert!(diff < 1e-5, "frozen head: d hidden differs by {diff:e}");
    // Without autodiff (evaluation) the same loss.
    let plain = cpu();
    let value = |loss_of: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>| {
        to_vec(loss_of(Tensor::from_data(hidden_leaf.to_data(), &plain), Tensor::from_data(head.to_data(), &plain)))[0]
    };
    let (targets, token_weights) = (Tensor::<1, Int>::from_data(targets.to_data(), &plain), Tensor::<1>::from_data(token_weights.to_data(), &plain));
    let own = value(&|h, w| kernels::linear_cross_entropy(h, w, targets.clone(), token_weights.clone(), false));
    let burn = value(&|h, w| {
        let log_probs = log_softmax(h.matmul(w), 1).gather(1, targets.clone().unsqueeze_dim(1)).squeeze_dim(1);
        (log_probs * token_weights.clone()).sum().neg()
    });
    assert!((own - burn).abs() < 1e-5 * burn.abs(), "untracked loss {own} against {burn}");
}


#[test]
fn fused_adamw_update_equals_the_tensor_by_tensor_update() {
    use btx::kernels::vector_math::AdamWScalars;
    let device = cpu();
    // Enough elements for several parallel chunks and a tail.
    let n = 70_001;
    let random = |std: f64| Tensor::<1>::random([n], Distribution::Normal(0.0, std), &device);
    let (x, g, m) = (random(1.0), random(0.1), random(0.01));
    let v = random(1e-3).abs();
    let h = AdamWScalars {
        lr: 3e-3, grad_scale: 0.7, b1: 0.9, one_minus_b1: 0.1, b2: 0.95, one_minus_b2: 0.05,
        eps: 1e-8, decay: 1.0 - 3e-4, m_correction: 1.0 / (1.0 - 0.9f32.powi(3)), v_correction: 1.0 / (1.0 - 0.95f32.powi(3)),
    };
    let (x1, m1, v1) = kernels::adamw_update(x.clone(), g.clone(), m.clone(), v.clone(), h);
    // The update written out with Burn's operations, in the same order.
    let g = g * h.grad_scale;
    let m2 = m * h.b1 + g.clone() * h.one_minus_b1;
    let v2 = v * h.b2 + g.square() * h.one_minus_b2;
    let step = (m2.clone() * h.m_correction) / ((v2.clone() * h.v_correction).sqrt() + h.eps);
    let x2 = x.clone() * h.decay - step * h.lr;
    for (what, a, b) in [("x", x1, x2), ("m", m1, m2), ("v", v1, v2)] {
        let diff = relative_diff(&to_vec(a), &to_vec(b));
        assert!(diff < 1e-6, "{what} differs by {diff:e}");
    }
    // The input parameter is not changed in place where another tensor holds it.
    let before = to_vec(x.clone());
    let kept = x.clone();
    let _ = kernels::adamw_update(x, Tensor::zeros([n], &device) + 1.0, Tensor::zeros([n], &device), Tensor::zeros([n], &device), h);
    assert_eq!(to_vec(kept), before);
}
