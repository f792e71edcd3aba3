//! Mixed precision (Micikevicius et al. 2018, "Mixed Precision Training"): inside an
//! `autocast(F16, ..)` scope the model's projections (every `Linear` but the routers) and its
//! attention run in f16, and everything else (embeddings, the residual stream, RMSNorm,
//! SwiGLU's gate, the loss) stays in f32, as do the weights and the optimizer: a projection
//! casts its input and its f32 weight down and its output back up, so gradients reach the f32
//! weights through the casts. The routers stay in f32 (Fedus et al. 2021, §2.4, "selective
//! precision": routing in low precision is unstable). Like PyTorch's `torch.autocast`, the
//! scope belongs to the thread that runs the forward pass; outside one, nothing is cast.

use std::cell::Cell;

use super::linear::Linear;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::linear;

thread_local! {
    static COMPUTE_DTYPE: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with the projections and attention computed in `dtype` (`None`: as stored).
pub fn autocast<R>(dtype: Option<DType>, f: impl FnOnce() -> R) -> R {
    let outer = COMPUTE_DTYPE.with(|d| d.replace(dtype));
    // Restored even if `f` panics, so a caught panic leaves no scope behind.
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE_DTYPE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// The dtype projections and attention compute in now, if the scope changes it.
fn compute_dtype() -> Option<DType> {
    COMPUTE_DTYPE.with(Cell::get)
}

/// Whether the scope computes projections of `stored`-dtype inputs in another dtype.
pub(crate) fn casts(stored: DType) -> bool {
    compute_dtype().is_some_and(|dtype| dtype != stored)
}

/// `layer.forward(x)`, in the scope's compute dtype; the output has `x`'s dtype.
pub fn project<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    match compute_dtype() {
        Some(dtype) if dtype != x.dtype() => {
            let stored = x.dtype();
            let weight = layer.weight.val().cast(dtype);
            let bias = layer.bias.as_ref().map(|b| b.val().cast(dtype));
            let y = linear(x.clone().cast(dtype), weight, bias).cast(stored);
            layer.with_adapter(x, y)
        }
        _ => layer.forward(x),
    }
}

/// Runs `attend` on q, k, v in the scope's compute dtype; the output has q's dtype.
pub fn in_compute_dtype(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, attend: impl FnOnce(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>) -> Tensor<4> {
    match compute_dtype() {
        Some(dtype) if dtype != q.dtype() => {
            let stored = q.dtype();
            attend(q.cast(dtype), k.cast(dtype), v.cast(dtype)).cast(stored)
        }
        _ => attend(q, k, v),
    }
}
