//! The 2D matrix product on the CPU backend, by the same `gemm` crate Flex uses, with its
//! backward pass. Flex's own matmul allocates each output with `FlexTensor::empty`, which
//! zero-fills a byte vector and then copies it into an aligned one (burn-flex 0.22.1): two
//! passes over every output before the product writes it, 5-12% of a training step on two
//! cores. Here gemm writes the product straight into a new vector, and reads transposed
//! operands in place through their strides.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::TensorMetadata;
use burn::tensor::{Bytes, DType, Shape};

/// A matrix as gemm reads it: its first element and its row and column strides.
#[derive(Clone, Copy)]
struct Strided {
    first: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Strided {
    /// `x` (2D, f32) read in place, whatever its strides.
    fn of(x: &FlexTensor) -> Self {
        let strides = x.layout().strides();
        let data: &[f32] = x.storage();
        // In bounds: the layout's offset is that of its first element in the storage.
        let first = data[x.layout().start_offset()..].as_ptr();
        Strided { first, row_stride: strides[0], col_stride: strides[1] }
    }

    fn transposed(self) -> Self {
        Strided { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// Below this many multiply-adds one thread does the product (Flex's threshold).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// `a` [m, k] times `b` [k, n] as a new contiguous [m, n] tensor.
fn product(m: usize, k: usize, n: usize, a: Strided, b: Strided) -> FlexTensor {
    let shape = Shape::new([m, n]);
    if m * n * k == 0 {
        let zeros = vec![0.0f32; m * n];
        return FlexTensor::new(Bytes::from_elems(zeros), Layout::contiguous(shape), DType::F32);
    }
    let parallelism = if m * n * k >= PARALLEL_FROM { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `a` and `b` point into live tensors of at least [m, k] and [k, n] elements at
    // their strides (their layouts say so); the output is m x n contiguous in `out`'s
    // capacity, and with read_dst = false gemm writes every element of it without reading
    // any, so all m * n are initialised when the length is set.
    unsafe {
        gemm::gemm(
            m, n, k,
            out.as_mut_ptr(), 1, n as isize, false,
            a.first, a.col_stride, a.row_stride,
            b.first, b.col_stride, b.row_stride,
            0.0, 1.0, false, false, false, parallelism,
        );
        out.set_len(m * n);
    }
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32)
}

fn dims2(x: &FlexTensor) -> [usize; 2] {
    x.shape().dims::<2>()
}

/// a b, for a [m, k] and b [k, n].
pub(super) fn matmul(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let ([m, k], [_, n]) = (dims2(a), dims2(b));
    product(m, k, n, Strided::of(a), Strided::of(b))
}

/// d loss / d a = g b^T, from the output's gradient g [m, n].
pub(super) fn matmul_grad_lhs(grad: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let ([m, n], [k, _]) = (dims2(grad), dims2(b));
    product(m, n, k, Strided::of(grad), Strided::of(b).transposed())
}

/// d loss / d b = a^T g, from the output's gradient g [m, n].
pub(super) fn matmul_grad_rhs(a: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let ([m, k], [_, n]) = (dims2(a), dims2(grad));
    product(k, m, n, Strided::of(a).transposed(), Strided::of(grad))
}
