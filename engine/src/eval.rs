//! Validation loss and perplexity per domain.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Domain;
use crate::data::sampler::{make_batch, target_mask};
use crate::model::LanguageModel;
use crate::model::lm::token_log_probs;
use crate::model::moe::RoutingContext;
use crate::model::routing_stats::RoutingStats;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEval {
    pub domain: String,
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub tokens: usize,
    /// Where the domain's tokens went (MoE models and ensembles).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "routing_as_written")]
    pub routing: Option<DomainRouting>,
    /// MoE models: share of token-expert assignments dropped for capacity.
    #[serde(default)]
    pub dropped: f64,
    /// MoE models: per layer, the router's mean entropy per token of the domain (nats; ln E
    /// is a router that cannot tell its E experts apart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub router_entropy: Vec<f64>,
}

/// Where a domain's tokens went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DomainRouting {
    /// An MoE: `[layer][expert]` share of the domain's tokens its routers sent to each expert.
    Layers(Vec<Vec<f64>>),
    /// A BTM ensemble: its cached prior over the experts (Li et al. 2022, §3).
    Prior(Vec<f64>),
}

impl DomainRouting {
    /// As `[panel][expert]` shares: one panel per layer, or the prior as one.
    pub fn panels(&self) -> Vec<Vec<f64>> {
        match self {
            Self::Layers(layers) => layers.clone(),
            Self::Prior(prior) => vec![prior.clone()],
        }
    }

    /// Whether there is a choice to show: more than one expert.
    pub fn chooses(&self) -> bool {
        self.panels().first().is_some_and(|p| p.len() > 1) || matches!(self, Self::Layers(l) if l.len() > 1)
    }
}

/// The routing field as written now (`{"Layers": ...}` / `{"Prior": ...}`), or as evaluations
/// written before it had a type wrote it: bare `[layer][expert]` shares (an ensemble's prior
/// as one layer, which `EvalReport::read` turns back into its prior).
fn routing_as_written<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<DomainRouting>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Typed(DomainRouting),
        Bare(Vec<Vec<f64>>),
    }
    Ok(match Option::<Written>::deserialize(deserializer)? {
        None => None,
        Some(Written::Typed(routing)) => Some(routing),
        Some(Written::Bare(layers)) => (!layers.is_empty()).then_some(DomainRouting::Layers(layers)),
    })
}

/// What `btx eval` and `btx ensemble` write with `--json` (`eval.json` in a recipe), and
/// what the recipe report reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The checkpoint evaluated (`btx eval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// The ensemble's experts (`btx ensemble`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<std::path::PathBuf>,
    /// The ensemble's top-k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    pub domains: Vec<DomainEval>,
    /// Exact-match accuracy per arithmetic domain.
    #[serde(default)]
    pub accuracy: std::collections::BTreeMap<String, f64>,
}

impl EvalReport {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut report: Self = serde_json::from_str(&text).with_context(|| format!("{} is not an evaluation written by btx eval or btx ensemble", path.display()))?;
        if !report.experts.is_empty() {
            for d in &mut report.domains {
                if let Some(DomainRouting::Layers(layers)) = &d.routing
                    && let [prior] = layers.as_slice()
                {
                    d.routing = Some(DomainRouting::Prior(prior.clone()));
                }
            }
        }
        Ok(report)
    }

    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        crate::fsutil::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The mean of the domains' losses.
    pub fn mean_loss(&self) -> f64 {
        mean_loss(&self.domains)
    }
}

/// Evaluates `model` (without autodiff) on the first `max_batches` validation batches of each
/// domain; `max_batches = 0` means the whole validation split.
pub fn evaluate(model: &LanguageModel, domains: &[Domain], batch_size: usize, max_batches: usize, device: &Device) -> Vec<DomainEval> {
    domains
        .iter()
        .map(|domain| {
            let limit = if max_batches == 0 { domain.val.len() } else { (max_batches * batch_size).min(domain.val.len()) };
            let mut sum = 0.0f64;
            let mut routing = RoutingStats::default();
            let mut counted = 0.0f64;
            for start in (0..limit).step_by(batch_size.max(1)) {
                let end = (start + batch_size).min(limit);
                let rows = domain.val.range(start..end);
                let mut batch = make_batch(&rows, device);
                batch.target_mask = target_mask(&(start..end).map(|i| domain.val.mask(i)).collect::<Vec<_>>(), rows[0].len());
                let [b, s] = batch.targets.dims();
                counted += batch.counted();
                let (logits, aux) = model.forward_with_aux(batch.inputs, RoutingContext::default());
                routing.add(&aux);
                let log_probs = token_log_probs(logits, batch.targets);
                // Chat data: the loss over the replies' tokens only (routing counts every token).
                let log_probs = match batch.target_mask {
                    Some(mask) => log_probs * Tensor::<2>::from_data(TensorData::new(mask, [b, s]), device),
                    None => log_probs,
                };
                sum -= log_probs.sum().into_scalar::<f32>() as f64;
            }
            let loss = sum / counted.max(1.0);
            DomainEval {
                domain: domain.name.clone(),
                loss,
                perplexity: loss.exp(),
                tokens: counted as usize,
                routing: Some(routing.shares()).filter(|s| !s.is_empty()).map(DomainRouting::Layers),
                dropped: routing.dropped_fraction(),
                router_entropy: routing.entropies(),
            }
        })
        .collect()
}

/// The mean of the domains' losses (exp of it is the report's mean perplexity).
pub fn mean_loss(evals: &[DomainEval]) -> f64 {
    evals.iter().map(|e| e.loss).sum::<f64>() / evals.len().max(1) as f64
}

/// Exact-match accuracy on addition problems: greedy decoding after "a+b=" until a newline.
/// The problems come from a generator seed the training data does not use.
pub fn arithmetic_accuracy(
    model: &LanguageModel,
    tokenizer: &tokenizers::Tokenizer,
    config: &crate::data::synthetic::ArithmeticConfig,
    problems: usize,
    device: &Device,
) -> anyhow::Result<f64> {
    use crate::data::tokenizer::{decode, encode};
    let mut rng = crate::data::rng::Rng::new(config.seed ^ 0xE7A1_0000);
    let mut correct = 0;
    for _ in 0..problems {
        let (prompt, answer) = crate::data::synthetic::problem(&mut rng, config.max_digits);
        // In training every problem follows the previous line's newline.
        let mut ids: Vec<u32> = encode(tokenizer, &format!("\n{prompt}"))?;
        let prompt_len = ids.len();
        for _ in 0..8 {
            let input: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            let n = input.len();
            let logits = model.forward(Tensor::from_data(TensorData::new(input, [1, n]), device));
            let next = logits.narrow(1, n - 1, 1).argmax(2).into_scalar::<i64>() as u32;
            ids.push(next);
            if decode(tokenizer, &[next])?.contains('\n') {
                break;
            }
        }
        let generated = decode(tokenizer, &ids[prompt_len..])?;
        if generated.split('\n').next() == Some(answer.as_str()) {
            correct += 1;
        }
    }
    Ok(correct as f64 / problems.max(1) as f64)
}
