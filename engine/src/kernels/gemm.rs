//! The matrix product on the CPU backend (2D, with its backward pass, and batched for
//! attention), by the same `gemm` crate Flex uses. Flex's own matmul allocates each output with `FlexTensor::empty`, which
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

// SAFETY: read only, and only while the tensor it points into is borrowed (the batched
// product's threads end before it returns).
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

impl Strided {
    /// The last two dimensions of `x` (f32) read in place, whatever its strides; for a
    /// batch of matrices, the first one.
    fn of(x: &FlexTensor) -> Self {
        let strides = x.layout().strides();
        let rank = strides.len();
        let data: &[f32] = x.storage();
        // In bounds: the layout's offset is that of its first element in the storage.
        let first = data[x.layout().start_offset()..].as_ptr();
        Strided { first, row_stride: strides[rank - 2], col_stride: strides[rank - 1] }
    }

    fn transposed(self) -> Self {
        Strided { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// The matrix `offset` elements on (another matrix of the batch).
    ///
    /// # Safety
    /// `offset` must stay inside the tensor's storage.
    unsafe fn shifted(self, offset: isize) -> Self {
        Strided { first: unsafe { self.first.offset(offset) }, ..self }
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
    // their strides (their layouts say so); the output is `out`'s capacity, written in full.
    unsafe {
        write_product(m, k, n, a, b, out.as_mut_ptr(), parallelism);
        out.set_len(m * n);
    }
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32)
}

/// Writes a [m, k] times b [k, n] to the m x n row-major block at `dst`. With read_dst =
/// false gemm writes every element of the block without reading any: `dst` may be
/// uninitialised.
///
/// # Safety
/// `a` and `b` must be readable at their strides over [m, k] and [k, n]; `dst` writable
/// for m * n elements.
unsafe fn write_product(m: usize, k: usize, n: usize, a: Strided, b: Strided, dst: *mut f32, parallelism: gemm::Parallelism) {
    unsafe {
        gemm::gemm(
            m, n, k,
            dst, 1, n as isize, false,
            a.first, a.col_stride, a.row_stride,
            b.first, b.col_stride, b.row_stride,
            0.0, 1.0, false, false, false, parallelism,
        );
    }
}

/// a [.., m, k] times b [.., k, n] matrix by matrix over equal leading dimensions (any
/// strides: a transposed view is read in place) as a new contiguous [.., m, n] tensor.
/// Like Flex: many small products run one per thread, a few large ones each on every thread.
pub(super) fn batched_matmul(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (a_dims, b_dims) = (a.shape().to_vec(), b.shape().to_vec());
    let rank = a_dims.len();
    let fits = rank >= 2 && b_dims.len() == rank && a_dims[..rank - 2] == b_dims[..rank - 2] && a_dims[rank - 1] == b_dims[rank - 2];
    assert!(fits, "batched_matmul: {a_dims:?} by {b_dims:?}");
    let ([m, k], n) = ([a_dims[rank - 2], a_dims[rank - 1]], b_dims[rank - 1]);
    let lead = &a_dims[..rank - 2];
    let batches: usize = lead.iter().product();
    let mut out_dims = a_dims.clone();
    out_dims[rank - 1] = n;
    let shape = Shape::from(out_dims);
    if batches * m * n * k == 0 {
        let zeros = vec![0.0f32; batches * m * n];
        return FlexTensor::new(Bytes::from_elems(zeros), Layout::contiguous(shape), DType::F32);
    }
    // Element offset of matrix i of the batch, from the leading dimensions' strides.
    let offset = |x: &FlexTensor, i: usize| -> isize {
        let strides = x.layout().strides();
        let (mut rest, mut offset) = (i, 0isize);
        for d in (0..rank - 2).rev() {
            offset += (rest % lead[d]) as isize * strides[d];
            rest /= lead[d];
        }
        offset
    };
    let (a0, b0) = (Strided::of(a), Strided::of(b));
    let mut out: Vec<f32> = Vec::with_capacity(batches * m * n);
    let out_first = out.as_mut_ptr() as usize;
    let one = |i: usize, parallelism| {
        // SAFETY: matrix i's offsets stay inside a and b (their layouts cover every batch);
        // each product writes its own m x n block of `out`'s capacity.
        unsafe {
            let dst = (out_first as *mut f32).add(i * m * n);
            write_product(m, k, n, a0.shifted(offset(a, i)), b0.shifted(offset(b, i)), dst, parallelism);
        }
    };
    if m * n * k >= PARALLEL_FROM && batches < 4 {
        (0..batches).for_each(|i| one(i, gemm::Parallelism::Rayon(0)));
    } else {
        use rayon::prelude::*;
        (0..batches).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
    }
    // SAFETY: every block, so every element, was written above.
    unsafe { out.set_len(batches * m * n) };
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
