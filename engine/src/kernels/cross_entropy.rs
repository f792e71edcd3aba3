//! The LM head and its cross-entropy in one pass over chunks of tokens, on the CPU backend
//! (Liger Kernel's fused linear cross-entropy, Hsu et al. 2024, §3.2): the [tokens x vocabulary]
//! logits never exist whole, and neither do their softmax, exponentials and gradient, which
//! at Qwen's 151,936-token vocabulary are each 0.6 GB for 1024 tokens. For each chunk of tokens
//! the logits are computed, turned in place into their gradient, and consumed by the two
//! products that give the gradients of the hidden states and of the head's weight; the
//! backward pass then only scales those by the loss's upstream gradient (a scalar). The same
//! three matrix products as the unfused head, and one elementwise pass instead of several.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape};

use super::flex::tensor_from;
use super::gemm::{Strided, product_into};
use super::vector_math::cross_entropy_rows_in_place;

/// Logits held at once, in elements (256 MB of f32): at a 152k vocabulary 441 tokens a
/// chunk, so few passes over the head's gradient; at small vocabularies the whole batch.
const CHUNK_ELEMENTS: usize = 64 * 1024 * 1024;

/// Which gradients the forward pass computes for the backward pass.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub hidden: bool,
    pub weight: bool,
}

/// The loss sum_t w_t (logsumexp(h_t W) - (h_t W)[y_t]) of hidden states `hidden` [tokens,
/// d_model] under the head `weight` [d_model, vocab] (any strides: a tied embedding's
/// transpose is read in place), and the gradients `wanted` of that loss: d hidden [tokens,
/// d_model] = G W^T and d weight [d_model, vocab] = H^T G, with G the logits' gradient.
pub(super) fn linear_cross_entropy(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &[usize],
    token_weights: &[f32],
    wanted: Wanted,
) -> (FlexTensor, Option<FlexTensor>, Option<FlexTensor>) {
    let vocab = weight.shape().dims::<2>()[1];
    let chunk = CHUNK_ELEMENTS / vocab.max(1);
    let (loss, d_hidden, d_weight) = in_chunks(hidden, weight, targets, token_weights, wanted, chunk);
    (tensor_from(vec![loss as f32], Shape::from([1])), d_hidden, d_weight)
}

/// [`linear_cross_entropy`], `chunk` tokens at a time.
fn in_chunks(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &[usize],
    token_weights: &[f32],
    wanted: Wanted,
    chunk: usize,
) -> (f64, Option<FlexTensor>, Option<FlexTensor>) {
    let [tokens, d_model] = hidden.shape().dims::<2>();
    let [weight_rows, vocab] = weight.shape().dims::<2>();
    assert!(
        hidden.dtype() == DType::F32 && weight.dtype() == DType::F32 && weight_rows == d_model && targets.len() == tokens && token_weights.len() == tokens,
        "linear_cross_entropy: hidden {:?}, weight {:?}, {} targets, {} weights",
        hidden.shape(),
        weight.shape(),
        targets.len(),
        token_weights.len()
    );
    if let Some(&bad) = targets.iter().find(|&&t| t >= vocab) {
        panic!("linear_cross_entropy: target token {bad} outside the vocabulary of {vocab}");
    }
    let (h, w) = (Strided::of(hidden), Strided::of(weight));
    let chunk = chunk.clamp(1, tokens.max(1));
    let mut logits = vec![0.0f32; chunk * vocab];
    let mut d_hidden = wanted.hidden.then(|| vec![0.0f32; tokens * d_model]);
    let mut d_weight = wanted.weight.then(|| vec![0.0f32; d_model * vocab]);
    let gradient = wanted.hidden || wanted.weight;
    let mut loss = 0.0;
    for start in (0..tokens).step_by(chunk) {
        let rows = chunk.min(tokens - start);
        let logits = &mut logits[..rows * vocab];
        // SAFETY: rows start..start + rows of hidden exist; logits holds rows x vocab.
        unsafe { product_into(rows, d_model, vocab, h.from_row(start), w, logits, false) };
        let range = start..start + rows;
        loss += cross_entropy_rows_in_place(logits, vocab, &targets[range.clone()], &token_weights[range], gradient);
        let g = Strided::row_major(logits, vocab);
        if let Some(d_hidden) = &mut d_hidden {
            // d hidden (these rows) = G W^T.
            let dst = &mut d_hidden[start * d_model..(start + rows) * d_model];
            unsafe { product_into(rows, vocab, d_model, g, w.transposed(), dst, false) };
        }
        if let Some(d_weight) = &mut d_weight {
            // d weight += H^T G over this chunk's rows.
            let h_rows = unsafe { h.from_row(start) }.transposed();
            unsafe { product_into(d_model, rows, vocab, h_rows, g, d_weight, start > 0) };
        }
    }
    let d_hidden = d_hidden.map(|d| tensor_from(d, Shape::from([tokens, d_model])));
    let d_weight = d_weight.map(|d| tensor_from(d, Shape::from([d_model, vocab])));
    (loss, d_hidden, d_weight)
}

