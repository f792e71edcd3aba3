//! Operations the engine computes with its own kernels where Burn's are slow: on the CPU
//! backend (Flex), SwiGLU's gated product and the exponential, as vectorised loops
//! (vector_math.rs) with their own backward passes (autodiff.rs). They are Burn backend
//! extensions (`#[backend_extension]`): the same `Tensor` call runs the engine's kernel on
//! Flex and Burn's own operations everywhere else (WGPU, where the fusion compiler already
//! fuses such elementwise chains), with the same value.

mod autodiff;
mod flex;
pub mod vector_math;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;

/// The operations; implemented for Flex (flex.rs) and Flex under autodiff (autodiff.rs).
/// Called only where [`runs_own_kernel`] says so; other backends use Burn's operations.
#[backend_extension(Flex, Autodiff)]
pub trait OwnKernels: Backend {
    /// silu(gate) * up, elementwise; `gate` and `up` have the same shape.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// e^x, elementwise.
    fn exp(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether `x` is an f32 tensor on the CPU backend (with or without autodiff): the case the
/// engine's kernels are for.
fn runs_own_kernel<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// SwiGLU's gated product (Shazeer 2020): silu(gate) * up.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if runs_own_kernel(&gate) && gate.dims() == up.dims() {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::swiglu(gate.into_dispatch(), up.into_dispatch()))
    } else {
        silu(gate) * up
    }
}

/// e^x.
pub fn exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if runs_own_kernel(&x) {
        Tensor::from_dispatch(<Dispatch as OwnKernels>::exp(x.into_dispatch()))
    } else {
        x.exp()
    }
}
