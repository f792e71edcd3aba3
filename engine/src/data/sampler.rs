//! Draws training batches from the domains by mixture weight. Its position is one RNG state,
//! saved with each checkpoint, so a resumed run sees exactly the batches it would have seen.

use burn::prelude::*;

use super::corpus::Domain;
use super::rng::Rng;

/// A batch: inputs and next-token targets, each `[batch, seq_len]`.
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    /// Which domain each row came from.
    pub domains: Vec<usize>,
    /// Chat data: per target (row-major `[batch, seq_len]`), 1 where the loss counts it, 0
    /// where it does not (a prompt's token); `None` when every target counts.
    pub target_mask: Option<Vec<f32>>,
}

impl Batch {
    /// Targets the loss counts.
    pub fn counted(&self) -> f64 {
        match &self.target_mask {
            Some(mask) => mask.iter().map(|&m| m as f64).sum(),
            None => self.targets.dims().iter().product::<usize>() as f64,
        }
    }
}

pub struct MixtureSampler {
    cumulative: Vec<f64>,
    rng: Rng,
}

impl MixtureSampler {
    pub fn new(domains: &[Domain], seed: u64) -> Self {
        let total: f64 = domains.iter().map(|d| d.weight).sum();
        let mut acc = 0.0;
        let cumulative = domains
            .iter()
            .map(|d| {
                acc += d.weight / total;
                acc
            })
            .collect();
        Self { cumulative, rng: Rng::new(seed) }
    }

    /// Where the sampler stands (what a checkpoint saves).
    pub fn state(&self) -> u64 {
        self.rng.state
    }

    /// Continues from a position `state` returned.
    pub fn restore(&mut self, state: u64) {
        self.rng.state = state;
    }

    fn pick_domain(&mut self) -> usize {
        let u = self.rng.unit();
        let last = self.cumulative.len() - 1;
        // Skip zero-weight domains: the first domain whose cumulative share exceeds u.
        self.cumulative.iter().position(|&c| u < c).unwrap_or(last)
    }

    pub fn next_batch(&mut self, domains: &[Domain], batch_size: usize, device: &Device) -> Batch {
        let mut rows = Vec::with_capacity(batch_size);
        let mut masks = Vec::with_capacity(batch_size);
        let mut picked = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let d = self.pick_domain();
            let windows = &domains[d].train;
            let i = self.rng.below(windows.len() as u64) as usize;
            rows.push(windows.get(i));
            masks.push(windows.mask(i));
            picked.push(d);
        }
        let mut batch = make_batch(&rows, device);
        batch.target_mask = target_mask(&masks, rows[0].len());
        batch.domains = picked;
        batch
    }
}

/// The targets' mask of windows whose token masks are `masks` (`None`: a row whose every
/// token counts); `None` when no row has one.
pub fn target_mask(masks: &[Option<Vec<u8>>], window: usize) -> Option<Vec<f32>> {
    if masks.iter().all(Option::is_none) {
        return None;
    }
    let mut out = Vec::with_capacity(masks.len() * (window - 1));
    for mask in masks {
        match mask {
            Some(m) => out.extend(m[1..].iter().map(|&b| b as f32)),
            None => out.extend(std::iter::repeat_n(1.0, window - 1)),
        }
    }
    Some(out)
}

/// Stacks token sequences of `seq_len + 1` into an input/target batch.
pub fn make_batch(rows: &[Vec<u32>], device: &Device) -> Batch {
    let seq_len = rows[0].len() - 1;
    let mut inputs = Vec::with_capacity(rows.len() * seq_len);
    let mut targets = Vec::with_capacity(rows.len() * seq_len);
    for row in rows {
        inputs.extend(row[..seq_len].iter().map(|&t| t as i64));
        targets.extend(row[1..].iter().map(|&t| t as i64));
    }
    let shape = [rows.len(), seq_len];
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
        targets: Tensor::from_data(TensorData::new(targets, shape), device),
        domains: vec![],
        target_mask: None,
    }
}
