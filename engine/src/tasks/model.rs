//! The engine's models as the task evaluation sees them: a checkpoint's language model
//! (dense or MoE), or the BTM ensemble of several, on any device.

use anyhow::Result;
use burn::prelude::*;

use super::evaluate::TaskModel;
use crate::ensemble::ensemble_sequence_weights;
use crate::ensemble_decoding::EnsembleDecoder;
use crate::generate::{last_row, tokens_tensor};
use crate::model::LanguageModel;
use crate::model::lm::{KvCache, token_log_probs};

pub struct CheckpointModel {
    pub model: LanguageModel,
    pub device: Device,
    pub max_length: usize,
}

impl TaskModel for CheckpointModel {
    fn max_length(&self) -> usize {
        self.max_length
    }

    fn loglikelihoods(&self, sequences: &[Vec<u32>], continuation_lens: &[usize]) -> Result<Vec<(f64, bool)>> {
        let ShiftedBatch { inputs, targets, width } = shifted_batch(sequences, &self.device);
        let targets_tensor = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [sequences.len(), width]), &self.device);
        let logits = self.model.forward(inputs);
        let greedy = int_values(logits.clone().argmax(2))?;
        let log_probs = float_values(token_log_probs(logits, targets_tensor))?;
        Ok(sequences
            .iter()
            .zip(continuation_lens)
            .enumerate()
            .map(|(b, (seq, &cont))| {
                let positions = (seq.len() - 1 - cont)..(seq.len() - 1);
                let ll: f64 = positions.clone().map(|t| log_probs[b * width + t] as f64).sum();
                (ll, all_greedy(positions, b * width, &greedy, &targets))
            })
            .collect())
    }

    fn shared_context_loglikelihoods(&self, context: &[u32], continuations: &[Vec<u32>]) -> Result<Vec<(f64, bool)>> {
        // The context once: its last position predicts each continuation's first token.
        let mut cache = KvCache::default();
        let (logits, _) = self.model.forward_cached(tokens_tensor(context, &self.device), &mut cache);
        let first = last_row(burn::tensor::activation::log_softmax(logits, 2));
        let first_greedy = first_argmax(&first);
        let mut out: Vec<(f64, bool)> = continuations.iter().map(|c| (first[c[0] as usize] as f64, first_greedy == c[0])).collect();
        // Every continuation's later tokens at once, over the context's keys and values.
        let rest = continuations;
        if rest.iter().any(|c| c.len() > 1) {
            let ShiftedBatch { inputs, targets, width } = shifted_batch(&rest, &self.device);
            let batch = rest.len();
            let targets_tensor = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [batch, width]), &self.device);
            let (logits, _) = self.model.forward_cached(inputs, &mut cache.repeated(batch));
            let greedy = int_values(logits.clone().argmax(2))?;
            let log_probs = float_values(token_log_probs(logits, targets_tensor))?;
            for (b, (c, value)) in rest.iter().zip(out.iter_mut()).enumerate() {
                let positions = 0..c.len() - 1;
                value.0 += positions.clone().map(|t| log_probs[b * width + t] as f64).sum::<f64>();
                value.1 &= all_greedy(positions, b * width, &greedy, &targets);
            }
        }
        Ok(out)
    }

    fn greedy(&self, context: &[u32], max_tokens: usize, eos: Option<u32>, stop: &mut dyn FnMut(&[u32]) -> bool) -> Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let (logits, _) = self.model.forward_cached(tokens_tensor(context, &self.device), &mut cache);
        let mut next = last_row(logits);
        let mut generated = Vec::new();
        while generated.len() < max_tokens {
            let id = first_argmax(&next);
            generated.push(id);
            if Some(id) == eos || stop(&generated) || generated.len() == max_tokens {
                break;
            }
            let (logits, _) = self.model.forward_cached(tokens_tensor(&[id], &self.device), &mut cache);
            next = last_row(logits);
        }
        Ok(generated)
    }
}

/// A batch of token sequences as a causal model reads them: inputs are each sequence without
/// its last token, targets without its first, padded on the right with 0 to the longest
/// (`width`; a causal model's earlier positions never see the padding).
struct ShiftedBatch {
    inputs: Tensor<2, Int>,
    targets: Vec<i64>,
    width: usize,
}

fn shifted_batch(sequences: &[Vec<u32>], device: &Device) -> ShiftedBatch {
    let batch = sequences.len();
    let width = sequences.iter().map(|s| s.len() - 1).max().unwrap_or(0);
    let (mut inputs, mut targets) = (vec![0i64; batch * width], vec![0i64; batch * width]);
    for (b, seq) in sequences.iter().enumerate() {
        for t in 0..seq.len() - 1 {
            inputs[b * width + t] = seq[t] as i64;
            targets[b * width + t] = seq[t + 1] as i64;
        }
    }
    ShiftedBatch { inputs: Tensor::from_data(TensorData::new(inputs, [batch, width]), device), targets, width }
}

