//! Operations the engine computes with its own kernels where Burn's are slow: on the CPU
//! backend (Flex), SwiGLU's gated product, the exponential, the matrix product (gemm.rs) and
//! attention (Burn's CPU attention under autodiff is a chain of a dozen tensor operations, its
//! softmax one libm `expf` at a time), as vectorised loops (vector_math.rs) with their own
//! backward passes (autodiff.rs). They are Burn backend
//! extensions (`#[backend_extension]`): the same `Tensor` call runs the engine's kernel on
//! Flex and Burn's own operations everywhere else (WGPU, where the fusion compiler already
//! fuses such elementwise chains), with the same value.

mod autodiff;
mod cross_entropy;
mod flex;
mod gemm;
pub mod vector_math;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;
use burn::tensor::ops::AttentionModuleOptions;

/// The operations; implemented for Flex (flex.rs) and Flex under autodiff (autodiff.rs).
/// Called only where [`runs_own_kernel`] says so; other backends use Burn's operations.
#[backend_extension(Flex, Autodiff)]
pub trait OwnKernels: Backend {
    /// silu(gate) * up, elementwise; `gate` and `up` have the same shape.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// e^x, elementwise.
    fn exp(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// softmax(q k^T / sqrt(head_dim)) v over `[batch, heads, seq, head_dim]` tensors (keys
    /// and values with as many heads as the queries); causal: query i sees keys up to
    /// i + seq_k - seq_q.
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool) -> FloatTensor<Self>;
    /// The 2D matrix product: a [m, k] times b [k, n]. `b_frozen`: b is a parameter that does
    /// not train, so a is not kept for the backward pass (and b may be held in f16 or bf16).
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>, b_frozen: bool) -> FloatTensor<Self>;
    /// The LM head's weighted cross-entropy, [1]: sum_t w_t (logsumexp(z_t) - z_t[y_t]) with
    /// z_t = h_t W, for `hidden` [tokens, d_model], `weight` [d_model, vocab], `targets`
    /// [tokens] and `token_weights` [tokens] (constants). `weight_grad`: whether the head's
    /// weight needs its gradient.
    /// One AdamW update of a flat parameter `x` with its gradient and moments: the new
    /// parameter and moments (see `vector_math::adamw_in_place`).
    fn adamw_update(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scalars: vector_math::AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        token_weights: FloatTensor<Self>,
        weight_grad: bool,
    ) -> FloatTensor<Self>;
}

/// Whether `x` is an f32 tensor on the CPU backend (with or without autodiff): the case the
/// engine's kernels are for.
fn runs_own_kernel<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && crate::device::is_cpu(&x.device())
}

/// Whether `weight` is a frozen weight held in half precision that the f32 `x` is multiplied
/// by (`train::precision::FrozenPrecision`): the CPU kernel reads it back to f32 a product at
/// a time.
fn frozen_half<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> bool {
    x.dtype() == DType::F32 && matches!(weight.dtype(), DType::F16 | DType::BF16) && !weight.is_require_grad()
}

/// SwiGLU's gated product (Shazeer 2020): silu(gate) * up.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if runs_own_kernel(&gate) && gate.dims() == up.dims() {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::swiglu(gate.into_dispatch(), up.into_dispatch()))
    } else {
        silu(gate) * up
    }
}

/// Scaled dot-product attention, causal or over every key; `k` and `v` have q's heads.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let same_heads = q.dims()[..2] == k.dims()[..2] && k.dims() == v.dims();
    if runs_own_kernel(&q) && same_heads {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), causal))
    } else {
        let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
        burn::tensor::module::attention(q, k, v, None, None, options)
    }
}

/// Whether `attention(q, k, v, true)` with fewer queries than keys masks as causal attention
/// of the last queries (query i at position i + keys - queries): the engine's own kernel does;
/// Burn's backends are not relied on for it.
pub fn handles_offset_causal(q: &Tensor<4>) -> bool {
    runs_own_kernel(q)
}

/// a [m, k] times b [k, n] (either may be a transposed view).
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    if runs_own_kernel(&a) && b.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::matmul(a.into_dispatch(), b.into_dispatch(), false))
    } else {
        a.matmul(b)
    }
}

