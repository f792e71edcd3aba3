//! Elementwise loops over f32 slices that the compiler vectorises: the CPU backend's (Flex)
//! `exp` and `sigmoid` call libm's `expf` one element at a time, on one thread, which made
//! SiLU 20x slower than PyTorch's (bench/RESULTS.md). Here `exp` is a branch-free polynomial,
//! so the loops compile to SIMD; each runs in chunks on rayon's threads, in an AVX2+FMA copy
//! chosen at run time on x86-64 (the baseline build targets SSE2) and plainly elsewhere
//! (aarch64's baseline has NEON).

use rayon::prelude::*;

/// Elements per parallel task: large enough that splitting costs nothing measurable.
const CHUNK: usize = 16 * 1024;

/// e^x for f32, within 2 ulp of libm's `expf` over the range where e^x is a normal float,
/// without branches. Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by a degree-6
/// polynomial, 2^n written into the exponent bits. Inputs are clamped to [-87.3, 88.3], so the
/// result is finite and normal (e^-87.3 ~ 1.2e-38 instead of a subnormal or 0: no caller here
/// can tell).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n * LN2_HI is exact for |n| <= 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds x / ln 2 to the nearest integer n in the float unit, and leaves
    // n in the low mantissa bits of the sum (its bits are 0x4B40_0000 + n), so 2^n is built
    // with integer operations: no float-to-int conversion, whose saturating `as` does not
    // vectorise.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e_r = p * r * r + r + 1.0;
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    e_r * two_to_n
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Runs `body` on every chunk of the outputs with the matching chunks of the inputs, in
/// parallel, each call compiled for the best SIMD the CPU offers (pulp's run-time dispatch:
/// AVX2+FMA or AVX-512 on x86-64, NEON on aarch64), so the plain loops in `body` vectorise.
fn elementwise<const I: usize, const O: usize>(
    inputs: [&[f32]; I],
    outputs: [&mut [f32]; O],
    body: impl Fn([&[f32]; I], [&mut [f32]; O]) + Sync,
) {
    in_chunks(CHUNK, inputs, outputs, #[inline(always)] |_, ins, outs| body(ins, outs));
}

/// [`elementwise`] over chunks of `chunk` elements (the last may be shorter); `body` also
/// gets the chunk's first index.
fn in_chunks<const I: usize, const O: usize>(
    chunk: usize,
    inputs: [&[f32]; I],
    outputs: [&mut [f32]; O],
    body: impl Fn(usize, [&[f32]; I], [&mut [f32]; O]) + Sync,
) {
    let len = outputs[0].len();
    assert!(
        inputs.iter().map(|x| x.len()).chain(outputs.iter().map(|x| x.len())).all(|n| n == len),
        "elementwise kernel: inputs and outputs differ in length"
    );
    let arch = pulp::Arch::new();
    let mut chunks: Vec<[&mut [f32]; O]> = Vec::with_capacity(len.div_ceil(chunk.max(1)));
    let mut rest = outputs;
    while !rest[0].is_empty() {
        let n = rest[0].len().min(chunk);
        let mut heads = Vec::with_capacity(O);
        rest = rest.map(|slice| {
            let (head, tail) = slice.split_at_mut(n);
            heads.push(head);
            tail
        });
        chunks.push(heads.try_into().unwrap_or_else(|_| unreachable!()));
    }
    chunks.into_par_iter().enumerate().for_each(|(i, outs)| {
        let start = i * chunk;
        let ins = inputs.map(|x| &x[start..start + outs[0].len()]);
        arch.dispatch(#[inline(always)] || body(start, ins, outs));
    });
}

/// Rows of `row_len` per parallel task: about `CHUNK` elements, whole rows.
fn rows_chunk(row_len: usize) -> usize {
    (CHUNK / row_len.max(1)).max(1) * row_len
}

/// Attention's probabilities, in place: each row of `scores` (`[.., seq_q, seq_k]` flattened,
/// rows of `seq_k`) becomes softmax(scale * row). With `causal_offset` = Some(seq_k - seq_q),
/// query i sees keys 0..=i + offset only: the others get probability 0 (as a -inf score).
pub fn softmax_rows_in_place(scores: &mut [f32], seq_q: usize, seq_k: usize, scale: f32, causal_offset: Option<usize>) {
    in_chunks(rows_chunk(seq_k), [], [scores], #[inline(always)] |start, [], [rows]| {
        for (r, row) in rows.chunks_exact_mut(seq_k).enumerate() {
            let query = (start / seq_k + r) % seq_q;
            let seen = causal_offset.map_or(seq_k, |offset| (query + offset + 1).min(seq_k));
            let (visible, hidden) = row.split_at_mut(seen);
            let max = visible.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
            let mut sum = 0.0;
            for x in visible.iter_mut() {
                *x = exp(*x * scale - max);
                sum += *x;
            }
            let inverse = 1.0 / sum;
            visible.iter_mut().for_each(|x| *x *= inverse);
            hidden.fill(0.0);
        }
    });
}

/// The softmax's backward pass, in place: each row of `grad` (d loss / d probabilities)
/// becomes d loss / d scores = scale * p * (grad - sum(p * grad)), with `probs` the forward
/// pass's rows (0 where masked, so masked scores get 0).
pub fn softmax_rows_backward_in_place(probs: &[f32], grad: &mut [f32], seq_k: usize, scale: f32) {
    in_chunks(rows_chunk(seq_k), [probs], [grad], #[inline(always)] |_, [probs], [grads]| {
        for (p, g) in probs.chunks_exact(seq_k).zip(grads.chunks_exact_mut(seq_k)) {
            let dot: f32 = p.iter().zip(g.iter()).map(|(p, g)| p * g).sum();
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - dot);
            }
        }
    });
}

