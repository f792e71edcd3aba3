//! The CPU backend's (Flex) side of the engine's kernels: each reads its inputs as f32 slices
//! (a copy first only when a view is not contiguous) and writes a new contiguous tensor.

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::Bytes;
use burn::backend::ops::{ActivationOps, AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, Shape};

use super::OwnKernels;
use super::cross_entropy::{Wanted, linear_cross_entropy, token_ids};
use super::gemm::batched_matmul;
use super::vector_math;

impl OwnKernels for Flex {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if gate.dtype() != DType::F32 || gate.shape() != up.shape() {
            return Flex::float_mul(Flex::float_mul(gate.clone(), Flex::sigmoid(gate)), up);
        }
        let [mut out] = outputs(&gate);
        vector_math::swiglu_into(&f32s(&gate), &f32s(&up), out.storage_mut());
        out
    }

    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        if q.dtype() != DType::F32 {
            let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
            return <Flex as ModuleOps<Flex>>::attention(q, k, v, None, None, options);
        }
        attention_forward(q, k, v, causal).0
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>, _b_frozen: bool) -> FloatTensor<Self> {
        if a.dtype() != DType::F32 {
            return Flex::float_matmul(a, b);
        }
        super::gemm::matmul(&a, &as_f32(b))
    }

    fn adamw_update(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scalars: vector_math::AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (mut x, mut m, mut v) = (owned(x), owned(m), owned(v));
        vector_math::adamw_in_place(x.storage_mut(), m.storage_mut(), v.storage_mut(), &f32s(&grad), &scalars);
        (x, m, v)
    }

    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        token_weights: FloatTensor<Self>,
        _weight_grad: bool,
    ) -> FloatTensor<Self> {
        let none = Wanted { hidden: false, weight: false };
        linear_cross_entropy(&hidden, &weight, &token_ids(&targets), &f32s(&token_weights), none).0
    }

    fn exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return Flex::float_exp(x);
        }
        let [mut out] = outputs(&x);
        vector_math::exp_into(&f32s(&x), out.storage_mut());
        out
    }
}

/// `x` in f32: a frozen weight held in half precision is read back one product at a time
/// (`train::precision::FrozenPrecision`), the copy dropped with the product.
pub(super) fn as_f32(x: FlexTensor) -> FlexTensor {
    if x.dtype() == DType::F32 { x } else { Flex::float_cast(x, burn::tensor::FloatDType::F32) }
}

/// The gradients of [`OwnKernels::swiglu`] with respect to `gate` and `up`, from the output's.
pub(super) fn swiglu_backward(gate: &FlexTensor, up: &FlexTensor, grad: &FlexTensor) -> (FlexTensor, FlexTensor) {
    if gate.dtype() != DType::F32 {
        // (Not reached: the forward pass only runs the kernel on f32.)
        let s = Flex::sigmoid(gate.clone());
        let one_minus_s = Flex::float_neg(Flex::float_add_scalar(s.clone(), (-1.0).into()));
        let d_silu = Flex::float_mul(s.clone(), Flex::float_add_scalar(Flex::float_mul(gate.clone(), one_minus_s), 1.0.into()));
        let d_gate = Flex::float_mul(Flex::float_mul(grad.clone(), up.clone()), d_silu);
        let d_up = Flex::float_mul(grad.clone(), Flex::float_mul(gate.clone(), s));
        return (d_gate, d_up);
    }
    let [mut d_gate, mut d_up] = outputs(gate);
    let (gate, up, grad) = (f32s(gate), f32s(up), f32s(grad));
    vector_math::swiglu_backward_into(&gate, &up, &grad, d_gate.storage_mut(), d_up.storage_mut());
    (d_gate, d_up)
}

/// Attention's output and its probabilities P = softmax(q k^T / sqrt(head_dim)) (masked
/// causally): batched matrix products (gemm.rs) around the engine's softmax rows, which
/// write in place into the scores (a new contiguous tensor of their own).
pub(super) fn attention_forward(q: FlexTensor, k: FlexTensor, v: FlexTensor, causal: bool) -> (FlexTensor, FlexTensor) {
    let [.., seq_q, head_dim] = dims4(&q);
    let seq_k = dims4(&k)[2];
    let mut probs = batched_matmul(&q, &Flex::float_transpose(k));
    let offset = causal.then(|| seq_k.saturating_sub(seq_q));
    vector_math::softmax_rows_in_place(probs.storage_mut(), seq_q, seq_k, attention_scale(head_dim), offset);
    (batched_matmul(&probs, &v), probs)
}

/// The gradients of attention's q, k and v from the output's (`grad`), with the forward
/// pass's inputs and probabilities P: dV = P^T dO; dS = scale * P * (dP - rowsum(P * dP)) with
/// dP = dO V^T; dQ = dS K; dK = dS^T Q.
pub(super) fn attention_backward(q: FlexTensor, k: FlexTensor, v: FlexTensor, probs: &FlexTensor, grad: FlexTensor) -> [FlexTensor; 3] {
    let [.., head_dim] = dims4(&q);
    let seq_k = dims4(&k)[2];
    let d_v = batched_matmul(&Flex::float_transpose(probs.clone()), &grad);
    let mut d_scores = batched_matmul(&grad, &Flex::float_transpose(v));
    vector_math::softmax_rows_backward_in_place(&f32s(probs), d_scores.storage_mut(), seq_k, attention_scale(head_dim));
    let d_q = batched_matmul(&d_scores, &k);
    let d_k = batched_matmul(&Flex::float_transpose(d_scores), &q);
    [d_q, d_k, d_v]
}

fn attention_scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

fn dims4(x: &FlexTensor) -> [usize; 4] {
    x.shape().dims::<4>()
}

/// The tensor's elements in order, borrowed when it is contiguous.
pub(super) fn f32s(x: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(x.to_contiguous().storage::<f32>().to_vec()),
    }
}

/// `x` (f32) as a contiguous tensor whose storage holds exactly its elements, ready to be
/// written in place: itself when it already is (its buffer is then copied only if another
/// tensor shares it), else a copy.
fn owned(x: FlexTensor) -> FlexTensor {
    let n = x.shape().num_elements();
    let whole = x.layout().contiguous_offsets() == Some((0, n)) && x.storage::<f32>().len() == n;
    if whole { x } else { tensor_from(f32s(&x).into_owned(), x.shape()) }
}

/// `N` new contiguous f32 tensors of `like`'s shape, to be written in full. Built from a
/// `Vec<f32>` rather than by `FlexTensor::empty`, which zero-fills a byte vector and then
/// copies it into a 16-byte-aligned one (burn-flex 0.22.1; cubecl's `Bytes::from_bytes_vec`
/// judges alignment by the element type, u8, so it always copies).
fn outputs<const N: usize>(like: &FlexTensor) -> [FlexTensor; N] {
    let shape = like.shape();
    std::array::from_fn(|_| tensor_from(vec![0.0; shape.num_elements()], shape.clone()))
}

/// `elements` as a contiguous f32 tensor of `shape`, without a copy.
pub(super) fn tensor_from(elements: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(elements), Layout::contiguous(shape), DType::F32)
}
