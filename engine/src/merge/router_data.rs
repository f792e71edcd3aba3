//! Router initialisation from data (mergekit's "hidden" mode, and mean token embeddings):
//! each member model reads sequences of its own domain data, and the mean of what the router
//! will see (the FFN input at each layer, or the token embedding) becomes that member's row.
//! Also BTM's posterior weights of a forest. Both run the members forward, so a recipe
//! measures them in a stage of their own, on its device (`btx measure`), and the merge,
//! which needs no device, reads the result.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::router_init::RouterInit;
use crate::checkpoint::{load_model, resolve_checkpoint};
use crate::config::resolve;
use crate::model::LanguageModel;
use crate::data::sampler::make_batch;
use crate::data::load_domains;
use crate::train::TrainConfig;

/// Sequences of a member's data that describe its domain.
pub const ROUTER_SEQUENCES: usize = 32;

/// `[layer][member][d_model]`: the mean FFN input (Hidden) or mean token embedding
/// (Embedding, the same for every layer) of each member on its own training data. `configs`
/// are the members' training configs (their domains with weight > 0 are their data).
pub fn router_directions(members: &[std::path::PathBuf], configs: &[std::path::PathBuf], mode: RouterInit, device: &Device) -> Result<Vec<Vec<Vec<f32>>>> {
    if members.len() != configs.len() {
        bail!("router_init {mode:?} needs one training config per member (--router-data): {} members, {} configs", members.len(), configs.len());
    }
    let mut per_member = Vec::new();
    for (ckpt, config_path) in members.iter().zip(configs) {
        let seqs = domain_sequences(config_path).with_context(|| format!("router data of {}", ckpt.display()))?;
        let (_, model) = load_model(&resolve_checkpoint(ckpt)?, device)?;
        per_member.push(mean_router_inputs(&model, &seqs, mode, device));
    }
    let layers = per_member[0].len();
    Ok((0..layers).map(|l| per_member.iter().map(|m| m[l].clone()).collect()).collect())
}

/// The sequences that describe the data a training config trains on: up to
/// `ROUTER_SEQUENCES` of each of its domains with weight > 0.
pub fn domain_sequences(config_path: &std::path::Path) -> Result<Vec<Vec<u32>>> {
    let config = TrainConfig::load(&resolve(config_path))?;
    let domains = load_domains(&config.data, config.model.vocab_size, &config_path.display().to_string())?;
    Ok(domains.iter().filter(|d| d.weight > 0.0).flat_map(|d| d.train.range(0..ROUTER_SEQUENCES)).collect())
}

/// `[layer][d_model]`: what `model`'s routers see on `seqs`, averaged over the tokens: each
/// layer's FFN input (Hidden), or the token embedding for every layer (Embedding).
pub fn mean_router_inputs(model: &LanguageModel, seqs: &[Vec<u32>], mode: RouterInit, device: &Device) -> Vec<Vec<f32>> {
    let batch = make_batch(seqs, device);
    match mode {
        RouterInit::Hidden => model.ffn_inputs(batch.inputs).into_iter().map(mean_over_tokens).collect(),
        RouterInit::Embedding | RouterInit::Random => vec![mean_over_tokens(model.embed(batch.inputs)); model.layers.len()],
    }
}

fn mean_over_tokens(x: Tensor<3>) -> Vec<f32> {
    let [b, s, d] = x.dims();
    x.reshape([b * s, d]).mean_dim(0).into_data().convert::<f32>().try_to_vec().expect("f32")
}

/// Weights for averaging `members` (BTM's branching of a new expert): each member's mean
/// domain posterior on the data `config` trains on (its domains with weight > 0).
pub fn posterior_weights(members: &[std::path::PathBuf], config_path: &std::path::Path, device: &Device) -> Result<Vec<f64>> {
    let seqs = domain_sequences(config_path).with_context(|| format!("--posterior-data {}", config_path.display()))?;
    let models = members.iter().map(|m| Ok(load_model(&resolve_checkpoint(m)?, device)?.1)).collect::<Result<Vec<_>>>()?;
    Ok(crate::ensemble::mean_domain_posterior(&models, &seqs, 8, device))
}

/// What `btx measure` measures (a recipe writes it into the stage's `stage.ron`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Measurement {
    /// Each member's mean router input on its own data (router_init Embedding or Hidden);
    /// `data` holds each member's training config, in the members' order.
    RouterDirections { members: Vec<PathBuf>, data: Vec<PathBuf>, mode: RouterInit },
    /// The members' mean domain posterior on the data of the training config `data`.
    Posterior { members: Vec<PathBuf>, data: PathBuf },
}

/// What it measured: `measured.json`, which `MergeRequest::measured` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Measured {
    /// `[layer][member][d_model]`.
    RouterDirections(Vec<Vec<Vec<f32>>>),
    /// One weight per member, summing to 1.
    Posterior(Vec<f64>),
}

pub const MEASURED_FILE: &str = "measured.json";

impl Measurement {
    pub fn run(&self, device: &Device) -> Result<Measured> {
        Ok(match self {
            Self::RouterDirections { members, data, mode } => Measured::RouterDirections(router_directions(members, data, *mode, device)?),
            Self::Posterior { members, data } => Measured::Posterior(posterior_weights(members, data, device)?),
        })
    }
}

impl Measured {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {} (written by btx measure)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a measurement written by btx measure", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, serde_json::to_string(self)?.as_bytes())
    }
}