/// A tensor of token ids as indices (any integer dtype the backend stores).
pub(super) fn token_ids(x: &FlexTensor) -> Vec<usize> {
    // A negative id becomes usize::MAX, which the vocabulary check refuses.
    fn indices<T: Copy + TryInto<usize>>(values: Option<&[T]>) -> Vec<usize> {
        values.expect("a contiguous tensor of its own dtype").iter().map(|&t| t.try_into().unwrap_or(usize::MAX)).collect()
    }
    let x = x.to_contiguous();
    match x.dtype() {
        DType::I64 => indices(x.as_slice::<i64>()),
        DType::I32 => indices(x.as_slice::<i32>()),
        DType::U32 => indices(x.as_slice::<u32>()),
        DType::U64 => indices(x.as_slice::<u64>()),
        other => panic!("linear_cross_entropy: token ids stored as {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::f32s;

    fn tensor(rows: usize, cols: usize, seed: u32) -> FlexTensor {
        // A fixed pseudo-random fill (no RNG dependency): values in about [-2, 2].
        let values = (0..rows * cols).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0 - 0.5) * 4.0);
        tensor_from(values.collect(), Shape::from([rows, cols]))
    }

    #[test]
    fn chunks_of_tokens_give_the_whole_batchs_loss_and_gradients() {
        let (tokens, d_model, vocab) = (11, 6, 37);
        let (hidden, weight) = (tensor(tokens, d_model, 1), tensor(d_model, vocab, 2));
        let targets: Vec<usize> = (0..tokens).map(|t| (t * 7 + 3) % vocab).collect();
        // One token not counted (weight 0), the others unequally.
        let weights: Vec<f32> = (0..tokens).map(|t| if t == 4 { 0.0 } else { 0.05 + t as f32 * 0.01 }).collect();
        let all = Wanted { hidden: true, weight: true };
        let (loss, d_hidden, d_weight) = in_chunks(&hidden, &weight, &targets, &weights, all, tokens);
        // The loss by its definition, row by row in f64.
        let (h, w) = (f32s(&hidden), f32s(&weight));
        let mut expected = 0.0f64;
        for t in 0..tokens {
            let logits: Vec<f64> = (0..vocab).map(|v| (0..d_model).map(|i| h[t * d_model + i] as f64 * w[i * vocab + v] as f64).sum()).collect();
            let lse = logits.iter().map(|z| z.exp()).sum::<f64>().ln();
            expected += weights[t] as f64 * (lse - logits[targets[t]]);
        }
        assert!((loss - expected).abs() < 1e-5 * expected.abs(), "loss {loss} against {expected}");
        for chunk in [1, 3, 10] {
            let (chunked, dh, dw) = in_chunks(&hidden, &weight, &targets, &weights, all, chunk);
            assert!((chunked - loss).abs() < 1e-6 * loss.abs(), "chunk {chunk}: loss {chunked} against {loss}");
            for (a, b) in [(&dh, &d_hidden), (&dw, &d_weight)] {
                let (a, b) = (f32s(a.as_ref().unwrap()).into_owned(), f32s(b.as_ref().unwrap()).into_owned());
                let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-6, "chunk {chunk}: gradients differ by {diff}");
            }
        }
        // The uncounted token's hidden state gets no gradient.
        let dh = f32s(d_hidden.as_ref().unwrap()).into_owned();
        assert!(dh[4 * d_model..5 * d_model].iter().all(|&x| x == 0.0));
    }
}