fn float_values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn int_values<const D: usize>(tensor: Tensor<D, Int>) -> Result<Vec<i64>> {
    tensor.into_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// The index of the largest value (the first of equal ones, as torch's argmax).
fn first_argmax(values: &[f32]) -> u32 {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

/// Whether the argmax is the target at every one of `positions` of the row at `offset`.
fn all_greedy(positions: std::ops::Range<usize>, offset: usize, argmax: &[i64], targets: &[i64]) -> bool {
    positions.into_iter().all(|t| argmax[offset + t] == targets[offset + t])
}

/// The BTM ensemble (Li et al. 2022, §3) as a task model: each token's probability is the
/// experts' mixture under the domain posterior formed from the tokens before it in the same
/// request (context included), as `btx ensemble` scores perplexity; the prior is the one given
/// (uniform unless asked otherwise: a task has no held-out text of its own domain to cache one
/// from).
pub struct EnsembleModel {
    pub experts: Vec<LanguageModel>,
    pub log_prior: Vec<f64>,
    pub top_k: usize,
    pub device: Device,
    pub max_length: usize,
}

impl TaskModel for EnsembleModel {
    fn max_length(&self) -> usize {
        self.max_length
    }

    fn loglikelihoods(&self, sequences: &[Vec<u32>], continuation_lens: &[usize]) -> Result<Vec<(f64, bool)>> {
        let ShiftedBatch { inputs, targets, width } = shifted_batch(sequences, &self.device);
        let batch = sequences.len();
        let targets_tensor = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [batch, width]), &self.device);
        // Each expert's next-token probabilities (kept on the device for the mixture's argmax)
        // and its log-probability of each target.
        let mut probs = Vec::with_capacity(self.experts.len());
        let mut target_lp = Vec::with_capacity(self.experts.len());
        for expert in &self.experts {
            let log_probs = burn::tensor::activation::log_softmax(expert.forward(inputs.clone()), 2);
            target_lp.push(float_values(log_probs.clone().gather(2, targets_tensor.clone().unsqueeze_dim(2)).squeeze_dim::<2>(2))?);
            probs.push(log_probs.exp());
        }
        // The posterior's weights per request and position (padding keeps the last ones).
        let mut weights = vec![vec![0f32; batch * width]; self.experts.len()];
        let mut out = Vec::with_capacity(batch);
        for (b, (seq, &cont)) in sequences.iter().zip(continuation_lens).enumerate() {
            let len = seq.len() - 1;
            let rows: Vec<Vec<f64>> = target_lp.iter().map(|lp| lp[b * width..b * width + len].iter().map(|&v| v as f64).collect()).collect();
            let rows: Vec<&[f64]> = rows.iter().map(|r| r.as_slice()).collect();
            let (lp, w) = ensemble_sequence_weights(&rows, &self.log_prior, self.top_k);
            for t in 0..width {
                for (j, expert_weights) in weights.iter_mut().enumerate() {
                    expert_weights[b * width + t] = w[t.min(len - 1)][j].exp() as f32;
                }
            }
            out.push(lp[len - cont..].iter().sum::<f64>());
        }
        let mut mixture: Option<Tensor<3>> = None;
        for (p, w) in probs.into_iter().zip(weights) {
            let term = p * Tensor::<2>::from_data(TensorData::new(w, [batch, width]), &self.device).unsqueeze_dim::<3>(2);
            mixture = Some(match mixture {
                Some(m) => m + term,
                None => term,
            });
        }
        let greedy = int_values(mixture.expect("an ensemble has experts").argmax(2))?;
        Ok(out
            .into_iter()
            .zip(sequences.iter().zip(continuation_lens))
            .enumerate()
            .map(|(b, (ll, (seq, &cont)))| (ll, all_greedy((seq.len() - 1 - cont)..(seq.len() - 1), b * width, &greedy, &targets)))
            .collect())
    }

    fn greedy(&self, context: &[u32], max_tokens: usize, eos: Option<u32>, stop: &mut dyn FnMut(&[u32]) -> bool) -> Result<Vec<u32>> {
        let mut decoder = EnsembleDecoder::new(&self.experts, self.log_prior.clone(), self.top_k, &self.device);
        decoder.prefill(context, |_, _| Ok(()))?;
        let mut generated = Vec::new();
        while generated.len() < max_tokens {
            let mixture = decoder.mixture();
            let id = first_argmax(&mixture);
            generated.push(id);
            if Some(id) == eos || stop(&generated) || generated.len() == max_tokens {
                break;
            }
            decoder.accept(id);
        }
        Ok(generated)
    }
}