/// x W (+ bias) over the last dimension of `x` (`weight`: [d_in, d_out], Burn's layout), as
/// one matrix product over every row of `x`.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let frozen_half = frozen_half(&x, &weight);
    if frozen_half && !runs_own_kernel(&x) {
        // Off the CPU backend the product runs in the weight's dtype, as PyTorch computes on a
        // half-precision base model; the output comes back to f32.
        let y = burn::tensor::module::linear(x.cast(weight.dtype()), weight, None).cast(DType::F32);
        return match bias {
            Some(bias) => y + bias.unsqueeze::<D>(),
            None => y,
        };
    }
    if !(runs_own_kernel(&x) && (weight.dtype() == DType::F32 || frozen_half)) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let mut dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = x.shape().num_elements() / d_in.max(1);
    dims[D - 1] = d_out;
    // A weight that does not train keeps no copy of x for the backward pass (only x's
    // gradient is wanted), and may be held in half precision.
    let frozen = !weight.is_require_grad();
    let y = Tensor::from_dispatch(<Dispatch as OwnKernels>::matmul(x.reshape([rows, d_in]).into_dispatch(), weight.into_dispatch(), frozen));
    let y = match bias {
        Some(bias) => y + bias.unsqueeze::<2>(),
        None => y,
    };
    y.reshape(dims)
}

/// The LM head and next-token cross-entropy in one: sum_t w_t * -log softmax(h_t W)[y_t] for
/// hidden states `hidden` [tokens, d_model], the head `weight` [d_model, vocab] (a view is
/// read in place), targets [tokens] and per-token weights [tokens] (1/tokens for the mean; 0
/// for a token the loss does not count). On the CPU backend in chunks of tokens, never holding
/// the whole [tokens, vocab] logits (cross_entropy.rs); elsewhere through the logits.
/// `weight_grad`: whether `weight` trains (its gradient is computed only then).
pub fn linear_cross_entropy(hidden: Tensor<2>, weight: Tensor<2>, targets: Tensor<1, Int>, token_weights: Tensor<1>, weight_grad: bool) -> Tensor<1> {
    if runs_own_kernel(&hidden) && weight.dtype() == DType::F32 {
        let token_weights = token_weights.cast(DType::F32).detach();
        return Tensor::from_dispatch(<Dispatch as OwnKernels>::linear_cross_entropy(
            hidden.into_dispatch(),
            weight.into_dispatch(),
            targets.into_dispatch(),
            token_weights.into_dispatch(),
            weight_grad,
        ));
    }
    crate::model::lm::weighted_nll(matmul(hidden, weight), targets, token_weights)
}

/// One AdamW update (Loshchilov & Hutter 2019) of a flat parameter `x` [n] from its gradient
/// and moments, all [n]: returns the new parameter and moments. On the CPU backend one pass
/// in place (`vector_math::adamw_in_place`); elsewhere Burn's operations, in the same order.
pub fn adamw_update(x: Tensor<1>, grad: Tensor<1>, m: Tensor<1>, v: Tensor<1>, h: vector_math::AdamWScalars) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let all_f32 = [&grad, &m, &v].iter().all(|t| t.dtype() == DType::F32 && t.dims() == x.dims());
    if runs_own_kernel(&x) && all_f32 && !x.is_autodiff() {
        // Moments restored from a checkpoint may sit on the autodiff device: no graph is
        // involved, so they are read as plain tensors.
        let plain = |t: Tensor<1>| if t.is_autodiff() { t.inner() } else { t };
        let (grad, m, v) = (plain(grad), plain(m), plain(v));
        let (x, m, v) = <Dispatch as OwnKernels>::adamw_update(x.into_dispatch(), grad.into_dispatch(), m.into_dispatch(), v.into_dispatch(), h);
        return (Tensor::from_dispatch(x), Tensor::from_dispatch(m), Tensor::from_dispatch(v));
    }
    let g = grad * h.grad_scale;
    let m = m * h.b1 + g.clone() * h.one_minus_b1;
    let v = v * h.b2 + g.square() * h.one_minus_b2;
    let step = (m.clone() * h.m_correction) / ((v.clone() * h.v_correction).sqrt() + h.eps);
    let x = if h.decay != 1.0 { x * h.decay } else { x };
    (x - step * h.lr, m, v)
}

/// e^x.
pub fn exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if runs_own_kernel(&x) {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::exp(x.into_dispatch()))
    } else {
        x.exp()
    }
}