/// Cross-entropy over rows of logits, in place (the LM head's loss, `cross_entropy.rs`): for
/// row r (`vocab` logits z, target y = `targets[r]`, weight w = `weights[r]`) adds
/// w (logsumexp(z) - z_y) = -w log softmax(z)_y to the returned sum; with `gradient`, the row
/// becomes its gradient w (softmax(z) - onehot(y)). Rows of weight 0 (tokens the loss does not
/// count) add nothing and get a zero gradient.
pub fn cross_entropy_rows_in_place(logits: &mut [f32], vocab: usize, targets: &[usize], weights: &[f32], gradient: bool) -> f64 {
    assert!(vocab > 0 && logits.len() == targets.len() * vocab && weights.len() == targets.len(), "cross_entropy_rows: shapes differ");
    let arch = pulp::Arch::new();
    let rows_per_task = rows_chunk(vocab) / vocab;
    logits
        .par_chunks_mut(rows_per_task * vocab)
        .enumerate()
        .map(|(task, rows)| {
            let first = task * rows_per_task;
            arch.dispatch(#[inline(always)] || {
                let mut loss = 0.0f64;
                for (r, row) in rows.chunks_exact_mut(vocab).enumerate() {
                    let (target, weight) = (targets[first + r], weights[first + r]);
                    if weight == 0.0 {
                        if gradient {
                            row.fill(0.0);
                        }
                        continue;
                    }
                    let max = lanes_max(row);
                    let target_logit = row[target];
                    for x in row.iter_mut() {
                        *x = exp(*x - max);
                    }
                    let sum = lanes_sum(row);
                    loss += weight as f64 * ((max - target_logit) as f64 + (sum as f64).ln());
                    if gradient {
                        let scale = weight / sum;
                        row.iter_mut().for_each(|x| *x *= scale);
                        row[target] -= weight;
                    }
                }
                loss
            })
        })
        .sum()
}

/// The largest element, in 8 independent lanes (a single running maximum is a chain of
/// dependent operations the compiler does not vectorise).
#[inline(always)]
fn lanes_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    tail.iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// The sum of the elements, in 8 independent lanes (vectorised, as [`lanes_max`]).
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// One AdamW update in place (the optimizer's, `train/adamw.rs`), one pass over the four
/// streams: with g = grad_scale * grad,
///   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
///   x = decay x - lr (m c1) / (sqrt(v c2) + eps)
/// (c1, c2 the bias corrections, decay = 1 - lr wd). The same operations in the same order
/// as the tensor-by-tensor version, so the same floats.
pub fn adamw_in_place(x: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], h: &AdamWScalars) {
    let h = *h;
    elementwise([grad], [x, m, v], #[inline(always)] move |[grad], [x, m, v]| {
        for i in 0..grad.len() {
            let g = grad[i] * h.grad_scale;
            let m_i = m[i] * h.b1 + g * h.one_minus_b1;
            let v_i = v[i] * h.b2 + g * g * h.one_minus_b2;
            let step = (m_i * h.m_correction) / ((v_i * h.v_correction).sqrt() + h.eps);
            x[i] = x[i] * h.decay - step * h.lr;
            m[i] = m_i;
            v[i] = v_i;
        }
    });
}

/// The scalars of one AdamW update, as f32 (what the backend's scalar operations use).
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub lr: f32,
    pub grad_scale: f32,
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    pub eps: f32,
    /// 1 - lr * weight decay (1 where the parameter is not decayed).
    pub decay: f32,
    pub m_correction: f32,
    pub v_correction: f32,
}

