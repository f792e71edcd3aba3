//! Validation loss and perplexity per domain.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Domain;
use crate::data::sampler::make_batch;
use crate::model::LanguageModel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEval {
    pub domain: String,
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub tokens: usize,
}

/// Evaluates `model` (without autodiff) on the first `max_batches` validation batches of each
/// domain; `max_batches = 0` means the whole validation split.
pub fn evaluate(model: &LanguageModel, domains: &[Domain], batch_size: usize, max_batches: usize, device: &Device) -> Vec<DomainEval> {
    domains
        .iter()
        .map(|domain| {
            let limit = if max_batches == 0 { domain.val.len() } else { (max_batches * batch_size).min(domain.val.len()) };
            let (mut sum, mut tokens) = (0.0f64, 0usize);
            for chunk in domain.val[..limit].chunks(batch_size) {
                let rows: Vec<&Vec<u32>> = chunk.iter().collect();
                let batch = make_batch(&rows, device);
                let [b, s] = batch.targets.dims();
                let log_probs = model.token_log_probs(batch.inputs, batch.targets);
                sum -= log_probs.sum().into_scalar::<f32>() as f64;
                tokens += b * s;
            }
            let loss = sum / tokens.max(1) as f64;
            DomainEval { domain: domain.name.clone(), loss, perplexity: loss.exp(), tokens }
        })
        .collect()
}

/// The mean of the domains' losses, and its perplexity.
pub fn mean_loss(evals: &[DomainEval]) -> f64 {
    evals.iter().map(|e| e.loss).sum::<f64>() / evals.len().max(1) as f64
}
