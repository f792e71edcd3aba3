//! The CPU backend's (Flex) side of the engine's kernels: each reads its inputs as f32 slices
//! (a copy first only when a view is not contiguous) and writes a new contiguous tensor.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::DType;

use super::OwnKernels;
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

    fn exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return Flex::float_exp(x);
        }
        let [mut out] = outputs(&x);
        vector_math::exp_into(&f32s(&x), out.storage_mut());
        out
    }
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

/// The tensor's elements in order, borrowed when it is contiguous.
fn f32s(x: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(x.to_contiguous().storage::<f32>().to_vec()),
    }
}

/// `N` new contiguous f32 tensors of `like`'s shape, to be written in full.
fn outputs<const N: usize>(like: &FlexTensor) -> [FlexTensor; N] {
    std::array::from_fn(|_| FlexTensor::empty(like.shape(), DType::F32))
}