/// out = e^x.
pub fn exp_into(x: &[f32], out: &mut [f32]) {
    elementwise([x], [out], #[inline(always)] |[x], [out]| {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = exp(x);
        }
    });
}

/// SwiGLU's gated product (Shazeer 2020): out = silu(gate) * up = gate * up / (1 + e^-gate).
pub fn swiglu_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    elementwise([gate, up], [out], #[inline(always)] |[gate, up], [out]| {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    });
}

/// The gradients of `swiglu` from the output's gradient `grad`, with s = sigmoid(gate):
/// d gate = grad * up * s * (1 + gate * (1 - s)) (the derivative of gate * s), d up = grad * gate * s.
pub fn swiglu_backward_into(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    elementwise([gate, up, grad], [d_gate, d_up], #[inline(always)] |[gate, up, grad], [d_gate, d_up]| {
        for i in 0..grad.len() {
            let (g, u, dy) = (gate[i], up[i], grad[i]);
            let s = sigmoid(g);
            d_gate[i] = dy * u * s * (1.0 + g * (1.0 - s));
            d_up[i] = dy * g * s;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_where_the_result_is_normal() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst <= 2.0 * f32::EPSILON, "largest relative error {worst:e}");
        // Clamped, never inf, NaN or zero.
        for x in [-1e30f32, -200.0, 200.0, 1e30] {
            assert!(exp(x).is_normal(), "exp({x}) = {}", exp(x));
        }
    }

    #[test]
    fn the_slice_kernels_match_their_scalar_formulas_across_chunk_boundaries() {
        let n = 2 * CHUNK + 17;
        let gate: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 997) as f32 / 500.0 - 1.0).collect();
        let grad: Vec<f32> = (0..n).map(|i| ((i * 31) % 101) as f32 / 50.0 - 1.0).collect();
        let (mut out, mut d_gate, mut d_up) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        swiglu_into(&gate, &up, &mut out);
        swiglu_backward_into(&gate, &up, &grad, &mut d_gate, &mut d_up);
        for i in 0..n {
            let (g, u) = (gate[i] as f64, up[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs());
            assert!(close(out[i], g * s * u), "swiglu at {i}");
            assert!(close(d_gate[i], grad[i] as f64 * u * s * (1.0 + g * (1.0 - s))), "d gate at {i}");
            assert!(close(d_up[i], grad[i] as f64 * g * s), "d up at {i}");
        }
        let mut e = vec![0.0; n];
        exp_into(&up, &mut e);
        assert!(e.iter().zip(&up).all(|(e, u)| (e - u.exp()).abs() <= 2.0 * f32::EPSILON * u.exp()));
    }

    #[test]
    fn softmax_rows_mask_the_future_and_their_backward_pass_is_the_jacobian_product() {
        let (seq_q, seq_k, scale) = (3, 5, 0.5f32);
        let rows = 2 * seq_q;
        let scores: Vec<f32> = (0..rows * seq_k).map(|i| ((i * 37) % 23) as f32 / 3.0 - 3.0).collect();
        let upstream: Vec<f32> = (0..rows * seq_k).map(|i| ((i * 11) % 7) as f32 - 3.0).collect();
        for offset in [None, Some(0), Some(2)] {
            let mut probs = scores.clone();
            softmax_rows_in_place(&mut probs, seq_q, seq_k, scale, offset);
            let mut grad = upstream.clone();
            softmax_rows_backward_in_place(&probs, &mut grad, seq_k, scale);
            for r in 0..rows {
                let seen = offset.map_or(seq_k, |o| (r % seq_q + o + 1).min(seq_k));
                let row = &scores[r * seq_k..][..seq_k];
                let e: Vec<f64> = (0..seq_k).map(|j| if j < seen { (scale as f64 * row[j] as f64).exp() } else { 0.0 }).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / total).collect();
                let g = &upstream[r * seq_k..][..seq_k];
                let dot: f64 = p.iter().zip(g).map(|(p, g)| p * *g as f64).sum();
                for j in 0..seq_k {
                    assert!((probs[r * seq_k + j] as f64 - p[j]).abs() < 1e-6, "p[{r}][{j}] with {offset:?}");
                    // d loss / d score_j = sum_i g_i d p_i / d s_j = scale * p_j (g_j - sum_i g_i p_i)
                    let expected = scale as f64 * p[j] * (g[j] as f64 - dot);
                    assert!((grad[r * seq_k + j] as f64 - expected).abs() < 1e-5, "d s[{r}][{j}] with {offset:?}");
                }
            }
        }
    }
}
