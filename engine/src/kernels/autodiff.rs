//! The backward passes of the engine's kernels on the CPU backend under autodiff. Each keeps
//! what its gradient needs (SwiGLU: both inputs; exp: its output), so the backward pass
//! computes no exponential again (Burn's own sigmoid and exp recompute theirs).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;

use super::cross_entropy::{Wanted, linear_cross_entropy, token_ids};
use super::{OwnKernels, flex, gemm};

impl<C: CheckpointStrategy> OwnKernels for Autodiff<Flex, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwiGlu;

        impl Backward<Flex, 2> for SwiGlu {
            type State = (FlexTensor, FlexTensor);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [gate_node, up_node] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                let (gate, up) = ops.state;
                let (d_gate, d_up) = flex::swiglu_backward(&gate, &up, &grad);
                if let Some(node) = gate_node {
                    grads.register::<Flex>(node.id, d_gate);
                }
                if let Some(node) = up_node {
                    grads.register::<Flex>(node.id, d_up);
                }
            }
        }

        let (gate, gate_node) = gate.into_parts();
        let (up, up_node) = up.into_parts();
        match SwiGlu.prepare::<C>([gate_node, up_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = Flex::swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::swiglu(gate, up)),
        }
    }

    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Attention;

        impl Backward<Flex, 3> for Attention {
            /// q, k, v and the probabilities.
            type State = [FlexTensor; 4];

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<Flex>(&ops.node);
                let [q, k, v, probs] = ops.state;
                let d = flex::attention_backward(q, k, v, &probs, grad);
                for (node, d) in ops.parents.into_iter().zip(d) {
                    if let Some(node) = node {
                        grads.register::<Flex>(node.id, d);
                    }
                }
            }
        }

        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        if q.dtype() != DType::F32 {
            unreachable!("the engine's attention kernel runs on f32 only (kernels::attention checks)");
        }
        match Attention.prepare::<C>([q_node, k_node, v_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (output, probs) = flex::attention_forward(q.clone(), k.clone(), v.clone(), causal);
                prep.finish([q, k, v, probs], output)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as OwnKernels>::attention(q, k, v, causal)),
        }
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>, b_frozen: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Matmul;

        impl Backward<Flex, 2> for Matmul {
            /// a (unless b is frozen: only a's gradient is wanted then) and b.
            type State = (Option<FlexTensor>, FlexTensor);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [a_node, b_node] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                let (a, b) = ops.state;
                if let Some(node) = a_node {
                    grads.register::<Flex>(node.id, gemm::matmul_grad_lhs(&grad, &flex::as_f32(b)));
                }
                if let (Some(node), Some(a)) = (b_node, a) {
                    grads.register::<Flex>(node.id, gemm::matmul_grad_rhs(&a, &grad));
                }
            }
        }

        let (a, a_node) = a.into_parts();
        let (b, b_node) = b.into_parts();
        // b may be a frozen weight held in half precision (read back to f32 by the kernel).
        if a.dtype() != DType::F32 || (b.dtype() != DType::F32 && !b_frozen) {
            unreachable!("the engine's matmul kernel runs on f32, or a frozen half weight (kernels::matmul checks)");
        }
        match Matmul.prepare::<C>([a_node, b_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = <Flex as OwnKernels>::matmul(a.clone(), b.clone(), b_frozen);
                prep.finish(((!b_frozen).then_some(a), b), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as OwnKernels>::matmul(a, b, b_frozen)),
        }
    }

    fn adamw_update(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: super::vector_math::AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("the optimizer updates plain tensors (kernels::adamw_update checks)")
    }

    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        token_weights: FloatTensor<Self>,
        weight_grad: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearCrossEntropy;

        impl Backward<Flex, 2> for LinearCrossEntropy {
            /// The gradients of the (scalar) loss with respect to the hidden states and the
            /// head's weight, computed by the forward pass: the backward pass scales them by
            /// the loss's own gradient.
            type State = (Option<FlexTensor>, Option<FlexTensor>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let upstream = flex::f32s(&grads.consume::<Flex>(&ops.node))[0];
                let scaled = |d: FlexTensor| if upstream == 1.0 { d } else { Flex::float_mul_scalar(d, upstream.into()) };
                let [hidden_node, weight_node] = ops.parents;
                let (d_hidden, d_weight) = ops.state;
                if let (Some(node), Some(d)) = (hidden_node, d_hidden) {
                    grads.register::<Flex>(node.id, scaled(d));
                }
                if let (Some(node), Some(d)) = (weight_node, d_weight) {
                    grads.register::<Flex>(node.id, scaled(d));
                }
            }
        }

        let (hidden, hidden_node) = hidden.into_parts();
        let (weight, weight_node) = weight.into_parts();
        // The per-token weights are constants (a mask, 1/tokens): no gradient flows to them.
        let token_weights = token_weights.into_parts().0;
        match LinearCrossEntropy.prepare::<C>([hidden_node, weight_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let wanted = Wanted { hidden: true, weight: weight_grad };
                let (loss, d_hidden, d_weight) = linear_cross_entropy(&hidden, &weight, &token_ids(&targets), &flex::f32s(&token_weights), wanted);
                prep.finish((d_hidden, d_weight), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as OwnKernels>::linear_cross_entropy(hidden, weight, targets, token_weights, false)),
        }
    }

    fn exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Exp;

        impl Backward<Flex, 1> for Exp {
            type State = FlexTensor;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                // d e^x / dx = e^x: the kept output.
                let output = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |grad| Flex::float_mul(grad, output));
            }
        }

        let (x, node) = x.into_parts();
        match Exp.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = Flex::exp(x);
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::exp(x)),
        }
    }
}
