//! The BTM ensemble (Li et al. 2022): an evaluation-time model that mixes the experts'
//! next-token distributions with the domain posterior from Bayes' rule,
//!   p(x_t | x_<t) = sum_j p(x_t | x_<t, D=j) P(D=j | x_<t),
//!   P(D=j | x_<t) ∝ p(x_<t | D=j) P(D=j),
//! with the "cached prior" P(D=j) estimated on held-out sequences of the evaluation domain
//! (an exponential moving average, alpha 0.3, of per-sequence posteriors) and then frozen.
//! Top-k ensembling keeps the k most probable experts at each position and renormalises.

use burn::prelude::*;

use crate::data::Domain;
use crate::data::sampler::make_batch;
use crate::eval::DomainEval;
use crate::model::LanguageModel;

pub const PRIOR_EMA: f64 = 0.3;

fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// `[expert][sequence][position]` log-probabilities of the targets of `seqs`.
fn expert_log_probs(experts: &[LanguageModel], seqs: &[Vec<u32>], batch_size: usize, device: &Device) -> Vec<Vec<Vec<f64>>> {
    experts
        .iter()
        .map(|model| {
            let mut out = Vec::with_capacity(seqs.len());
            for chunk in seqs.chunks(batch_size) {
                let batch = make_batch(chunk, device);
                let [b, s] = batch.targets.dims();
                let lp: Vec<f32> = model
                    .token_log_probs(batch.inputs, batch.targets)
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .expect("f32");
                for r in 0..b {
                    out.push(lp[r * s..(r + 1) * s].iter().map(|&v| v as f64).collect());
                }
            }
            out
        })
        .collect()
}

/// The ensemble's normalised log-weights at one position from `prefix[j]` = log P(D=j) +
/// log p(x_<t | D=j): the posterior, cut to its `top_k` most probable experts and
/// renormalised (the others get -inf).
pub fn posterior_log_weights(prefix: &[f64], top_k: usize) -> Vec<f64> {
    let norm = log_sum_exp(prefix);
    let mut order: Vec<usize> = (0..prefix.len()).collect();
    order.sort_by(|&a, &b| prefix[b].total_cmp(&prefix[a]));
    order.truncate(top_k.clamp(1, prefix.len()));
    let kept_norm = log_sum_exp(&order.iter().map(|&j| prefix[j] - norm).collect::<Vec<_>>());
    let mut weights = vec![f64::NEG_INFINITY; prefix.len()];
    for j in order {
        weights[j] = prefix[j] - norm - kept_norm;
    }
    weights
}

/// The ensemble's log-probability of each target of one sequence, given each expert's
/// log-probabilities `lp[j][t]` and the prior.
pub fn ensemble_sequence(lp: &[&[f64]], log_prior: &[f64], top_k: usize) -> Vec<f64> {
    ensemble_sequence_weights(lp, log_prior, top_k).0
}

/// `ensemble_sequence`, and the log-weights it gave each expert at each position
/// (`[t][j]`).
pub fn ensemble_sequence_weights(lp: &[&[f64]], log_prior: &[f64], top_k: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let len = lp[0].len();
    let mut prefix = log_prior.to_vec(); // log P(D=j) + log p(x_<t | D=j)
    let (mut out, mut weights) = (Vec::with_capacity(len), Vec::with_capacity(len));
    for t in 0..len {
        let w = posterior_log_weights(&prefix, top_k);
        let terms: Vec<f64> = w.iter().enumerate().filter(|(_, w)| w.is_finite()).map(|(j, w)| w + lp[j][t]).collect();
        out.push(log_sum_exp(&terms));
        for (p, lp) in prefix.iter_mut().zip(lp) {
            *p += lp[t];
        }
        weights.push(w);
    }
    (out, weights)
}

/// Per-domain perplexity of the ensemble. For each domain the first `prior_sequences` of its
/// validation split estimate the cached prior; the next `eval_sequences` are scored.
pub fn evaluate_ensemble(
    experts: &[LanguageModel],
    domains: &[Domain],
    batch_size: usize,
    prior_sequences: usize,
    eval_sequences: usize,
    top_k: usize,
    device: &Device,
) -> Vec<DomainEval> {
    let n = experts.len();
    domains
        .iter()
        .map(|domain| {
            let dev_count = prior_sequences.min(domain.val.len() / 2);
            let dev = &domain.val.range(0..dev_count)[..];
            let test = &domain.val.range(dev_count..dev_count.saturating_add(eval_sequences))[..];
            // Cached prior: EMA of per-sequence posteriors, starting uniform.
            let mut prior = vec![1.0 / n as f64; n];
            let dev_lp = expert_log_probs(experts, dev, batch_size, device);
            for s in 0..dev.len() {
                let scores: Vec<f64> = (0..n).map(|j| prior[j].ln() + dev_lp[j][s].iter().sum::<f64>()).collect();
                let norm = log_sum_exp(&scores);
                for j in 0..n {
                    prior[j] = (1.0 - PRIOR_EMA) * prior[j] + PRIOR_EMA * (scores[j] - norm).exp();
                }
            }
            let log_prior: Vec<f64> = prior.iter().map(|p| p.max(1e-12).ln()).collect();
            let test_lp = expert_log_probs(experts, test, batch_size, device);
            let (mut sum, mut tokens) = (0.0, 0);
            for s in 0..test.len() {
                let per_expert: Vec<&[f64]> = (0..n).map(|j| test_lp[j][s].as_slice()).collect();
                let lp = ensemble_sequence(&per_expert, &log_prior, top_k);
                sum -= lp.iter().sum::<f64>();
                tokens += lp.len();
            }
            let loss = sum / tokens.max(1) as f64;
            DomainEval { domain: domain.name.clone(), loss, perplexity: loss.exp(), tokens, routing: Some(crate::eval::DomainRouting::Prior(prior)), dropped: 0.0, router_entropy: vec![] }
        })
        .collect()
}

/// The experts' mean domain posterior over `seqs` (uniform prior): for each sequence
/// P(D=j | x) ∝ p(x | D=j), averaged over the sequences. BTM (Li et al. 2022, §4) weights
/// the average that a new expert branches from by it: the experts closest to the new
/// domain count most.
pub fn mean_domain_posterior(experts: &[LanguageModel], seqs: &[Vec<u32>], batch_size: usize, device: &Device) -> Vec<f64> {
    let lp = expert_log_probs(experts, seqs, batch_size, device);
    let mut mean = vec![0.0; experts.len()];
    for s in 0..seqs.len() {
        let log_likelihood: Vec<f64> = lp.iter().map(|e| e[s].iter().sum()).collect();
        let norm = log_sum_exp(&log_likelihood);
        for (m, ll) in mean.iter_mut().zip(&log_likelihood) {
            *m += (ll - norm).exp() / seqs.len() as f64;
        }
    }
    mean
}
