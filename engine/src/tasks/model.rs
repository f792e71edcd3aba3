//! The engine's models as the task evaluation sees them: a checkpoint's language model
//! (dense or MoE) on any device.

use anyhow::Result;
use burn::prelude::*;

use super::evaluate::TaskModel;
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
        let batch = sequences.len();
        let width = sequences.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        // Inputs are each sequence without its last token, targets without its first, padded
        // on the right (a causal model's earlier positions never see the padding).
        let (mut inputs, mut targets) = (vec![0i64; batch * width], vec![0i64; batch * width]);
        for (b, seq) in sequences.iter().enumerate() {
            for t in 0..seq.len() - 1 {
                inputs[b * width + t] = seq[t] as i64;
                targets[b * width + t] = seq[t + 1] as i64;
            }
        }
        let inputs = Tensor::<2, Int>::from_data(TensorData::new(inputs, [batch, width]), &self.device);
        let targets_tensor = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [batch, width]), &self.device);
        let logits = self.model.forward(inputs);
        let greedy: Vec<i64> = logits.clone().argmax(2).into_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let log_probs: Vec<f32> = token_log_probs(logits, targets_tensor).into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(sequences
            .iter()
            .zip(continuation_lens)
            .enumerate()
            .map(|(b, (seq, &cont))| {
                let positions = (seq.len() - 1 - cont)..(seq.len() - 1);
                let ll: f64 = positions.clone().map(|t| log_probs[b * width + t] as f64).sum();
                let is_greedy = positions.into_iter().all(|t| greedy[b * width + t] == targets[b * width + t]);
                (ll, is_greedy)
            })
            .collect())
    }

    fn greedy(&self, context: &[u32], max_tokens: usize, eos: Option<u32>, stop: &mut dyn FnMut(&[u32]) -> bool) -> Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let (logits, _) = self.model.forward_cached(tokens_tensor(context, &self.device), &mut cache);
        let mut next = last_row(logits);
        let mut generated = Vec::new();
        while generated.len() < max_tokens {
            let id = next.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
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
