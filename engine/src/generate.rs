//! Text generation: incremental decoding with a KV cache (each new token costs one position),
//! temperature / top-k / top-p sampling from a seeded host generator (the same seed gives the
//! same text on the same device), and the BTM ensemble's generation, whose next-token
//! distribution is the experts' mixture under the domain posterior (Li et al. 2022, §3), the
//! posterior updated after every token.

use anyhow::{Result, bail};
use burn::prelude::*;

use crate::data::rng::Rng;
use crate::model::LanguageModel;
use crate::model::lm::KvCache;
use crate::model::moe::MoeAux;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Sample among the k most probable tokens only.
    pub top_k: Option<usize>,
    /// Sample among the most probable tokens whose probabilities sum to p (nucleus).
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Stop after generating this token (end of text).
    pub stop: Option<u32>,
}

impl SamplingOptions {
    pub fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a finite number >= 0, found {}", self.temperature);
        }
        if self.top_k == Some(0) {
            bail!("--top-k must be at least 1");
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            bail!("--top-p must be in (0, 1], found {p}");
        }
        Ok(())
    }
}

/// One token of the prompt or of the output, and what routed it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenEvent {
    pub id: u32,
    /// Part of the prompt (not generated).
    pub prompt: bool,
    /// MoE models: per MoE layer, the experts this token was routed to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<Vec<usize>>,
    /// Ensembles: the domain posterior over the experts after this token.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub posterior: Vec<f64>,
}

/// Tokens and seconds, prompt and generation apart.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub generation_seconds: f64,
}

/// Checks the prompt's ids against the vocabulary and the total length against the longest
/// sequence the model was built for.
pub fn check_prompt(prompt: &[u32], options: &SamplingOptions, vocab: usize, max_seq_len: usize) -> Result<()> {
    if prompt.is_empty() {
        bail!("the prompt is empty: give at least one token");
    }
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is not in the vocabulary (ids 0..{})", vocab - 1);
    }
    if prompt.len() + options.max_tokens > max_seq_len {
        bail!(
            "the prompt ({} tokens) plus --max-tokens ({}) is longer than the model's max_seq_len ({max_seq_len})",
            prompt.len(),
            options.max_tokens
        );
    }
    options.check()
}

/// Picks the next token from next-token log-probabilities (or logits).
pub fn sample_next(logits: &[f32], options: &SamplingOptions, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    if options.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(options.top_k.unwrap_or(order.len()).max(1));
    let top = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / options.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = options.top_p {
        // The smallest prefix (most probable first) whose mass reaches p.
        let mut mass = 0.0;
        let keep = probs.iter().take_while(|&&q| {
            let under = mass < p;
            mass += q;
            under
        });
        let n = keep.count().max(1);
        probs.truncate(n);
        order.truncate(n);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.unit() * total;
    for (i, q) in order.iter().zip(&probs) {
        if u < *q {
            return *i as u32;
        }
        u -= q;
    }
    order[order.len() - 1] as u32
}

/// `[tokens][layer]` experts from each MoE layer's `[tokens, k]` assignments.
fn experts_per_token(aux: &[MoeAux], tokens: usize) -> Vec<Vec<Vec<usize>>> {
    let per_layer: Vec<Vec<i64>> = aux.iter().map(|a| a.experts.clone().into_data().convert::<i64>().try_to_vec::<i64>().expect("int ids")).collect();
    (0..tokens)
        .map(|t| {
            per_layer
                .iter()
                .map(|ids| {
                    let k = ids.len() / tokens;
                    ids[t * k..(t + 1) * k].iter().map(|&e| e as usize).collect()
                })
                .collect()
        })
        .collect()
}

pub(crate) fn last_row(logits: Tensor<3>) -> Vec<f32> {
    let [_, seq, vocab] = logits.dims();
    logits.narrow(1, seq - 1, 1).reshape([vocab]).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits")
}

pub fn tokens_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// Generates after `prompt`, calling `on_token` for every prompt token, then for every new
/// token as soon as it is chosen (streaming).
pub fn generate(
    model: &LanguageModel,
    prompt: &[u32],
    options: &SamplingOptions,
    device: &Device,
    mut on_token: impl FnMut(&TokenEvent) -> Result<()>,
) -> Result<GenerationStats> {
    let mut rng = Rng::new(options.seed);
    let mut cache = KvCache::default();
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let started = std::time::Instant::now();
    let (logits, aux) = model.forward_cached(tokens_tensor(prompt, device), &mut cache);
    let mut next_logits = last_row(logits);
    for (id, experts) in prompt.iter().zip(experts_per_token(&aux, prompt.len()).into_iter().chain(std::iter::repeat(vec![]))) {
        on_token(&TokenEvent { id: *id, prompt: true, experts, posterior: vec![] })?;
    }
    stats.prompt_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    for _ in 0..options.max_tokens {
        let id = sample_next(&next_logits, options, &mut rng);
        let (logits, aux) = model.forward_cached(tokens_tensor(&[id], device), &mut cache);
        let experts = experts_per_token(&aux, 1).pop().unwrap_or_default();
        stats.generated_tokens += 1;
        on_token(&TokenEvent { id, prompt: false, experts, posterior: vec![] })?;
        if options.stop == Some(id) {
            break;
        }
        next_logits = last_row(logits);
    }
    stats.generation_seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// BTM ensemble generation: p(x_t | x_<t) = sum_j w_j p_j(x_t | x_<t), where the posterior
/// w_j is proportional to prior_j * prod_{i<t} p_j(x_i | x_<i), updated after every token.
pub fn generate_ensemble(
    models: &[LanguageModel],
    prior: &[f64],
    prompt: &[u32],
    options: &SamplingOptions,
    device: &Device,
    mut on_token: impl FnMut(&TokenEvent) -> Result<()>,
) -> Result<GenerationStats> {
    if prior.len() != models.len() || prior.iter().any(|p| !(*p > 0.0 && p.is_finite())) {
        bail!("the prior needs one positive weight per expert ({} experts), found {prior:?}", models.len());
    }
    let mut rng = Rng::new(options.seed);
    let mut decoder = crate::ensemble_decoding::EnsembleDecoder::new(models, prior.iter().map(|p| p.ln()).collect(), models.len(), device);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let started = std::time::Instant::now();
    decoder.prefill(prompt, |id, posterior| on_token(&TokenEvent { id, prompt: true, experts: vec![], posterior }))?;
    stats.prompt_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    for _ in 0..options.max_tokens {
        let id = sample_next(&decoder.mixture(), options, &mut rng);
        decoder.accept(id);
        stats.generated_tokens += 1;
        on_token(&TokenEvent { id, prompt: false, experts: vec![], posterior: decoder.posterior() })?;
        if options.stop == Some(id) {
            break;
        }
    }
    stats.generation_seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

