//! The matrix product on the CPU backend (2D, with its backward pass, and batched for
//! attention), by the same `gemm` crate Flex uses. Flex's own matmul allocates each output
//! with `FlexTensor::empty`, which zero-fills a byte vector and then copies it into an
//! aligned one (burn-flex 0.22.1): two passes over every output before the product writes
//! it, 5-12% of a training step on two cores. Here gemm writes the product straight into a
//! new vector, and reads transposed operands in place through their strides.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;

use super::flex::tensor_from;

/// A matrix as gemm reads it: its first element and its row and column strides.
#[derive(Clone, Copy)]
pub(super) struct Strided {
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
    pub(super) fn of(x: &FlexTensor) -> Self {
        let strides = x.layout().strides();
        let rank = strides.len();
        let data: &[f32] = x.storage();
        // In bounds: the layout's offset is that of its first element in the storage.
        let first = data[x.layout().start_offset()..].as_ptr();
        Strided { first, row_stride: strides[rank - 2], col_stride: strides[rank - 1] }
    }

    pub(super) fn transposed(self) -> Self {
        Strided { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// The matrix `offset` elements on (another matrix of the batch).
    ///
    /// # Safety
    /// `offset` must stay inside the tensor's storage.
    unsafe fn shifted(self, offset: isize) -> Self {
        Strided { first: unsafe { self.first.offset(offset) }, ..self }
    }

    /// The matrix from row `row` on.
    ///
    /// # Safety
    /// `row` must be a row of the matrix.
    pub(super) unsafe fn from_row(self, row: usize) -> Self {
        unsafe { self.shifted(row as isize * self.row_stride) }
    }

    /// A row-major matrix of `cols` columns in `data`.
    pub(super) fn row_major(data: &[f32], cols: usize) -> Self {
        Strided { first: data.as_ptr(), row_stride: cols as isize, col_stride: 1 }
    }
}

/// Below this many multiply-adds one thread does the product (Flex's threshold).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// The products a_i b_i, a_i [m, k] and b_i [k, n], over a batch of matrices whose
/// dimensions are `lead` (none: one product), as a new contiguous [lead.., m, n] tensor; each
/// operand is its first matrix and its strides over the batch dimensions. Like Flex: one or a
/// few large products each run on every thread, many small ones one per thread.
fn products(lead: &[usize], (m, k, n): (usize, usize, usize), (a, a_lead): (Strided, &[isize]), (b, b_lead): (Strided, &[isize])) -> FlexTensor {
    let batches: usize = lead.iter().product();
    let shape = Shape::from([lead, &[m, n]].concat());
    if batches * m * n * k == 0 {
        return tensor_from(vec![0.0; batches * m * n], shape);
    }
    // Element offset of matrix i of the batch, from the batch dimensions' strides.
    let offset = |strides: &[isize], i: usize| -> isize {
        let (mut rest, mut offset) = (i, 0isize);
        for (&size, &stride) in lead.iter().zip(strides).rev() {
            offset += (rest % size) as isize * stride;
            rest /= size;
        }
        offset
    };
    let mut out: Vec<f32> = Vec::with_capacity(batches * m * n);
    let out_first = out.as_mut_ptr() as usize;
    let one = |i: usize, parallelism| {
        // SAFETY: matrix i's offsets stay inside a and b (their layouts cover every batch);
        // each product writes its own m x n block of `out`'s capacity.
        unsafe {
            let dst = (out_first as *mut f32).add(i * m * n);
            write_product(m, k, n, a.shifted(offset(a_lead, i)), b.shifted(offset(b_lead, i)), dst, parallelism);
        }
    };
    let large = m * n * k >= PARALLEL_FROM;
    if batches == 1 || (large && batches < 4) {
        let parallelism = if large { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        (0..batches).for_each(|i| one(i, parallelism));
    } else {
        use rayon::prelude::*;
        (0..batches).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
    }
    // SAFETY: every block, so every element, was written above.
    unsafe { out.set_len(batches * m * n) };
    tensor_from(out, shape)
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

/// Writes a [m, k] times b [k, n] into `dst` (row-major, m x n), or adds it to what `dst`
/// holds when `accumulate`, on every thread.
///
/// # Safety
/// `a` and `b` must be readable at their strides over [m, k] and [k, n].
pub(super) unsafe fn product_into(m: usize, k: usize, n: usize, a: Strided, b: Strided, dst: &mut [f32], accumulate: bool) {
    assert!(dst.len() >= m * n, "product_into: {m} x {n} into {}", dst.len());
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if m * n * k >= PARALLEL_FROM { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // gemm computes dst = alpha dst + beta a b, reading dst only with read_dst.
    let alpha = if accumulate { 1.0 } else { 0.0 };
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, accumulate,
            a.first, a.col_stride, a.row_stride,
            b.first, b.col_stride, b.row_stride,
            alpha, 1.0, false, false, false, parallelism,
        );
    }
}

/// a [.., m, k] times b [.., k, n] matrix by matrix over equal leading dimensions (any
/// strides: a transposed view is read in place) as a new contiguous [.., m, n] tensor.
pub(super) fn batched_matmul(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (a_dims, b_dims) = (a.shape().to_vec(), b.shape().to_vec());
    let rank = a_dims.len();
    let fits = rank >= 2 && b_dims.len() == rank && a_dims[..rank - 2] == b_dims[..rank - 2] && a_dims[rank - 1] == b_dims[rank - 2];
    assert!(fits, "batched_matmul: {a_dims:?} by {b_dims:?}");
    let (m, k, n) = (a_dims[rank - 2], a_dims[rank - 1], b_dims[rank - 1]);
    let lead_strides = |x: &FlexTensor| x.layout().strides()[..rank - 2].to_vec();
    let (a_lead, b_lead) = (lead_strides(a), lead_strides(b));
    products(&a_dims[..rank - 2], (m, k, n), (Strided::of(a), &a_lead), (Strided::of(b), &b_lead))
}

/// One product a [m, k] times b [k, n].
fn product(m: usize, k: usize, n: usize, a: Strided, b: Strided) -> FlexTensor {
    products(&[], (m, k, n), (a, &[]), (b, &[]))
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
