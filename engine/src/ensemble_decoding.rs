//! The BTM ensemble decoded one token at a time (Li et al. 2022, §3): each expert keeps its
//! own KV cache; the next-token distribution is the experts' mixture under the domain
//! posterior, p(x_t | x_<t) = sum_j w_j p_j(x_t | x_<t), with w_j ∝ P(D=j) p_j(x_<t), updated
//! after every token (top-k: only the k most probable experts, renormalised).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::ensemble::posterior_log_weights;
use crate::generate::{last_row, tokens_tensor};
use crate::model::LanguageModel;
use crate::model::lm::KvCache;

pub struct EnsembleDecoder<'a> {
    models: &'a [LanguageModel],
    caches: Vec<KvCache>,
    /// log P(D=j) + log p_j(x_<t): the unnormalised log posterior.
    prefix: Vec<f64>,
    top_k: usize,
    /// Each expert's log-probabilities of the next token.
    next: Vec<Vec<f32>>,
    /// A token accepted but not yet run through the experts (run when the next mixture is
    /// asked for, so the last token costs no forward pass).
    pending: Option<u32>,
    device: Device,
}

impl<'a> EnsembleDecoder<'a> {
    pub fn new(models: &'a [LanguageModel], log_prior: Vec<f64>, top_k: usize, device: &Device) -> Self {
        Self { models, caches: vec![KvCache::default(); models.len()], prefix: log_prior, top_k, next: vec![], pending: None, device: device.clone() }
    }

    /// Reads the prompt (at least one token), calling `on_token(id, posterior)` after each
    /// prompt token has updated the posterior.
    pub fn prefill(&mut self, prompt: &[u32], mut on_token: impl FnMut(u32, Vec<f64>) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let log_probs: Vec<Vec<f32>> = self
            .models
            .iter()
            .zip(self.caches.iter_mut())
            .map(|(m, c)| log_softmax(m.forward_cached(tokens_tensor(prompt, &self.device), c).0, 2).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32"))
            .collect();
        let vocab = log_probs[0].len() / prompt.len();
        for (t, &id) in prompt.iter().enumerate() {
            if t > 0 {
                for (p, lp) in self.prefix.iter_mut().zip(&log_probs) {
                    *p += lp[(t - 1) * vocab + id as usize] as f64;
                }
            }
            on_token(id, self.posterior())?;
        }
        self.next = log_probs.iter().map(|lp| lp[(prompt.len() - 1) * vocab..].to_vec()).collect();
        Ok(())
    }

    /// The posterior P(D=j | x_<t) (top-k cut, renormalised).
    pub fn posterior(&self) -> Vec<f64> {
        posterior_log_weights(&self.prefix, self.top_k).into_iter().map(f64::exp).collect()
    }

    /// log p(v | x_<t) under the mixture, for every token v.
    pub fn mixture(&mut self) -> Vec<f32> {
        if let Some(id) = self.pending.take() {
            self.next = self
                .models
                .iter()
                .zip(self.caches.iter_mut())
                .map(|(m, c)| last_row(log_softmax(m.forward_cached(tokens_tensor(&[id], &self.device), c).0, 2)))
                .collect();
        }
        let w = self.posterior();
        let vocab = self.next[0].len();
        (0..vocab)
            .map(|v| w.iter().zip(&self.next).map(|(w, lp)| w * (lp[v] as f64).exp()).sum::<f64>().max(1e-30).ln() as f32)
            .collect()
    }

    /// Appends `id`: the posterior takes in each expert's probability of it.
    pub fn accept(&mut self, id: u32) {
        for (p, lp) in self.prefix.iter_mut().zip(&self.next) {
            *p += lp[id as usize] as f64;
        }
        self.pending = Some(id);
    }
}
